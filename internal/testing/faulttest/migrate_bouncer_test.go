package faulttest_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// TestMigrateBehindPgbouncer: Migrate through pgbouncer in transaction
// pooling mode, while other clients keep the pooler's two server connections
// changing hands, so that its statements run in different server sessions.
// Its session-level lock MigrateKey can't be held across them: Migrate must
// say so (ErrSessionChanged) rather than report success while the lock stays
// behind on a pooled server connection, where every later Migrate would wait
// for it. (Before ErrSessionChanged, Migrate returned nil and a direct
// Migrate afterwards timed out waiting for paylock.migrate.)
func TestMigrateBehindPgbouncer(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	if _, err := pool.Exec(ctx, "DROP INDEX "+payment.UniqueIndex+
		"; INSERT INTO payments (service_id, line_item_id) SELECT 1, 'li_' || g FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	b := bouncer(t, pool, 2)
	via := poolOn(t, pool, b.Addr(), func(c *pgxpool.Config) {
		c.MaxConns = 8
		c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				via.Exec(ctx, "SELECT pg_sleep(0.002)")
			}
		}()
	}
	err := payment.Migrate(ctx, via)
	close(stop)
	wg.Wait()
	if errors.Is(err, payment.ErrSessionChanged) {
		t.Logf("Migrate through pgbouncer: %v", err)
		return
	}
	if err != nil {
		t.Fatalf("Migrate through pgbouncer = %v; want nil or ErrSessionChanged", err)
	}
	// Every statement happened to run in one session: nothing may be left.
	var held int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held > 0 {
		t.Errorf("Migrate through pgbouncer returned nil, and %d advisory locks are still held", held)
	}
	if err := payment.Migrate(pgtest.Context(t, 5*time.Second), pool); err != nil {
		t.Fatalf("a direct Migrate after the one through pgbouncer: %v", err)
	}
}
