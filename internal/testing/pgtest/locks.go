package pgtest

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// AwaitLockWaiters waits until at least n backends of pool's database wait
// for an advisory lock (pg_locks is the cluster's: other tests' databases
// don't count); it fails after a minute, or when ctx ends. It doesn't take a
// testing.TB, so that a goroutine of a test may call it.
func AwaitLockWaiters(ctx context.Context, pool *pgxpool.Pool, n int) error {
	deadline := time.Now().Add(time.Minute) // only a hang takes that long
	for {
		var w int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&w); err != nil {
			return err
		}
		if w >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d advisory lock waiters after a minute, want %d", w, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// AwaitLockWaitedFor waits until a backend of pool's database has waited
// for an advisory lock for at least d by the server's clock
// (pg_locks.waitstart), or until gave up is closed (the waiter's call
// returned: check its error). It fails after a minute, or when ctx ends.
func AwaitLockWaitedFor(ctx context.Context, pool *pgxpool.Pool, d time.Duration, gaveUp <-chan struct{}) error {
	deadline := time.Now().Add(time.Minute) // only a hang takes that long
	for {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND waitstart < clock_timestamp() - $1::interval`, d.String()).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		select {
		case <-gaveUp:
			return fmt.Errorf("the waiter gave up before it had waited %s", d)
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no advisory lock waiter waited %s within a minute", d)
		}
	}
}
