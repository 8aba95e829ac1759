package payment_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// TestMigrateCancelledAtEveryStage: Migrate's ctx ends after a delay swept
// from 0 to past the start of its build (while an old snapshot keeps the
// build waiting), on a fresh database and on a live table. Each call
// returns nil or an error matching ctx.Err(); none leaves an advisory lock,
// an acquired connection or a connection with another lock_timeout than the
// pool's behind; and a Migrate with time to finish ends with a valid index.
func TestMigrateCancelledAtEveryStage(t *testing.T) {
	t.Parallel()
	configure := func(c *pgxpool.Config) {
		c.MaxConns = 8
		c.ConnConfig.RuntimeParams["lock_timeout"] = "100ms"
	}
	delays := []time.Duration{0, time.Microsecond, 100 * time.Microsecond, 500 * time.Microsecond,
		time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond,
		16 * time.Millisecond, 32 * time.Millisecond, 64 * time.Millisecond}
	check := func(t *testing.T, ctx context.Context, pool *pgxpool.Pool, d time.Duration, err error) {
		t.Helper()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Migrate cancelled after %v = %v; want nil or context.DeadlineExceeded", d, err)
		}
		assertHealthy(t, pool)
		conns := pool.AcquireAllIdle(ctx)
		for _, c := range conns {
			var lt string
			if err := c.QueryRow(ctx, "SHOW lock_timeout").Scan(&lt); err != nil || lt != "100ms" {
				t.Errorf("after Migrate cancelled after %v: a pooled connection has lock_timeout %q (%v); want 100ms", d, lt, err)
			}
			c.Release()
		}
	}

	// Each subtest's ctx starts when it runs: subtests of a parallel test
	// may wait long for their turn on a loaded machine.
	t.Run("FreshDatabase", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, 3*time.Minute) // 11 to 13 databases and Migrates, on a loaded machine
		for _, d := range delays {
			pool := pgtest.Pool(t, configure)
			short, cancel := context.WithTimeout(ctx, d)
			err := payment.Migrate(short, pool)
			cancel()
			check(t, ctx, pool, d, err)
			if err := payment.Migrate(ctx, pool); err != nil {
				t.Fatalf("Migrate after one cancelled after %v: %v", d, err)
			}
			assertValidIndex(t, pool)
		}
	})

	t.Run("LiveTable", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, 3*time.Minute) // 11 to 13 databases and Migrates, on a loaded machine
		pool := paytest.Pool(t, configure)
		_, err := pool.Exec(ctx, `DROP INDEX `+payment.UniqueIndex+`;
			INSERT INTO payments (service_id, line_item_id) SELECT 1, 'li_' || g FROM generate_series(1, 100) g`)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range append(delays, 128*time.Millisecond, 256*time.Millisecond) {
			release := paytest.HoldSnapshot(t, ctx, pool)
			short, cancel := context.WithTimeout(ctx, d)
			err := payment.Migrate(short, pool)
			cancel()
			release()
			check(t, ctx, pool, d, err)
			if err == nil {
				break // it finished: nothing left to cancel
			}
		}
		if err := payment.Migrate(ctx, pool); err != nil {
			t.Fatalf("Migrate after the cancelled ones: %v", err)
		}
		assertValidIndex(t, pool)
		assertHealthy(t, pool)
	})
}
