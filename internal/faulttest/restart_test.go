package faulttest_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/history"
	"github.com/paylock/paylock/internal/pgserver"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// rounds repeats the restart and lock_timeout tests, for a soak run:
// make soak, or go test ./internal/faulttest/ -faulttest.rounds=20.
var rounds = flag.Int("faulttest.rounds", 1, "repeat the restart and lock_timeout fault tests this many times")

// TestRestart restarts PostgreSQL (fast, then immediate shutdown) while 16
// workers update 4 payments: every call returns, success or error; work
// continues after the restart; the invariants and the history hold. Half the
// workers use Retry, half don't. The test starts a cluster of its own, so
// the restarts disturb no other test.
func TestRestart(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 3*time.Minute)
	srv, err := pgserver.Start(ctx, pgserver.Options{Fast: true})
	if err != nil {
		t.Fatalf("start a cluster of its own: %v", err)
	}
	t.Cleanup(func() { srv.Stop() })

	var modes []string
	for range *rounds {
		modes = append(modes, "fast", "immediate")
	}
	for i, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			db := fmt.Sprintf("restart_%d", i)
			admin, err := pgx.Connect(ctx, srv.ConnString("postgres"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = admin.Exec(ctx, "CREATE DATABASE "+db)
			admin.Close(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := pgxpool.ParseConfig(srv.ConnString(db))
			if err != nil {
				t.Fatal(err)
			}
			cfg.MaxConns = 20
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			if err := payment.Migrate(ctx, pool); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (1, 'api')"); err != nil {
				t.Fatal(err)
			}
			restartUnderLoad(t, ctx, srv, pool, mode)
		})
	}
}

func restartUnderLoad(t *testing.T, ctx context.Context, srv *pgserver.Server, pool *pgxpool.Pool, mode string) {
	const workers, keys = 16, 4
	plain := payment.NewRepository(pool)
	retrying := payment.NewRepository(pool, payment.WithLockOptions(lock.Options{
		Retry: lock.Retry{Attempts: 10, Backoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond},
	}))
	l := newLedger()
	var okCount atomic.Int64
	var mu sync.Mutex
	var okAt []time.Time
	var hung []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		repo := plain
		if w%2 == 0 {
			repo = retrying
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				op := fmt.Sprintf("w%d.%d", w, i)
				callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := l.call(callCtx, repo, key((w+i)%keys), op, nil)
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					okCount.Add(1)
					okAt = append(okAt, time.Now())
				case errors.Is(err, context.DeadlineExceeded):
					hung = append(hung, op)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // a poller's pause after an error
				}
			}
		}()
	}
	waitOK := func(n int64) error {
		return waitFor(ctx, fmt.Sprintf("%d successful calls", n), func() (bool, error) { return okCount.Load() >= n, nil })
	}
	if err := waitOK(200); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	before := okCount.Load()
	start := time.Now()
	restartErr := srv.Restart(ctx, mode)
	restarted := time.Since(start)
	afterErr := waitOK(before + 200)
	close(stop)
	wg.Wait()
	if restartErr != nil {
		t.Fatal(restartErr)
	}
	if afterErr != nil {
		t.Fatalf("work did not continue after the restart: %v", afterErr)
	}
	if len(hung) > 0 {
		t.Errorf("%d calls ran into their 30s deadline: %v", len(hung), hung)
	}

	// The longest stretch without a successful call, as callers saw it.
	sort.Slice(okAt, func(i, j int) bool { return okAt[i].Before(okAt[j]) })
	var gap time.Duration
	for i := 1; i < len(okAt); i++ {
		gap = max(gap, okAt[i].Sub(okAt[i-1]))
	}
	ok, failed, unknown := l.counts()
	var failedRetrying, failedPlain int
	l.mu.Lock()
	for op, o := range l.outcomes {
		var w, i int
		fmt.Sscanf(op, "w%d.%d", &w, &i)
		if o == history.Failed {
			if w%2 == 0 {
				failedRetrying++
			} else {
				failedPlain++
			}
		}
	}
	l.mu.Unlock()
	applied := l.check(t, pool)
	unknownApplied := 0
	for op, o := range l.outcomes {
		if o == history.Unknown && applied[op] == 1 {
			unknownApplied++
		}
	}
	t.Logf("FIGURE restart %s: restart took %v; longest stretch without a success %v; calls: %d ok, %d failed (%d with Retry, %d without), %d unknown (%d of them committed)",
		mode, restarted.Round(time.Millisecond), gap.Round(time.Millisecond), ok, failed, failedRetrying, failedPlain, unknown, unknownApplied)
}
