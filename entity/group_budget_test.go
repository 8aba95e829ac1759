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
	"github.com/paylock/paylock/payment"
)

// TestGroupCommitTimeBudget: a leader stops taking callers once its group
// has held the key about max times as long as the leader's own call took,
// so slow fns behind a quick leader don't all run under one lock hold. The
// leader waits for the lock at PostgreSQL (another session holds it) while
// ten callers whose fns take 100 ms each queue behind it; once it gets the
// lock its own call takes a round trip or two, so with max 32 its budget is
// tens of milliseconds and its group ends after one or two of them, where
// without the budget it would take all ten. (The next leader, one of the
// slow ones, has a budget of 32 times 100 ms and takes the rest.) Every call
// still succeeds, once.
func TestGroupCommitTimeBudget(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	type leaderKey struct{}
	var leaderGroup atomic.Int64 // the size of the quick leader's group
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(32), entity.WithHooks(entity.Hooks{
		Done: func(ctx context.Context, ev entity.Event) {
			if ctx.Value(leaderKey{}) != nil {
				leaderGroup.Store(int64(ev.GroupSize))
			}
		},
	}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_gc_budget"}
	if err := repo.With(ctx, key, payNoop); err != nil { // the row exists
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
	const slow = 10
	var wg sync.WaitGroup
	errs := make(chan error, slow+1)
	call := func(ctx context.Context, fn payFn) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- repo.With(ctx, key, fn)
		}()
	}
	call(context.WithValue(ctx, leaderKey{}, true), func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil })
	if err := pgtest.AwaitLockWaiters(ctx, pool, 1); err != nil {
		t.Fatal(err)
	}
	for i := range slow {
		call(ctx, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			time.Sleep(100 * time.Millisecond)
			p.AmountCents++
			return nil
		})
		waitQueued(t, repo, key, i+1)
	}
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
	if amount, _ := payRow(t, ctx, pool, key); amount != slow+1 {
		t.Errorf("amount %d, want %d", amount, slow+1)
	}
	size := leaderGroup.Load()
	t.Logf("the quick leader's group: %d calls", size)
	if size < 1 || size > slow/2 {
		t.Errorf("the quick leader's group: %d calls, want at most %d: the budget did not stop it taking slow callers", size, slow/2)
	}
}
