package faulttest_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/history"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// holdWorker is a poller process that takes a payment and hangs in the
// middle of fn: args are the database URL, the line item and an op id. It
// increments the payment, writes a partial update of its own through tx,
// prints "holding" and waits to be killed.
func holdWorker(ctx context.Context, args []string) error {
	pool, err := pgxpool.New(ctx, args[0])
	if err != nil {
		return err
	}
	defer pool.Close()
	repo := payment.NewRepository(pool)
	return repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: args[1]}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		if err := increment(p, args[2]); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE payments SET status = 'partial' WHERE id = $1", p.ID); err != nil {
			return err
		}
		fmt.Fprintln(os.Stdout, "holding")
		<-ctx.Done()
		return ctx.Err()
	})
}

// TestKilledHolder: a worker process holding a payment is killed with
// SIGKILL in the middle of fn. The server sees its socket close, rolls back,
// and the waiter gets the lock at once; the partial update is nowhere.
func TestKilledHolder(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	repo := payment.NewRepository(pool)
	l := newLedger()
	k := key(1)
	for i := range 3 {
		if err := l.call(ctx, repo, k, fmt.Sprint("before.", i), nil); err != nil {
			t.Fatal(err)
		}
	}

	cmd, line := startWorker(t, ctx, "hold", pool.Config().ConnString(), k.LineItemID, "killed")
	if line != "holding\n" {
		t.Fatalf("worker printed %q", line)
	}

	killWhileWaited(t, ctx, l, pool, repo, k, cmd, "sigkill")

	l.mu.Lock()
	l.outcomes["killed"] = history.Failed // never acknowledged: must be nowhere
	l.mu.Unlock()
	l.check(t, pool)
	var partial int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments WHERE status = 'partial'").Scan(&partial); err != nil {
		t.Fatal(err)
	}
	if partial != 0 {
		t.Errorf("the killed worker's partial update is in %d rows", partial)
	}
	assertHealthy(t, pool)
}
