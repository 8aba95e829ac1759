package lock_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

func TestRetryDo(t *testing.T) {
	serialization := &pgconn.PgError{Severity: "ERROR", Code: "40001"}
	deadlock := fmt.Errorf("%w: %w", lock.ErrDeadlock, &pgconn.PgError{Severity: "ERROR", Code: "40P01"})
	lockTimeout := fmt.Errorf("%w: %w", lock.ErrLockTimeout, &pgconn.PgError{Severity: "ERROR", Code: "55P03"})
	unknown := fmt.Errorf("%w: %w", lock.ErrCommitUnknown, serialization)
	for _, tt := range []struct {
		name  string
		err   error
		calls int
	}{
		{"SerializationFailureIsRetried", serialization, 4},
		{"DeadlockIsRetried", deadlock, 4},
		{"CommitUnknownIsNot", unknown, 1},
		{"LockTimeoutIsNot", lockTimeout, 1},
		{"OtherErrorsAreNot", errors.New("fn's own"), 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := lock.Retry{Attempts: 4, Backoff: time.Millisecond}.Do(context.Background(), func() error {
				calls++
				return tt.err
			})
			if calls != tt.calls || !errors.Is(err, tt.err) {
				t.Fatalf("%d calls, %v; want %d calls and the error", calls, err, tt.calls)
			}
		})
	}
	// No timing assumptions: whenever ctx ends, during the wait or during an
	// attempt, Do stops and its error matches both ctx.Err() and the
	// attempt's error.
	t.Run("StopsWhenCtxIsDone", func(t *testing.T) {
		// The deadline passes long before the first wait (an hour) ends,
		// and possibly before the first attempt returns, on a loaded machine.
		ctx := pgtest.Context(t, 20*time.Millisecond)
		calls := 0
		err := lock.Retry{Attempts: 100, Backoff: time.Hour, MaxBackoff: time.Hour}.Do(ctx, func() error {
			calls++
			return serialization
		})
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, serialization) || calls != 1 {
			t.Fatalf("%d calls, %v; want 1 call and DeadlineExceeded", calls, err)
		}
	})
	t.Run("StopsWhenCtxEndsDuringAnAttempt", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls := 0
		err := lock.Retry{Attempts: 100, Backoff: time.Millisecond}.Do(ctx, func() error {
			if calls++; calls == 2 {
				cancel()
			}
			return serialization
		})
		if !errors.Is(err, context.Canceled) || !errors.Is(err, serialization) || calls != 2 {
			t.Fatalf("%d calls, %v; want 2 calls and Canceled", calls, err)
		}
	})
	t.Run("OwnErrorUnchangedWhenCtxIsDone", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		own := errors.New("fn's own")
		err := lock.Retry{Attempts: 4, Backoff: time.Millisecond}.Do(ctx, func() error { cancel(); return own })
		if err != own {
			t.Fatalf("%v; want fn's own error, unchanged", err)
		}
	})
	t.Run("MaxBackoffCapsTheFirstWait", func(t *testing.T) {
		// Without the cap the first wait is half an hour at least.
		ctx := pgtest.Context(t, 20*time.Second)
		calls := 0
		err := lock.Retry{Attempts: 2, Backoff: time.Hour, MaxBackoff: time.Millisecond}.Do(ctx, func() error {
			calls++
			return serialization
		})
		if calls != 2 || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%d calls, %v; want 2 calls, the wait capped at MaxBackoff", calls, err)
		}
	})
	t.Run("ZeroValueMakesOneAttempt", func(t *testing.T) {
		calls := 0
		lock.Retry{}.Do(context.Background(), func() error { calls++; return serialization })
		if calls != 1 {
			t.Fatalf("%d calls", calls)
		}
	})
}

// TestRunRetriesADeadlock: two Runs take two keys in opposite orders, so
// PostgreSQL fails one with a deadlock. Without Retry one Run returns
// ErrDeadlock; with it both commit, the loser's fn having run twice.
func TestRunRetriesADeadlock(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, nil)
	a, b := lock.NewKey("retry", "a"), lock.NewKey("retry", "b")
	run := func(o lock.Options) (errs [2]error, runs int64) {
		ctx := pgtest.Context(t, 30*time.Second)
		var n atomic.Int64
		first := make(chan struct{}, 2)
		var g errgroup.Group
		for i, keys := range [][2]lock.Key{{a, b}, {b, a}} {
			g.Go(func() error {
				errs[i] = o.Run(ctx, pool, keys[0], func(ctx context.Context, tx pgx.Tx) error {
					if n.Add(1) <= 2 { // first attempts: hold one key each before taking the other
						first <- struct{}{}
						for len(first) < 2 {
							time.Sleep(time.Millisecond)
						}
					}
					if _, err := tx.Exec(ctx, "SET LOCAL deadlock_timeout = '50ms'"); err != nil {
						return err
					}
					return lock.Acquire(ctx, tx, keys[1])
				})
				return nil
			})
		}
		g.Wait()
		return errs, n.Load()
	}

	errs, _ := run(lock.Options{})
	if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs[:]...), lock.ErrDeadlock) {
		t.Fatalf("without Retry: %v; want exactly one ErrDeadlock", errs)
	}
	errs, runs := run(lock.Options{Retry: lock.Retry{Attempts: 3, Backoff: 10 * time.Millisecond}})
	if errs[0] != nil || errs[1] != nil || runs != 3 {
		t.Fatalf("with Retry: %v after %d runs of fn; want both to commit after 3", errs, runs)
	}
}
