package faulttest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

func terminate(ctx context.Context, t *testing.T, pool interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, pid int32) {
	t.Helper()
	if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
}

// TestTerminateWaiter: pg_terminate_backend on backends waiting for a
// payment. A waiter without Retry fails at once with an error safe to retry;
// one with Retry queues again and succeeds; the other callers don't notice.
func TestTerminateWaiter(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	repo := payment.NewRepository(pool)
	retrying := payment.NewRepository(pool, entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 3}}))
	// Another poller: a Repository lets only the holder and one waiter per
	// key reach the server (its in-process queue), so the third waiter at the
	// server comes from a Repository of its own.
	other := payment.NewRepository(pool)
	l := newLedger()
	k := key(1)

	locked, release := make(chan struct{}), releaser(t)
	done := make(chan error, 4)
	go func() {
		done <- l.call(ctx, repo, k, "holder", func(context.Context, pgx.Tx) error {
			close(locked)
			<-release
			return nil
		})
	}()
	<-locked
	// Start the waiters one at a time to know their pids.
	var pids []int32
	attemptsB := 0
	var errA error
	var endedA time.Time
	doneA := make(chan struct{})
	for i, w := range []func(){
		func() { errA = l.call(ctx, repo, k, "waiterA", nil); endedA = time.Now(); close(doneA) },
		func() {
			done <- l.call(ctx, retrying, k, "waiterB", func(context.Context, pgx.Tx) error { attemptsB++; return nil })
		},
		func() { done <- l.call(ctx, other, k, "waiterC", nil) },
	} {
		go w()
		w, err := waitWaiters(ctx, pool, k, i+1)
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range w {
			if !contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	start := time.Now()
	terminate(ctx, t, pool, pids[0])
	terminate(ctx, t, pool, pids[1])
	<-doneA
	var pgErr *pgconn.PgError
	if !errors.As(errA, &pgErr) || pgErr.Code != "57P01" || !txn.Retryable(ctx, errA) {
		t.Errorf("waiter A: %v; want 57P01, retryable", errA)
	}
	t.Logf("FIGURE terminate waiter: With returned %v after pg_terminate_backend", endedA.Sub(start).Round(time.Microsecond))
	// B queues again, behind C.
	if _, err := waitWaiters(ctx, pool, k, 2); err != nil {
		t.Fatal(err)
	}
	release <- struct{}{}
	for range 3 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if attemptsB != 1 {
		t.Errorf("waiter B's fn ran %d times, want 1 (it was terminated before the lock was granted)", attemptsB)
	}
	l.check(t, pool)
	assertHealthy(t, pool)
}

func contains(s []int32, v int32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// releaser returns a channel a holder's fn waits on: a send releases it,
// and so does the end of the test, so a failing test doesn't leave a
// holder that blocks the pool's Close forever.
func releaser(t *testing.T) chan struct{} {
	ch := make(chan struct{})
	t.Cleanup(func() { close(ch) })
	return ch
}
