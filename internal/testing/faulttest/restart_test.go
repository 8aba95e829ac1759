package faulttest_test

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/pgserver"
)

// rounds repeats the restart and lock_timeout tests, for a soak run:
// make soak, or go test ./internal/testing/faulttest/ -faulttest.rounds=20.
var rounds = flag.Int("faulttest.rounds", 1, "repeat the restart and lock_timeout fault tests this many times")

// TestRestart restarts PostgreSQL (fast, then immediate shutdown) while 16
// workers update 4 payments: every call returns, success or error; work
// continues after the restart; the invariants and the history hold. Half the
// workers use Retry, half don't. The test starts a cluster of its own, so
// the restarts disturb no other test.
func TestRestart(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 3*time.Minute)
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
			pool := serverPool(t, ctx, srv, fmt.Sprintf("restart_%d", i))
			restartUnderLoad(t, ctx, srv, pool, mode)
		})
	}
}

func restartUnderLoad(t *testing.T, ctx context.Context, srv *pgserver.Server, pool *pgxpool.Pool, mode string) {
	const workers, keys = 16, 4
	l := newLedger()
	stop := make(chan struct{})
	hungc := make(chan []string, 1)
	go func() { hungc <- poll(ctx, l, pollerRepos(pool), "w", workers, keys, stop) }()
	waitOK := func(n int) error {
		return waitFor(ctx, fmt.Sprintf("%d successful calls", n), func() (bool, error) {
			ok, _, _ := l.counts()
			return ok >= n, nil
		})
	}
	if err := waitOK(200); err != nil {
		close(stop)
		<-hungc
		t.Fatal(err)
	}
	before, _, _ := l.counts()
	start := time.Now()
	restartErr := srv.Restart(ctx, mode)
	restarted := time.Since(start)
	afterErr := waitOK(before + 200)
	close(stop)
	hung := <-hungc
	if restartErr != nil {
		t.Fatal(restartErr)
	}
	if afterErr != nil {
		t.Fatalf("work did not continue after the restart: %v", afterErr)
	}
	if len(hung) > 0 {
		t.Errorf("%d calls ran into their 30s deadline: %v", len(hung), hung)
	}

	gap := longestGap(l.rec.Ops())
	ok, failed, unknown := l.counts()
	failedRetrying, failedPlain := l.failures()
	applied := l.check(t, pool)
	t.Logf("FIGURE restart %s: restart took %v; longest stretch without a success %v; calls: %d ok, %d failed (%d with Retry, %d without), %d unknown (%d of them committed)",
		mode, restarted.Round(time.Millisecond), gap.Round(time.Millisecond), ok, failed, failedRetrying, failedPlain, unknown, l.unknownApplied(applied))
}
