package pgtest

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// AwaitLockWaiters waits until at least n backends of pool's database wait
// for an advisory lock (pg_locks is the cluster's: other tests' databases
// don't count); it fails after 10 s, or when ctx ends. It doesn't take a
// testing.TB, so that a goroutine of a test may call it.
func AwaitLockWaiters(ctx context.Context, pool *pgxpool.Pool, n int) error {
	deadline := time.Now().Add(10 * time.Second)
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
			return fmt.Errorf("%d advisory lock waiters after 10s, want %d", w, n)
		}
		time.Sleep(time.Millisecond)
	}
}
