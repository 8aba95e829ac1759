package lock_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestServerInGerman: a server whose messages are translated ("FEHLER",
// not "ERROR") is classified by the unlocalized severity and SQLSTATE, so a
// refused COMMIT is not taken for a lost one and an ERROR on BEGIN is not
// retried.
func TestServerInGerman(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	runs, pool := runners(t, pgtest.DBMessages(t, "de_DE.UTF-8"))
	if _, err := pool.Exec(ctx, "CREATE TABLE u (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)"); err != nil {
		t.Fatal(err)
	}
	key := lock.NewKey("test", "german")
	retry := lock.Retry{Attempts: 3, Backoff: time.Millisecond}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			t.Run("UniqueViolationAtCommitIsDefinite", func(t *testing.T) {
				var attempts atomic.Int32
				err := r.run(ctx, lock.Options{Retry: retry}, key, func(ctx context.Context, q do) error {
					attempts.Add(1)
					return q(ctx, "INSERT INTO u VALUES (1), (1)") // checked at COMMIT
				})
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
					t.Fatalf("%s = %v; want the unique violation (23505)", r.name, err)
				}
				if pgErr.Severity != "FEHLER" {
					t.Fatalf("severity %q; the server does not speak German, the test proves nothing", pgErr.Severity)
				}
				if errors.Is(err, lock.ErrCommitUnknown) || attempts.Load() != 1 {
					t.Fatalf("%s = %v after %d attempts; want a definite failure after 1, not ErrCommitUnknown", r.name, err, attempts.Load())
				}
			})

			t.Run("ErrorOnBeginIsNotRetried", func(t *testing.T) {
				// lock_timeout's maximum is 2^31-1 ms (24.8 days): the
				// server refuses 30 days with 22023 as the transaction begins.
				o := lock.Options{LockTimeout: 30 * 24 * time.Hour, Retry: retry}
				var attempts atomic.Int32
				err := r.run(ctx, o, key, func(context.Context, do) error { attempts.Add(1); return nil })
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "22023" || pgErr.Severity != "FEHLER" {
					t.Fatalf("%s = %v; want the server's refusal (22023), in German", r.name, err)
				}
				if strings.Contains(err.Error(), "attempts") || attempts.Load() != 0 {
					t.Fatalf("%s = %v; want one attempt, fn never called", r.name, err)
				}
			})
		})
	}
}
