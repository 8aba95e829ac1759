package lock_test

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestSavepoints pins what lock/doc.go says: ROLLBACK TO SAVEPOINT releases
// the advisory locks taken after the savepoint, RELEASE SAVEPOINT keeps
// them, and locks taken before the savepoint outlive its rollback.
func TestSavepoints(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	pool := pgtest.Pool(t, nil)
	outer, rolledBack, released := lock.NewKey("sp", "outer"), lock.NewKey("sp", "rolled-back"), lock.NewKey("sp", "released")
	// free reports whether another transaction could take key now.
	free := func(key lock.Key) bool {
		t.Helper()
		tx := begin(t, ctx, pool)
		defer tx.Rollback(ctx)
		ok, err := lock.TryAcquire(ctx, tx, key)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	err := lock.Run(ctx, pool, outer, func(ctx context.Context, tx pgx.Tx) error {
		sp, err := tx.Begin(ctx) // SAVEPOINT
		if err != nil {
			return err
		}
		if err := lock.Acquire(ctx, sp, rolledBack); err != nil {
			return err
		}
		if free(rolledBack) {
			t.Error("a lock taken in a savepoint is free before the savepoint ends")
		}
		if err := sp.Rollback(ctx); err != nil { // ROLLBACK TO SAVEPOINT
			return err
		}
		if !free(rolledBack) {
			t.Error("ROLLBACK TO SAVEPOINT kept the lock taken after the savepoint")
		}
		if free(outer) {
			t.Error("ROLLBACK TO SAVEPOINT released the lock taken before the savepoint")
		}

		sp, err = tx.Begin(ctx)
		if err != nil {
			return err
		}
		if err := lock.Acquire(ctx, sp, released); err != nil {
			return err
		}
		if err := sp.Commit(ctx); err != nil { // RELEASE SAVEPOINT
			return err
		}
		if free(released) {
			t.Error("RELEASE SAVEPOINT released the lock")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []lock.Key{outer, rolledBack, released} {
		if !free(k) {
			t.Errorf("%s still held after Run", k)
		}
	}
}

// TestTryAcquireTxPreparesNothing: TryAcquireTx through pgx's stdlib driver
// leaves no prepared statement per key on the connection.
func TestTryAcquireTxPreparesNothing(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	db, err := sql.Open("pgx", pgtest.DB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	count := func() (n int) {
		t.Helper()
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	for i := range 50 {
		if ok, err := lock.TryAcquireTx(ctx, tx, lock.NewKey("test", "prepared", strconv.Itoa(i))); err != nil || !ok {
			t.Fatalf("TryAcquireTx = %v, %v; want true", ok, err)
		}
	}
	if after := count(); after != before {
		t.Fatalf("%d prepared statements after TryAcquireTx on 50 keys, %d before", after, before)
	}
}
