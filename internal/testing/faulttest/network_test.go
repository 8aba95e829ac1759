package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/tcpproxy"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// proxied returns a pool on pool's database through a new fault proxy.
func proxied(t *testing.T, pool *pgxpool.Pool, configure func(*pgxpool.Config)) (*tcpproxy.Proxy, *pgxpool.Pool) {
	t.Helper()
	proxy, err := tcpproxy.Start(serverAddr(pool))
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

// TestNetworkResetAroundCommit: the connection is reset while COMMIT is in
// flight: before it reaches the server (the proxy holds everything the
// client sends after fn returned, and resets once COMMIT reached it), or
// after the server committed, while the reply waits in the proxy. Either
// way the caller can't know: With returns ErrCommitUnknown, and Retry does
// not run fn again.
func TestNetworkResetAroundCommit(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		committed bool
	}{
		{"CommitLost", false},
		{"ReplyLost", true},
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
			repo := payment.NewRepository(viaProxy, entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 5}}))
			runs := 0
			sent := make(chan int64, 1) // what the client had sent when fn returned
			done := make(chan error, 1)
			go func() {
				done <- l.call(ctx, repo, k, "op", func(context.Context, pgx.Tx) error {
					runs++
					if tt.committed {
						proxy.StallReplies()
					} else {
						proxy.Stall()
					}
					sent <- proxy.ClientBytes()
					return nil
				})
			}()
			before := <-sent
			// Wait for the event, bounded only against a hang: COMMIT has
			// reached the proxy, or the server has committed.
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("COMMIT did not reach the proxy, or the server, within a minute")
				}
				if !tt.committed {
					if proxy.ClientBytes() > before {
						break
					}
					continue
				}
				_, applied, err := l.audit(ctx, pool)
				if err != nil {
					t.Fatal(err)
				}
				if applied["op"] == 1 {
					break
				}
			}
			proxy.Reset()
			proxy.Resume()
			err := <-done
			if !errors.Is(err, lock.ErrCommitUnknown) || runs != 1 {
				t.Fatalf("With: %v after %d runs of fn; want ErrCommitUnknown after 1", err, runs)
			}
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
	// limit is long enough that the waiter queues behind the holder before
	// the holder's statement times out, even on a loaded machine.
	// idle, too: the holder's transaction is idle from its lock on, and
	// the waiter must queue before the server ends it.
	const idle, limit = 3 * time.Second, time.Second
	for _, tt := range []struct {
		name string
		opts lock.Options // the holder's
		// inStatement: fn runs pg_sleep(600) (longer than within's hang
		// bound: only StatementTimeout ends it in time) and the stall begins
		// while it runs; otherwise fn waits, the stall begins, then fn returns and
		// COMMIT goes into the void.
		inStatement bool
		what        string        // the case, as FIGURE lines name it
		wait        time.Duration // what the waiter waits after the stall on a quiet machine (a FIGURE, see within)
		holderOK    func(err error) bool
		want        string // what holderOK wants, for the failure message
	}{
		{
			name: "IdleInFn", opts: lock.Options{IdleTimeout: idle},
			what: fmt.Sprintf("stall, IdleTimeout %v", idle), wait: idle + 10*time.Second,
			holderOK: func(err error) bool {
				return errors.Is(err, lock.ErrCommitUnknown) && errors.Is(err, context.Canceled)
			},
			want: "ErrCommitUnknown and Canceled (its ctx, ended once the waiter got the lock)",
		},
		{
			name: "InALongStatement", opts: lock.Options{IdleTimeout: limit, StatementTimeout: limit}, inStatement: true,
			what: fmt.Sprintf("stall in a statement, StatementTimeout and IdleTimeout %v", limit), wait: 2*limit + time.Second,
			holderOK: func(err error) bool { return err != nil && !errors.Is(err, lock.ErrCommitUnknown) },
			want:     "a failure before commit",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
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
			stalling := payment.NewRepository(viaProxy, entity.WithLockOptions(tt.opts))
			// Ended once the waiter got the lock: the holder's COMMIT, or its
			// statement's answer, went into the stall and never comes back.
			holdCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			locked, release := make(chan struct{}), releaser(t)
			sleepStart := make(chan time.Time, 1)
			var fn func(ctx context.Context, tx pgx.Tx) error
			if tt.inStatement {
				fn = func(ctx context.Context, tx pgx.Tx) error {
					sleepStart <- time.Now()
					// One message, so the statement is running when the stall begins.
					_, err := tx.Exec(ctx, "SELECT pg_sleep(600)", pgx.QueryExecModeSimpleProtocol)
					return err
				}
			}
			holder := holdThrough(holdCtx, l, stalling, k, "holder", locked, release, fn)
			<-locked
			if tt.inStatement {
				release <- struct{}{} // fn goes straight on to its long statement
			}
			granted, waiter := waitGranted(t, ctx, l, pool, repo, k)
			if tt.inStatement {
				if err := waitFor(ctx, "pg_sleep running", func() (bool, error) {
					var n int
					err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
						WHERE datname = current_database() AND state = 'active' AND wait_event = 'PgSleep'`).Scan(&n)
					return n == 1, err
				}); err != nil {
					t.Fatal(err)
				}
			}
			proxy.Stall()
			stalled := time.Now()
			if !tt.inStatement {
				release <- struct{}{} // fn returns: COMMIT goes into the void
			}
			d := within(t, tt.what, granted, stalled, tt.wait)
			cancel()
			if tt.inStatement {
				t.Logf("FIGURE stall in a statement: the waiter got the lock %v after the statement was sent",
					(d + stalled.Sub(<-sleepStart)).Round(time.Millisecond))
			}
			if err := <-holder; !tt.holderOK(err) {
				t.Errorf("holder: %v; want %s", err, tt.want)
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
}
