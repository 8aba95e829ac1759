package faulttest_test

import (
	"context"
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

// TestHolderLost: the holder's session ends in the middle of fn, in one of
// three ways:
//   - Terminated: pg_terminate_backend on the backend that holds the lock;
//   - Reset: its connection is reset (RST) while fn runs;
//   - IdleTimeout: fn sleeps (a hung poller with its network intact) and the
//     server disconnects it after IdleTimeout, while waiting for a command,
//     so before any COMMIT.
//
// Each time the server rolls the holder back, the waiter gets the lock
// within the limit, and the holder's With fails with an error safe to retry
// (nothing was committed: not ErrCommitUnknown) with the case's SQLSTATE.
func TestHolderLost(t *testing.T) {
	t.Parallel()
	const idle = 300 * time.Millisecond
	partialUpdate := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE payments SET status = 'partial'")
		return err
	}
	for _, tt := range []struct {
		name    string
		what    string       // the fault, as FIGURE lines name it
		proxied bool         // the holder connects through a fault proxy
		opts    lock.Options // the holder's
		fn      func(ctx context.Context, tx pgx.Tx) error
		limit   time.Duration // on the waiter's wait, from the fault
		code    string        // the holder's SQLSTATE; "" for a broken connection
		// fault ends the holder's session and returns when the fault began;
		// the holder got the lock at lockedAt.
		fault func(t *testing.T, ctx context.Context, pool *pgxpool.Pool, proxy *tcpproxy.Proxy, k payment.Key, lockedAt time.Time) time.Time
	}{
		{
			name: "Terminated", what: "terminate holder", fn: partialUpdate, limit: time.Second, code: "57P01", // admin shutdown
			fault: func(t *testing.T, ctx context.Context, pool *pgxpool.Pool, _ *tcpproxy.Proxy, k payment.Key, _ time.Time) time.Time {
				holders, _, err := lockHolders(ctx, pool, k)
				if err != nil || len(holders) != 1 {
					t.Fatalf("holders %v, %v", holders, err)
				}
				start := time.Now()
				terminate(ctx, t, pool, holders[0])
				return start
			},
		},
		{
			name: "Reset", what: "reset", proxied: true, fn: partialUpdate, limit: time.Second, code: "",
			fault: func(_ *testing.T, _ context.Context, _ *pgxpool.Pool, proxy *tcpproxy.Proxy, _ payment.Key, _ time.Time) time.Time {
				reset := time.Now()
				proxy.Reset()
				return reset
			},
		},
		{
			name: "IdleTimeout", what: fmt.Sprintf("idle holder, IdleTimeout %v", idle), opts: lock.Options{IdleTimeout: idle},
			limit: idle + time.Second, code: "25P03", // idle-in-transaction timeout
			fault: func(_ *testing.T, _ context.Context, _ *pgxpool.Pool, _ *tcpproxy.Proxy, _ payment.Key, lockedAt time.Time) time.Time {
				return lockedAt // the server's clock starts when the holder goes idle in fn
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := pgtest.Context(t, time.Minute)
			pool := newPool(t)
			holderPool, healthy := pool, []*pgxpool.Pool{pool}
			var proxy *tcpproxy.Proxy
			if tt.proxied {
				proxy, holderPool = proxied(t, pool, nil)
				healthy = append(healthy, holderPool)
			}
			repo := payment.NewRepository(pool)
			l := newLedger()
			k := key(1)
			if err := l.call(ctx, repo, k, "before", nil); err != nil {
				t.Fatal(err)
			}

			locked, release := make(chan struct{}), releaser(t)
			holder := holdThrough(ctx, l, payment.NewRepository(holderPool, entity.WithLockOptions(tt.opts)),
				k, "holder", locked, release, tt.fn)
			<-locked
			lockedAt := time.Now()
			granted, waiter := waitGranted(t, ctx, l, pool, repo, k)
			within(t, tt.what, granted, tt.fault(t, ctx, pool, proxy, k, lockedAt), tt.limit)
			release <- struct{}{}
			assertRolledBack(t, ctx, <-holder, tt.code)
			if err := <-waiter; err != nil {
				t.Fatal(err)
			}
			l.check(t, pool)
			assertHealthy(t, pool, healthy[1:]...)
		})
	}
}
