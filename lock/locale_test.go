package lock_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestServerInGerman: a server whose messages are translated ("FEHLER",
// not "ERROR") is classified by the unlocalized severity and SQLSTATE, so a
// refused COMMIT is not taken for a lost one and an ERROR on BEGIN is not
// retried.
func TestServerInGerman(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
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

// TestServerInGermanClassifiesEveryPath: each failure Run and RunDB tell
// apart, raised by a server that speaks German, is classified by its SQLSTATE
// and unlocalized severity: retried, or returned at once with its sentinel.
func TestServerInGermanClassifiesEveryPath(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	runs, pool := runners(t, pgtest.DBMessages(t, "de_DE.UTF-8"))
	retry := lock.Retry{Attempts: 3, Backoff: time.Millisecond}
	german := func(t *testing.T, err error, code string) {
		t.Helper()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code {
			t.Fatalf("%v; want SQLSTATE %s", err, code)
		}
		// German keeps "FATAL"; its message is translated all the same.
		if pgErr.Severity == pgErr.SeverityUnlocalized && (pgErr.Severity != "FATAL" || strings.HasPrefix(pgErr.Message, "terminating")) {
			t.Fatalf("%s %q: not translated, the test proves nothing", pgErr.Severity, pgErr.Message)
		}
	}
	raise := func(code string) string {
		return "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '" + code + "'; END $$"
	}
	gone := func(pid int32) error {
		return waitUntil(ctx, func() (bool, error) {
			var alive bool
			err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid).Scan(&alive)
			return !alive, err
		})
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			key := lock.NewKey("test", "german-paths", r.name)
			// retried runs fn, failing the first attempt with first; the
			// second attempt succeeds.
			retried := func(t *testing.T, o lock.Options, code string, first func(ctx context.Context, q do) error) {
				t.Helper()
				var attempts atomic.Int32
				var firstErr error
				o.Retry = retry
				err := r.run(ctx, o, key, func(ctx context.Context, q do) error {
					if attempts.Add(1) == 1 {
						firstErr = first(ctx, q)
						return firstErr
					}
					return q(ctx, "SELECT 1")
				})
				if err != nil || attempts.Load() != 2 {
					t.Fatalf("%s = %v after %d attempts; want nil after 2", r.name, err, attempts.Load())
				}
				german(t, firstErr, code)
			}
			// definite runs fn once, which fails with failure, and wants
			// that error back at once, matching want (if not nil).
			definite := func(t *testing.T, o lock.Options, code string, want error, failure func(ctx context.Context, q do) error) {
				t.Helper()
				var attempts atomic.Int32
				o.Retry = retry
				err := r.run(ctx, o, key, func(ctx context.Context, q do) error {
					attempts.Add(1)
					return failure(ctx, q)
				})
				german(t, err, code)
				if errors.Is(err, lock.ErrCommitUnknown) || strings.Contains(err.Error(), "attempts") || attempts.Load() > 1 {
					t.Fatalf("%s = %v after %d attempts; want a definite failure, not retried", r.name, err, attempts.Load())
				}
				if want != nil && !errors.Is(err, want) {
					t.Fatalf("%s = %v; want it to match %v", r.name, err, want)
				}
			}

			t.Run("SerializationFailureIsRetried", func(t *testing.T) {
				retried(t, lock.Options{}, "40001", func(ctx context.Context, q do) error { return q(ctx, raise("40001")) })
			})
			t.Run("ServerConnectionExceptionIsRetried", func(t *testing.T) { // Citus: a worker out of reach
				retried(t, lock.Options{}, "08006", func(ctx context.Context, q do) error { return q(ctx, raise("08006")) })
			})
			t.Run("DeadlockIsRetried", func(t *testing.T) {
				retried(t, lock.Options{}, "40P01", func(ctx context.Context, q do) error { return q(ctx, raise("40P01")) })
			})
			t.Run("TerminatedBackendIsRetried", func(t *testing.T) {
				retried(t, lock.Options{}, "57P01", func(ctx context.Context, q do) error {
					return q(ctx, "SELECT pg_terminate_backend(pg_backend_pid())")
				})
			})
			t.Run("IdleTimeoutIsRetried", func(t *testing.T) {
				// The first attempt alone idles 50 ms too long (SET LOCAL);
				// the retry has the default IdleTimeout, whatever the
				// machine's speed.
				retried(t, lock.Options{}, "25P03", func(ctx context.Context, q do) error {
					var pid int32
					if err := q(ctx, "SET LOCAL idle_in_transaction_session_timeout = '50ms'"); err != nil {
						return err
					}
					if err := q(ctx, "SELECT pg_backend_pid()", &pid); err != nil {
						return err
					}
					if err := gone(pid); err != nil { // the server ended the idle session
						return err
					}
					return q(ctx, "SELECT 1")
				})
			})
			t.Run("StatementTimeoutIsNotRetried", func(t *testing.T) {
				definite(t, lock.Options{}, "57014", nil, func(ctx context.Context, q do) error {
					if err := q(ctx, "SET LOCAL statement_timeout = '50ms'"); err != nil {
						return err
					}
					return q(ctx, "SELECT pg_sleep(30)")
				})
			})
			t.Run("LockTimeoutIsNotRetried", func(t *testing.T) {
				holder := begin(t, ctx, pool)
				if err := lock.Acquire(ctx, holder, key); err != nil {
					t.Fatal(err)
				}
				defer holder.Rollback(ctx)
				definite(t, lock.Options{LockTimeout: 50 * time.Millisecond}, "55P03", lock.ErrLockTimeout, func(context.Context, do) error {
					return errors.New("fn called without the lock")
				})
			})
			t.Run("DeadlockLeftWhenAttemptsRunOut", func(t *testing.T) {
				var attempts atomic.Int32
				err := r.run(ctx, lock.Options{Retry: lock.Retry{Attempts: 2, Backoff: time.Millisecond}}, key, func(ctx context.Context, q do) error {
					attempts.Add(1)
					return q(ctx, raise("40P01"))
				})
				german(t, err, "40P01")
				if attempts.Load() != 2 || !strings.Contains(err.Error(), "after 2 attempts") {
					t.Fatalf("%s = %v after %d attempts; want 2", r.name, err, attempts.Load())
				}
			})
		})
	}
}
