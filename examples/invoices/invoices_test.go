package invoices_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/examples/invoices"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

func key(k int) invoices.Key {
	return invoices.Key{AccountID: "acct-1", ExternalRef: fmt.Sprintf("ref/%d", k)}
}

// TestRace is the payments race, on invoices, with both strategies: 32
// workers × 50 calls on 5 keys, as payment's TestRace (more calls test
// nothing more, and took 100 s of the suite under -race).
func TestRace(t *testing.T) {
	ctx := pgtest.Context(t, 3*time.Minute)
	pool := pgtest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 40 })
	if _, err := pool.Exec(ctx, invoices.Schema); err != nil {
		t.Fatal(err)
	}
	for _, strategy := range []entity.Strategy{entity.Advisory, entity.RowLock} {
		t.Run(strategy.String(), func(t *testing.T) {
			pool.Exec(ctx, "TRUNCATE invoices")
			repo := entity.New(pool, invoices.Table{}, entity.WithStrategy(strategy))
			done, err := racetest.Hammer(ctx, "i", 32, 50, 5, func(ctx context.Context, k int, op string) (racetest.Call, error) {
				c := racetest.Call{Key: key(k).AccountID + "/" + key(k).ExternalRef, Op: op}
				err := repo.With(ctx, key(k), func(_ context.Context, _ pgx.Tx, inv *invoices.Invoice) error {
					lines, err := racetest.AppendOp(inv.Lines, op)
					inv.Lines, inv.TotalCents = lines, inv.TotalCents+1
					c.Created, c.ID = inv.Created, inv.ID
					return err
				})
				return c, err
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := racetest.Rows(ctx, pool, "SELECT account_id || '/' || external_ref, total_cents, lines FROM invoices")
			if err != nil {
				t.Fatal(err)
			}
			report := racetest.Audit(done, got, true)
			for _, p := range report.Problems {
				t.Error(p)
			}
			if report.Calls != 32*50 {
				t.Errorf("%d calls succeeded", report.Calls)
			}
			t.Logf("%s: %v", strategy, report)
		})
	}
}
