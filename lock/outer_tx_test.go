package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestRunOnAConnectionInATransaction: Run given a connection that its caller
// has already begun a transaction on must not run fn and COMMIT inside that
// transaction: the server only warns about the second BEGIN, so the COMMIT
// would end the caller's transaction, committing what it meant to roll back.
func TestRunOnAConnectionInATransaction(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	pool := pgtest.Pool(t, nil)
	if _, err := pool.Exec(ctx, "CREATE TABLE outer_tx (v int)"); err != nil {
		t.Fatal(err)
	}
	pc, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Release()
	for _, db := range []struct {
		name string
		db   lock.Beginner
	}{{"Conn", pc.Conn()}, {"PoolConn", pc}} {
		t.Run(db.name, func(t *testing.T) {
			outer, err := pc.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := outer.Exec(ctx, "INSERT INTO outer_tx VALUES (1)"); err != nil {
				t.Fatal(err)
			}
			called := false
			err = lock.Run(ctx, db.db, lock.NewKey("test", "outer-tx"), func(ctx context.Context, tx pgx.Tx) error {
				called = true
				return nil
			})
			if err := outer.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM outer_tx").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 || called || !errors.Is(err, lock.ErrInTransaction) {
				t.Fatalf("Run = %v, fn called: %v, %d rows after the caller's rollback; want ErrInTransaction, fn not called, nothing committed", err, called, n)
			}
		})
	}

	// The same from inside fn, on fn's own connection and another key: the
	// inner COMMIT would end the outer Run's transaction, and its lock.
	t.Run("NestedOnFnsConnection", func(t *testing.T) {
		called := false
		var inner error
		err := lock.Run(ctx, pool, lock.NewKey("test", "outer-tx", "a"), func(ctx context.Context, tx pgx.Tx) error {
			inner = lock.Run(ctx, tx.Conn(), lock.NewKey("test", "outer-tx", "b"), func(context.Context, pgx.Tx) error {
				called = true
				return nil
			})
			return nil
		})
		if err != nil || called || !errors.Is(inner, lock.ErrInTransaction) {
			t.Fatalf("outer Run = %v, inner Run = %v, inner fn called: %v; want the inner to fail with ErrInTransaction", err, inner, called)
		}
	})
}
