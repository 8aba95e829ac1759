package payment_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// TestWithSaveLearnedMeanwhileCostsNoRoundTripUnderLock: a Save statement
// another call ran for the first time while this one was already past its
// prepare step is not prepared with the lock held: Save and COMMIT still go
// in one round trip. (The other call runs inside fn here, on the pool's
// second connection, to make the interleaving certain.)
func TestWithSaveLearnedMeanwhileCostsNoRoundTripUnderLock(t *testing.T) {
	t.Parallel()
	rt := &roundTrips{lastRead: map[net.Conn]bool{}}
	repo, _ := newRepo(t, func(cfg *pgxpool.Config) {
		rt.configure(cfg)
		cfg.MaxConns = 2
	})
	ctx := pgtest.Context(t, time.Minute)
	change := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		return nil
	}
	var atFnEnd int
	err := repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "li_race_outer"}, func(ctx context.Context, _ pgx.Tx, p *payment.Payment) error {
		// Runs the update statement for the first time, on the other
		// connection: from now on the Repository knows it.
		if err := repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "li_race_inner"}, change); err != nil {
			return err
		}
		atFnEnd = rt.count()
		p.AmountCents = 10
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if underLock := rt.count() - atFnEnd; underLock != 1 {
		t.Errorf("With made %d round trips after fn, with the lock held; want 1 (Save and COMMIT together)", underLock)
	}
	p, err := repo.Get(ctx, payment.Key{ServiceID: 1, LineItemID: "li_race_outer"})
	if err != nil || p.AmountCents != 10 {
		t.Fatalf("Get = %+v, %v; want the amount saved", p, err)
	}
	// The next calls, on either connection, prepare it before the lock.
	for range 4 {
		before := rt.count()
		var atFn int
		if err := repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "li_race_outer"}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			atFn = rt.count()
			return change(ctx, tx, p)
		}); err != nil {
			t.Fatal(err)
		}
		if underLock := rt.count() - atFn; underLock != 1 || rt.count()-before > 3 {
			t.Errorf("a later With made %d round trips, %d with the lock held", rt.count()-before, underLock)
		}
	}
}
