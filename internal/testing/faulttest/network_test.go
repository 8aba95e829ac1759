package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/netfault"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// proxied returns a pool on pool's database through a new fault proxy.
func proxied(t *testing.T, pool *pgxpool.Pool, configure func(*pgxpool.Config)) (*netfault.Proxy, *pgxpool.Pool) {
	t.Helper()
	proxy, err := netfault.Start(serverAddr(pool))
	if err != nil {
		t.Fatal(err)
	}
	p := poolOn(t, pool, proxy.Addr(), configure)
	t.Cleanup(func() { proxy.Close() }) // runs before p.Close: a stalled holder gets its connection back
	return proxy, p
}

// TestNetworkLatency: 8 workers through a proxy that delays every chunk by
// 5ms, 2 payments: everything succeeds, invariants and history hold.
func TestNetworkLatency(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	proxy, slow := proxied(t, pool, func(c *pgxpool.Config) { c.MaxConns = 8 })
	proxy.SetLatency(5 * time.Millisecond)
	repo := payment.NewRepository(slow)
	l := newLedger()
	const workers, calls = 8, 15
	began := time.Now()
	if err := runCalls(ctx, l, repo, workers, calls); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE latency: %d calls through 5ms-per-chunk latency in %v", workers*calls, time.Since(began).Round(time.Millisecond))
	l.check(t, pool)
	assertHealthy(t, pool, slow)
}

// TestNetworkReset: the holder's connection is reset (RST) in the middle of
// fn. The server rolls back at once and the waiter proceeds; the holder's
// With fails with an error safe to retry.
func TestNetworkReset(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	proxy, viaProxy := proxied(t, pool, nil)
	repo := payment.NewRepository(pool)
	l := newLedger()
	k := key(1)
	if err := l.call(ctx, repo, k, "before", nil); err != nil {
		t.Fatal(err)
	}
	locked, release := make(chan struct{}), releaser(t)
	holder := holdThrough(ctx, l, payment.NewRepository(viaProxy), k, "holder", locked, release,
		func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "UPDATE payments SET status = 'partial'")
			return err
		})
	<-locked
	granted, waiter := waitGranted(t, ctx, l, pool, repo, k)
	reset := time.Now()
	proxy.Reset()
	within(t, "reset", granted, reset, time.Second)
	release <- struct{}{}
	assertRolledBack(t, ctx, <-holder, "")
	if err := <-waiter; err != nil {
		t.Fatal(err)
	}
	l.check(t, pool)
	assertHealthy(t, pool, viaProxy)
}

// TestNetworkResetAroundCommit: the connection is reset while COMMIT is in
// flight (the proxy delays each chunk by 400ms; the reset comes 200ms after
// fn returned, before COMMIT reaches the server, or 600ms after, once it
// committed and the reply is on its way). Either way the caller can't know:
// With returns ErrCommitUnknown, and Retry does not run fn again.
func TestNetworkResetAroundCommit(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		resetAt   time.Duration
		committed bool
	}{
		{"CommitLost", 200 * time.Millisecond, false},
		{"ReplyLost", 600 * time.Millisecond, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := pgtest.Context(t, time.Minute)
			pool := newPool(t)
			proxy, viaProxy := proxied(t, pool, nil)
			l := newLedger()
			k := key(1)
			if err := l.call(ctx, payment.NewRepository(pool), k, "before", nil); err != nil {
				t.Fatal(err)
			}
			repo := payment.NewRepository(viaProxy, payment.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 5}}))
			if err := viaProxy.Ping(ctx); err != nil { // connect before the latency
				t.Fatal(err)
			}
			proxy.SetLatency(400 * time.Millisecond)
			runs := 0
			returned := make(chan time.Time, 1)
			done := make(chan error, 1)
			go func() {
				done <- l.call(ctx, repo, k, "op", func(context.Context, pgx.Tx) error {
					runs++
					returned <- time.Now()
					return nil
				})
			}()
			at := <-returned
			time.Sleep(time.Until(at.Add(tt.resetAt)))
			proxy.Reset()
			err := <-done
			if !errors.Is(err, lock.ErrCommitUnknown) || runs != 1 {
				t.Fatalf("With: %v after %d runs of fn; want ErrCommitUnknown after 1", err, runs)
			}
			proxy.SetLatency(0)
			applied := l.check(t, pool)
			if got := applied["op"] == 1; got != tt.committed {
				t.Errorf("committed = %v, want %v", got, tt.committed)
			}
			assertHealthy(t, pool, viaProxy)
		})
	}
}

// TestNetworkStall: the holder's network goes silent (no FIN, no RST) while
// it holds the lock. Without help the server would wait for it forever.
// IdleTimeout makes the server end an idle transaction; StatementTimeout
// cancels a statement that was running, and the error aborts the
// transaction, which releases its locks at once (PostgreSQL releases them at
// the abort, not at the ROLLBACK that the client will never send). Either way
// the waiter proceeds.
func TestNetworkStall(t *testing.T) {
	t.Parallel()
	t.Run("IdleInFn", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, time.Minute)
		pool := newPool(t)
		proxy, viaProxy := proxied(t, pool, nil)
		l := newLedger()
		k := key(1)
		repo := payment.NewRepository(pool)
		if err := l.call(ctx, repo, k, "before", nil); err != nil {
			t.Fatal(err)
		}
		const idle = 500 * time.Millisecond
		stalling := payment.NewRepository(viaProxy, payment.WithLockOptions(lock.Options{IdleTimeout: idle}))
		holdCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		locked, release := make(chan struct{}), releaser(t)
		holder := holdThrough(holdCtx, l, stalling, k, "holder", locked, release, nil)
		<-locked
		granted, waiter := waitGranted(t, ctx, l, pool, repo, k)
		proxy.Stall()
		stalled := time.Now()
		release <- struct{}{} // fn returns: COMMIT goes into the void
		within(t, fmt.Sprintf("stall, IdleTimeout %v", idle), granted, stalled, idle+time.Second)
		err := <-holder
		if !errors.Is(err, lock.ErrCommitUnknown) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("holder: %v; want ErrCommitUnknown and DeadlineExceeded", err)
		}
		if err := <-waiter; err != nil {
			t.Fatal(err)
		}
		if applied := l.check(t, pool); applied["holder"] != 0 {
			t.Error("the stalled holder's update was applied")
		}
		proxy.Resume()
		assertHealthy(t, pool, viaProxy)
	})
	t.Run("InALongStatement", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, time.Minute)
		pool := newPool(t)
		proxy, viaProxy := proxied(t, pool, nil)
		l := newLedger()
		k := key(1)
		repo := payment.NewRepository(pool)
		if err := l.call(ctx, repo, k, "before", nil); err != nil {
			t.Fatal(err)
		}
		const limit = 300 * time.Millisecond
		stalling := payment.NewRepository(viaProxy, payment.WithLockOptions(lock.Options{IdleTimeout: limit, StatementTimeout: limit}))
		holdCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		locked, release := make(chan struct{}), make(chan struct{})
		close(release) // fn goes straight on to its long statement
		sleepStart := make(chan time.Time, 1)
		holder := holdThrough(holdCtx, l, stalling, k, "holder", locked, release, func(ctx context.Context, tx pgx.Tx) error {
			sleepStart <- time.Now()
			// One message, so the statement is running when the stall begins.
			_, err := tx.Exec(ctx, "SELECT pg_sleep(30)", pgx.QueryExecModeSimpleProtocol)
			return err
		})
		<-locked
		granted, waiter := waitGranted(t, ctx, l, pool, repo, k)
		if err := waitFor(ctx, "pg_sleep running", func() (bool, error) {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND state = 'active' AND wait_event = 'PgSleep'`).Scan(&n)
			return n == 1, err
		}); err != nil {
			t.Fatal(err)
		}
		proxy.Stall()
		stalled := time.Now()
		d := within(t, fmt.Sprintf("stall in a statement, StatementTimeout and IdleTimeout %v", limit), granted, stalled, 2*limit+time.Second)
		t.Logf("FIGURE stall in a statement: the waiter got the lock %v after the statement was sent",
			(d + stalled.Sub(<-sleepStart)).Round(time.Millisecond))
		if err := <-holder; err == nil || errors.Is(err, lock.ErrCommitUnknown) {
			t.Errorf("holder: %v; want a failure before commit", err)
		}
		if err := <-waiter; err != nil {
			t.Fatal(err)
		}
		if applied := l.check(t, pool); applied["holder"] != 0 {
			t.Error("the stalled holder's update was applied")
		}
		proxy.Resume()
		assertHealthy(t, pool, viaProxy)
	})
}
