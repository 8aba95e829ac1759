package entity_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestGroupCommitTimeBudget: a leader stops taking callers once its group
// has held the key about max times as long as the leader's own call took,
// so slow fns behind a quick leader don't all run under one lock hold. The
// leader waits for the lock at PostgreSQL (another session holds it) while
// ten callers queue behind it. The first of them to run sleeps for longer
// than the leader's budget can be, however slow the machine: 32 times an
// upper bound of the leader's own call, measured around it (see below). So
// the quick leader's group ends after that caller, at 2 calls, where
// without the budget it would take all eleven. Every call still succeeds,
// once.
func TestGroupCommitTimeBudget(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	type leaderKey struct{}
	var leaderGroup atomic.Int64 // the size of the quick leader's group
	const max = 32
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(max), entity.WithHooks(entity.Hooks{
		Done: func(ctx context.Context, ev entity.Event) {
			if ctx.Value(leaderKey{}) != nil {
				leaderGroup.Store(int64(ev.GroupSize))
			}
		},
	}))
	key := itemKey{OwnerID: 1, Name: "li_gc_budget"}
	if err := repo.With(ctx, key, itemNoop); err != nil { // the row exists
		t.Fatal(err)
	}
	other, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	if _, err := other.Exec(ctx, "SELECT pg_advisory_lock($1)", key.LockKey().ID()); err != nil {
		t.Fatal(err)
	}
	const queued = 10
	var wg sync.WaitGroup
	errs := make(chan error, queued+1)
	call := func(ctx context.Context, fn itemFn) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- repo.With(ctx, key, fn)
		}()
	}
	// The leader's budget is max times its own call: the time from its
	// grant to the end of its fn, plus its lock round trip less the wait at
	// the server. The part of that round trip before the wait lies between
	// sent and waiting; the grant, the rest of the round trip and the
	// leader's fn lie between unlocked and the moment the next caller's fn
	// starts. So max*(waiting-sent + 2*(next fn's start-unlocked)) bounds
	// the budget from above, and a next fn that sleeps that long ends the
	// group.
	sent := time.Now()
	call(context.WithValue(ctx, leaderKey{}, true), func(_ context.Context, _ pgx.Tx, p *item) error { p.Amount++; return nil })
	if err := pgtest.AwaitLockWaiters(ctx, pool, 1); err != nil {
		t.Fatal(err)
	}
	waiting := time.Since(sent)
	var unlocked atomic.Int64 // UnixNano
	var slept atomic.Bool
	for i := range queued {
		call(ctx, func(_ context.Context, _ pgx.Tx, p *item) error {
			if !slept.Swap(true) {
				time.Sleep(max * (waiting + 2*time.Since(time.Unix(0, unlocked.Load()))))
			}
			p.Amount++
			return nil
		})
		waitQueued(t, repo, key, i+1)
	}
	unlocked.Store(time.Now().UnixNano())
	if _, err := other.Exec(ctx, "SELECT pg_advisory_unlock($1)", key.LockKey().ID()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != queued+1 {
		t.Errorf("amount %d, want %d", amount, queued+1)
	}
	if size := leaderGroup.Load(); size != 2 {
		t.Errorf("the quick leader's group: %d calls, want 2: the budget did not stop it after the slow caller", size)
	}
}
