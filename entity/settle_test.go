package entity_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// callerName names a call for refusingPool.
type callerName struct{}

// refusingPool is a pool of one connection that refuses the first one it
// hands to the call named "A" (as pgxpool does after a failed ping or an
// expired lifetime), once B is queued (bQueued closed) and in
// pool.Acquire: A then queues again, behind B.
func refusingPool(t *testing.T) (pool *pgxpool.Pool, ctx context.Context, bQueued chan struct{}) {
	var refused atomic.Bool
	bQueued = make(chan struct{})
	pool, ctx = setupPool(t, func(cfg *pgxpool.Config) {
		cfg.MaxConns, cfg.MinConns = 1, 0
		cfg.PrepareConn = func(ctx context.Context, _ *pgx.Conn) (bool, error) {
			if ctx.Value(callerName{}) == "A" && !refused.Swap(true) {
				<-bQueued
				time.Sleep(50 * time.Millisecond) // B is in pool.Acquire
				return false, nil                 // destroyed: A acquires again, behind B
			}
			return true, nil
		}
	})
	return pool, ctx, bQueued
}

// TestWithSettleWaitOnASmallPool: a pool of one connection, a free
// key, two callers of it in one process, A then B. A is let through the
// key queue alone, so B, let through second, waits (WaitSettled) for A to
// try the lock. But B waits holding the pool's only connection, which A
// needs for its try: neither moves until ctx ends. Here pgxpool hands the
// connection to B first because the one A was handed is refused (a failed
// ping, an expired lifetime, PrepareConn: pgxpool destroys it and A queues
// again for a connection, behind B); plain goroutine scheduling between
// AcquireAlone and pool.Acquire does the same (see the Many variant).
// Without the try (and before it) both callers simply ran one after the
// other.
func TestWithSettleWaitOnASmallPool(t *testing.T) {
	t.Parallel()
	pool, ctx, bQueued := refusingPool(t)
	repo := entity.New(pool, counters{})
	if err := repo.With(ctx, "warm", noop); err != nil { // prepares With's statements
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang's bound: a busy machine takes seconds
	defer cancel()
	errs := make(chan error, 2)
	go func() {
		errs <- repo.With(context.WithValue(cctx, callerName{}, "A"), "pool1", noop)
	}()
	time.Sleep(20 * time.Millisecond) // A is through the key queue, alone
	go func() {
		close(bQueued)
		errs <- repo.With(cctx, "pool1", noop)
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("a caller of a free key on a pool of one connection: %v, want nil", err)
		}
	}
}

// TestWithSettleWaitOnASmallPoolMany: the same with no hook at all,
// on a pool of one connection and two keys of two callers each, started at
// once: pool.Acquire's order among the callers a key's queue let through is
// whatever the scheduler makes it, so the caller second in line of one key
// can take the connection while the caller alone ahead of it waits for it.
// Within a few hundred rounds, one of them hangs until ctx ends.
func TestWithSettleWaitOnASmallPoolMany(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	repo := entity.New(pool, counters{})
	for round := range 500 {
		cctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang's bound: a busy machine takes seconds
		var wg sync.WaitGroup
		var failed atomic.Int32
		start := make(chan struct{})
		for k := range 2 {
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					if err := repo.With(cctx, fmt.Sprint("many", k), noop); err != nil {
						if failed.Add(1) == 1 {
							t.Errorf("round %d: %v", round, err)
						}
					}
				}()
			}
		}
		close(start)
		wg.Wait()
		cancel()
		if failed.Load() > 0 {
			return
		}
	}
}

// TestWithLockTimeoutOnAFreeKey: with LockTimeout set, the same wait
// ends in lock.ErrLockTimeout for B, though no session ever held the key.
func TestWithLockTimeoutOnAFreeKey(t *testing.T) {
	t.Parallel()
	pool, ctx, bQueued := refusingPool(t)
	// Far longer than the two calls take on any machine: only the deadlock
	// (B waiting for A while holding the connection A needs) reaches it.
	repo := entity.New(pool, counters{}, entity.WithLockOptions(lock.Options{LockTimeout: 15 * time.Second}))
	if err := repo.With(ctx, "warm", noop); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- repo.With(context.WithValue(ctx, callerName{}, "A"), "free", noop) }()
	time.Sleep(20 * time.Millisecond)
	go func() { close(bQueued); errs <- repo.With(ctx, "free", noop) }()
	for range 2 {
		if err := <-errs; errors.Is(err, lock.ErrLockTimeout) {
			t.Errorf("a caller of a key no session holds: %v", err)
		} else if err != nil {
			t.Error(err)
		}
	}
}
