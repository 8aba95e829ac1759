package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// TestLockTimeoutAsTheLockIsGranted: lock_timeout fires at about the moment
// the holder commits, so some waits end in the race PostgreSQL leaves open
// (the timeout wins though the lock was just granted). Whatever each waiter
// gets, a lock timeout means its fn never ran and nothing was written, the
// lock is not left behind, and the next caller proceeds.
func TestLockTimeoutAsTheLockIsGranted(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	repo := payment.NewRepository(pool)
	const timeout = 50 * time.Millisecond
	impatient := payment.NewRepository(pool, entity.WithLockOptions(lock.Options{LockTimeout: timeout}))
	l := newLedger()
	k := key(1)
	var ok, timedOut, inQueue int
	trials := 30 * *rounds
	for i := range trials {
		locked, release := make(chan struct{}), make(chan struct{})
		holder := holdThrough(ctx, l, repo, k, fmt.Sprint("holder.", i), locked, release, nil)
		<-locked
		ran := false
		waiter := make(chan error, 1)
		go func() {
			waiter <- l.call(ctx, impatient, k, fmt.Sprint("waiter.", i), func(context.Context, pgx.Tx) error {
				ran = true
				return nil
			})
		}()
		// Release the holder within ±15ms of the waiter's timeout.
		time.Sleep(timeout - 15*time.Millisecond + rand.N(30*time.Millisecond))
		close(release)
		if err := <-holder; err != nil {
			t.Fatal(err)
		}
		err := <-waiter
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			ok++
		case errors.Is(err, lock.ErrLockTimeout) && errors.As(err, &pgErr) && pgErr.Code == "55P03" && !ran:
			timedOut++
		case errors.Is(err, lock.ErrLockTimeout) && !ran:
			// LockTimeout also bounds the in-process queue; on a busy
			// machine a goroutine held off the CPU for 50 ms times out
			// there, before PostgreSQL.
			inQueue++
		default:
			t.Fatalf("waiter %d: %v (fn ran: %v); want success or ErrLockTimeout before fn", i, err, ran)
		}
	}
	t.Logf("FIGURE lock_timeout race: %d waiters released within ±15ms of a 50ms lock_timeout: %d succeeded, %d timed out (and %d in the in-process queue)",
		trials, ok, timedOut, inQueue)
	if err := l.call(ctx, impatient, k, "after", nil); err != nil {
		t.Fatalf("the next caller: %v", err)
	}
	l.check(t, pool)
	assertHealthy(t, pool)
}

// TestFnFails: fn panics, returns an error, or runs past ctx's deadline
// (blocked in a statement, or ignoring ctx and returning nil late): nothing
// is written, the lock is released, no connection leaks.
func TestFnFails(t *testing.T) {
	t.Parallel()
	errFn := errors.New("fn failed")
	for _, tt := range []struct {
		name  string
		fn    func(ctx context.Context, tx pgx.Tx) error
		check func(err error) bool
	}{
		{"Panics", func(context.Context, pgx.Tx) error { panic("boom") }, nil},
		{"ReturnsAnError", func(context.Context, pgx.Tx) error { return errFn },
			func(err error) bool { return err == errFn }},
		{"BlocksInAStatementPastTheDeadline", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "SELECT pg_sleep(10)")
			return err
		}, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
		{"IgnoresTheDeadlineAndReturnsNil", func(ctx context.Context, tx pgx.Tx) error {
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond)
			return nil
		}, func(err error) bool {
			return errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, lock.ErrCommitUnknown)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := pgtest.Context(t, time.Minute)
			pool := newPool(t)
			repo := payment.NewRepository(pool)
			l := newLedger()
			k := key(1)
			if err := l.call(ctx, repo, k, "before", nil); err != nil {
				t.Fatal(err)
			}
			// A deadline only for the cases about one: a busy machine may
			// take longer than 200ms to reach fn.
			callCtx, cancel := context.WithCancel(ctx)
			if strings.Contains(tt.name, "Deadline") {
				callCtx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
			}
			defer cancel()
			var err error
			panicked := func() (p any) {
				defer func() { p = recover() }()
				err = l.call(callCtx, repo, k, "failing", func(ctx context.Context, tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "UPDATE payments SET status = 'partial'"); err != nil {
						return err
					}
					return tt.fn(ctx, tx)
				})
				return nil
			}()
			switch {
			case tt.check == nil && panicked == nil:
				t.Fatalf("With returned %v; want the panic to pass through", err)
			case tt.check != nil && !tt.check(err):
				t.Fatalf("With: %v", err)
			}
			if panicked != nil {
				l.mu.Lock()
				l.outcomes["failing"] = 1 // history.Failed: a panic is not acknowledged
				l.mu.Unlock()
			}
			start := time.Now()
			if err := l.call(ctx, repo, k, "after", nil); err != nil {
				t.Fatal(err)
			}
			t.Logf("the next caller took %v", time.Since(start).Round(time.Microsecond))
			applied := l.check(t, pool)
			if applied["failing"] != 0 {
				t.Error("the failed call's update was applied")
			}
			var partial int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments WHERE status = 'partial'").Scan(&partial); err != nil || partial != 0 {
				t.Errorf("fn's own statement left %d rows (%v)", partial, err)
			}
			assertHealthy(t, pool)
		})
	}
}
