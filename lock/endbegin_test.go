package lock_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/paylock/paylock/lock"
)

// TestRunFnEndsAndBeginsInOneMessage: fn ends the transaction and begins
// another in one message, one batch, or a Query then an Exec, so the
// connection is in a transaction again when fn returns, one that does not
// hold the lock. Run must not commit it and report success.
func TestRunFnEndsAndBeginsInOneMessage(t *testing.T) {
	t.Parallel()
	for name, end := range map[string]func(ctx context.Context, tx pgx.Tx) error{
		"ExecCommitBegin": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "COMMIT; BEGIN")
			return err
		},
		"ExecRollbackBegin": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "ROLLBACK; BEGIN")
			return err
		},
		"Batch": func(ctx context.Context, tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue("COMMIT")
			b.Queue("BEGIN")
			return tx.SendBatch(ctx, b).Close()
		},
		"QueryThenExecBegin": func(ctx context.Context, tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "COMMIT")
			if err != nil {
				return err
			}
			rows.Close()
			_, err = tx.Exec(ctx, "BEGIN")
			return err
		},
		"SavepointExec": func(ctx context.Context, tx pgx.Tx) error {
			sp, err := tx.Begin(ctx)
			if err != nil {
				return err
			}
			_, err = sp.Exec(ctx, "COMMIT; BEGIN")
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			pool, ctx := managedSetup(t)
			cfg := pool.Config().Copy()
			cfg.MaxConns = 1
			other, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			key := lock.NewKey("test", "endbegin")
			held := -1
			err = lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				if err := end(ctx, tx); err != nil {
					return err
				}
				g, _ := lockRows(t, other, key)
				held = g
				_, err := tx.Exec(ctx, "UPDATE t SET v = 99 WHERE k = 'victim'")
				return err
			})
			t.Logf("Run = %v; lock granted while fn wrote: %d", err, held)
			if !errors.Is(err, lock.ErrTxEnded) {
				t.Errorf("Run = %v, want ErrTxEnded", err)
			}
			if v := value(t, ctx, pool, "victim"); v == 99 {
				t.Errorf("victim = 99: Run committed fn's write made after fn ended the transaction, without the lock")
			}
		})
	}
}

// TestRunDBFnEndsAndBeginsInOneMessage is TestRunFnEndsAndBeginsInOneMessage
// for RunDB: a transaction fn began after ending RunDB's is never committed.
func TestRunDBFnEndsAndBeginsInOneMessage(t *testing.T) {
	t.Parallel()
	for _, stmt := range []string{"COMMIT; BEGIN", "ROLLBACK; BEGIN"} {
		t.Run(stmt, func(t *testing.T) {
			pool, ctx := managedSetup(t)
			db := stdlib.OpenDBFromPool(pool)
			defer db.Close()
			err := lock.RunDB(ctx, db, lock.NewKey("test", "endbegin"), func(ctx context.Context, tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return err
				}
				_, err := tx.ExecContext(ctx, "UPDATE t SET v = 99 WHERE k = 'victim'")
				return err
			})
			if !errors.Is(err, lock.ErrTxEnded) {
				t.Errorf("RunDB = %v, want ErrTxEnded", err)
			}
			if v := value(t, ctx, pool, "victim"); v == 99 {
				t.Errorf("victim = 99: RunDB committed fn's write made after fn ended the transaction, without the lock")
			}
		})
	}
}

// TestRunRetryAfterFnCommitted: fn commits its write itself, then a
// statement of fn's fails with an error Retry would retry had nothing
// committed (a connection exception, or the connection lost): Run and
// RunDB fail with ErrTxEnded and never run fn again, which would apply the
// committed write twice.
func TestRunRetryAfterFnCommitted(t *testing.T) {
	t.Parallel()
	retry := lock.Options{Retry: lock.Retry{Attempts: 3, Backoff: time.Millisecond}}
	for _, failure := range []string{
		"DO $$ BEGIN RAISE EXCEPTION 'worker out of reach' USING ERRCODE = '08006'; END $$",
		"SELECT pg_terminate_backend(pg_backend_pid())",
	} {
		for _, api := range []string{"Run", "RunDB"} {
			t.Run(api+"/"+failure[:8], func(t *testing.T) {
				pool, ctx := managedSetup(t)
				key := lock.NewKey("test", "committed")
				calls := 0
				body := func(exec func(string) error) error {
					calls++
					if err := exec("UPDATE t SET v = v + 1 WHERE k = 'victim'"); err != nil {
						return err
					}
					if err := exec("COMMIT"); err != nil {
						return err
					}
					if calls > 1 {
						return nil
					}
					return exec(failure)
				}
				var err error
				if api == "Run" {
					err = retry.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
						return body(func(sql string) error { _, err := tx.Exec(ctx, sql); return err })
					})
				} else {
					db := stdlib.OpenDBFromPool(pool)
					defer db.Close()
					err = retry.RunDB(ctx, db, key, func(ctx context.Context, tx *sql.Tx) error {
						return body(func(sql string) error { _, err := tx.ExecContext(ctx, sql); return err })
					})
				}
				if !errors.Is(err, lock.ErrTxEnded) {
					t.Errorf("%s = %v, want ErrTxEnded", api, err)
				}
				if v := value(t, ctx, pool, "victim"); calls != 1 || v != 2 {
					t.Errorf("fn ran %d times, victim = %d; want once, 2", calls, v)
				}
			})
		}
	}
}
