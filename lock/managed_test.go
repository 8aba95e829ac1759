package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// managedSetup returns a pool of one connection, so that the next Run gets
// the connection the previous one had, and a table t (k text, v int) with
// the row ('victim', 1).
func managedSetup(t *testing.T) (*pgxpool.Pool, context.Context) {
	pool := pgtest.Pool(t, func(cfg *pgxpool.Config) { cfg.MaxConns, cfg.MinConns = 1, 0 })
	ctx := pgtest.Context(t, 30*time.Second)
	if _, err := pool.Exec(ctx, "CREATE TABLE t (k text PRIMARY KEY, v int); INSERT INTO t VALUES ('victim', 1)"); err != nil {
		t.Fatal(err)
	}
	return pool, ctx
}

func value(t *testing.T, ctx context.Context, pool *pgxpool.Pool, k string) (v int) {
	t.Helper()
	if err := pool.QueryRow(ctx, "SELECT coalesce((SELECT v FROM t WHERE k = $1), 0)", k).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRunLeakedTxIsDeadAfterRun keeps tx, a savepoint and large objects past
// Run and uses them from inside the next Run, on the same connection: every
// statement fails with pgx.ErrTxClosed and changes nothing.
func TestRunLeakedTxIsDeadAfterRun(t *testing.T) {
	t.Parallel()
	pool, ctx := managedSetup(t)
	key := lock.NewKey("test", "leak")
	var (
		leakedTx, leakedSP pgx.Tx
		leakedLO           pgx.LargeObjects
	)
	if err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		leakedTx, leakedSP, leakedLO = tx, sp, tx.LargeObjects()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	use := func(t *testing.T) {
		t.Helper()
		for name, leaked := range map[string]pgx.Tx{"tx": leakedTx, "savepoint": leakedSP} {
			if _, err := leaked.Exec(ctx, "UPDATE t SET v = 999 WHERE k = 'victim'"); !errors.Is(err, pgx.ErrTxClosed) {
				t.Errorf("leaked %s: Exec = %v, want pgx.ErrTxClosed", name, err)
			}
			if leaked.Conn() != nil {
				t.Errorf("leaked %s: Conn() is not nil once Run returned", name)
			}
		}
		if _, err := leakedLO.Create(ctx, 0); !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("leaked large objects: Create = %v, want pgx.ErrTxClosed", err)
		}
	}
	if err := lock.Run(ctx, pool, lock.NewKey("test", "next"), func(context.Context, pgx.Tx) error {
		use(t)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	use(t)
	if v := value(t, ctx, pool, "victim"); v != 1 {
		t.Errorf("victim's v = %d, want 1: a leaked statement ran", v)
	}
}

// TestRunFnEndsTheTransaction: fn sends COMMIT or ROLLBACK itself. Run says
// so with ErrTxEnded instead of reporting success, and what fn committed
// stays committed.
func TestRunFnEndsTheTransaction(t *testing.T) {
	t.Parallel()
	pool, ctx := managedSetup(t)
	key := lock.NewKey("test", "end")
	for _, tt := range []struct {
		stmt      string
		committed bool
	}{{"COMMIT", true}, {"ROLLBACK", false}} {
		t.Run(tt.stmt, func(t *testing.T) {
			err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "INSERT INTO t VALUES ($1, 1)", tt.stmt); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, tt.stmt)
				return err
			})
			if !errors.Is(err, lock.ErrTxEnded) {
				t.Fatalf("Run = %v, want ErrTxEnded", err)
			}
			if got := value(t, ctx, pool, tt.stmt) == 1; got != tt.committed {
				t.Errorf("fn's insert committed = %v, want %v", got, tt.committed)
			}
			if err := lock.Run(ctx, pool, key, func(context.Context, pgx.Tx) error { return nil }); err != nil {
				t.Fatalf("next Run: %v", err)
			}
		})
	}
}

// TestRunRowsLeftOpen: fn returns with Rows it never closed. Run says so
// (ErrRowsOpen, not ErrCommitUnknown), commits nothing, and the pool's only
// connection is not handed out in that state.
func TestRunRowsLeftOpen(t *testing.T) {
	t.Parallel()
	pool, ctx := managedSetup(t)
	key := lock.NewKey("test", "rows")
	err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE t SET v = 2 WHERE k = 'victim'"); err != nil {
			return err
		}
		_, err := tx.Query(ctx, "SELECT generate_series(1, 1000)")
		return err
	})
	if !errors.Is(err, lock.ErrRowsOpen) || errors.Is(err, lock.ErrCommitUnknown) {
		t.Fatalf("Run = %v, want ErrRowsOpen and not ErrCommitUnknown", err)
	}
	if v := value(t, ctx, pool, "victim"); v != 1 {
		t.Errorf("victim's v = %d, want 1: fn's update was committed", v)
	}
	if err := lock.Run(ctx, pool, key, func(context.Context, pgx.Tx) error { return nil }); err != nil {
		t.Fatalf("next Run on the pool's only connection: %v", err)
	}
}

// TestRunNestedOnAnotherCtx documents a nested Run for the same key given a
// ctx that is not fn's: it waits for its own caller's lock until the server
// ends the outer transaction (idle for IdleTimeout); then the inner Run
// commits and the outer commits nothing and returns the server's error.
func TestRunNestedOnAnotherCtx(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, nil)
	ctx := pgtest.Context(t, 30*time.Second)
	if _, err := pool.Exec(ctx, "CREATE TABLE t (k text PRIMARY KEY, v int)"); err != nil {
		t.Fatal(err)
	}
	o := lock.Options{IdleTimeout: 300 * time.Millisecond}
	key := lock.NewKey("test", "nested")
	other := pgtest.Context(t, time.Minute) // not fn's ctx
	var innerErr error
	err := o.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO t VALUES ('outer', 1)"); err != nil {
			return err
		}
		innerErr = o.Run(other, pool, key, func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "INSERT INTO t VALUES ('inner', 1)")
			return err
		})
		return nil
	})
	if innerErr != nil {
		t.Fatalf("inner Run = %v, want it to run once the outer transaction was ended", innerErr)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25P03" || !errors.Is(err, lock.ErrIdleTimeout) || errors.Is(err, lock.ErrCommitUnknown) {
		t.Fatalf("outer Run = %v, want the server's idle-in-transaction termination (25P03, lock.ErrIdleTimeout), known not committed", err)
	}
	if value(t, ctx, pool, "inner") != 1 || value(t, ctx, pool, "outer") != 0 {
		t.Fatal("want the inner Run's insert committed and the outer's not")
	}
}
