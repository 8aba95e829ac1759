package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestRunFnEndsAndBeginsEveryMode: the check that refuses to commit a
// transaction fn began after ending Run's works in every query exec mode,
// whatever the server's default isolation, and with translated messages.
func TestRunFnEndsAndBeginsEveryMode(t *testing.T) {
	t.Parallel()
	for name, mode := range map[string]pgx.QueryExecMode{
		"simple": pgx.QueryExecModeSimpleProtocol, "exec": pgx.QueryExecModeExec,
		"describe": pgx.QueryExecModeDescribeExec, "cachedescribe": pgx.QueryExecModeCacheDescribe,
		"german": pgx.QueryExecModeCacheStatement,
	} {
		t.Run(name, func(t *testing.T) {
			var url string
			if name == "german" {
				url = pgtest.DBMessages(t, "de_DE.UTF-8")
			} else {
				url = pgtest.DB(t)
			}
			cfg, err := pgxpool.ParseConfig(url)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ConnConfig.DefaultQueryExecMode = mode
			ctx := pgtest.Context(t, 30*time.Second)
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			if _, err := pool.Exec(ctx, "CREATE TABLE t (k text PRIMARY KEY, v int); INSERT INTO t VALUES ('victim', 1)"); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, "ALTER DATABASE "+cfg.ConnConfig.Database+" SET default_transaction_isolation = serializable"); err != nil {
				t.Fatal(err)
			}
			pool.Reset() // new sessions get the setting
			key := lock.NewKey("test", "m")
			err = lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				_, err := tx.Exec(ctx, "UPDATE t SET v = $1 WHERE k = 'victim'", 2)
				return err
			})
			if err != nil || value(t, ctx, pool, "victim") != 2 {
				t.Fatalf("Run = %v, want nil and victim 2", err)
			}
			err = lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "COMMIT; BEGIN"); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "UPDATE t SET v = $1 WHERE k = 'victim'", 99)
				return err
			})
			if !errors.Is(err, lock.ErrTxEnded) || value(t, ctx, pool, "victim") == 99 {
				t.Fatalf("Run = %v, victim = %d; want ErrTxEnded and the write after BEGIN not committed", err, value(t, ctx, pool, "victim"))
			}
			if err := lock.Run(ctx, pool, key, func(context.Context, pgx.Tx) error { return nil }); err != nil {
				t.Fatal(err)
			}
		})
	}
}
