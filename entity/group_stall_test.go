package entity_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// TestGroupCommitCutsOffAStalledFn: the third of four calls in a group
// inserts a ledger row and then stalls, with no deadline on any ctx. One
// by one, the calls before it commit and return; it holds the key until
// the server ends its transaction, idle for IdleTimeout, and fails with
// nothing committed; the call after it then runs. In a group: the same,
// without waiting for the stalled fn to return — the leader cuts it off
// once it has been idle for IdleTimeout, and the group commits without its
// part. When the stalled fn wakes, its statements through tx and its call
// fail with lock.ErrIdleTimeout.
func TestGroupCommitCutsOffAStalledFn(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	pool, ctx := groupSetup(t)
	var mu sync.Mutex
	sizes := map[int]int{}
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8),
		entity.WithLockOptions(lock.Options{IdleTimeout: idle}),
		entity.WithHooks(entity.Hooks{Done: func(_ context.Context, ev entity.Event) {
			mu.Lock()
			defer mu.Unlock()
			sizes[ev.GroupSize]++
		}}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_stalled"}
	add := func(n int64, entry string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents += n
			return ledgerInsert(entry)(ctx, tx, p)
		}
	}
	wake, woke := make(chan struct{}), make(chan struct{})
	var lateErr error
	stalled := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents += 1000
		if err := ledgerInsert("stalled")(ctx, tx, p); err != nil {
			return err
		}
		<-wake // ignores ctx: stuck, as far as anyone can tell
		_, lateErr = tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ('late')")
		close(woke)
		return nil
	}
	fns := []payFn{add(1, "leader"), add(2, "second"), stalled, add(4, "fourth")}
	errs := make([]chan error, len(fns))
	held, gate := make(chan struct{}), make(chan struct{})
	for i, fn := range fns {
		errs[i] = make(chan error, 1)
		if i == 0 {
			inner := fn
			fn = func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				close(held)
				<-gate
				return inner(ctx, tx, p)
			}
		}
		go func() { errs[i] <- repo.With(ctx, key, fn) }()
		if i == 0 {
			<-held
		} else {
			waitQueued(t, repo, key, i)
		}
	}
	close(gate)
	bound := time.After(time.Minute) // a hang; the cut-off comes after idle
	for _, i := range []int{0, 1, 3} {
		select {
		case err := <-errs[i]:
			if err != nil {
				t.Errorf("call %d: %v, want nil, as one by one", i, err)
			}
		case <-bound:
			close(wake) // so that the calls unwind and the pool can close
			t.Fatalf("call %d has not returned a minute after the group began, while call 2's fn stalls", i)
		}
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 7 {
		t.Errorf("amount %d, want 1+2+4: the stalled call's change must not commit", amount)
	}
	if got := ledger(t, ctx, pool); len(got) != 3 {
		t.Errorf("ledger %q, want leader, second and fourth only", got)
	}
	close(wake)
	<-woke
	if !errors.Is(lateErr, lock.ErrIdleTimeout) || !errors.Is(lateErr, pgx.ErrTxClosed) {
		t.Errorf("the stalled fn's statement after the cut-off: %v, want lock.ErrIdleTimeout and pgx.ErrTxClosed", lateErr)
	}
	if err := <-errs[2]; !errors.Is(err, lock.ErrIdleTimeout) || errors.Is(err, lock.ErrCommitUnknown) {
		t.Errorf("the stalled call: %v, want lock.ErrIdleTimeout, known not committed", err)
	}
	if got := ledger(t, ctx, pool); len(got) != 3 {
		t.Errorf("ledger %q after the stalled fn woke, want leader, second and fourth only", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if sizes[1] == len(fns) {
		t.Fatalf("group sizes %v: no call ran in a group, so the test proves nothing", sizes)
	}
}

// TestGroupCommitLeaderCtxEnds: no call waits past its ctx, the leader's
// included. The leader's fn returns, a member's fn then runs on and on
// (IdleTimeout left to the server, so nobody cuts it off), and the
// leader's ctx ends: the leader's call returns at once with
// lock.ErrCommitUnknown and ctx's error, as a member's does whose ctx ends
// after its fn returned, while the group goes on without it and commits
// both calls once the member's fn returns.
func TestGroupCommitLeaderCtxEnds(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8),
		entity.WithLockOptions(lock.Options{IdleTimeout: -1}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_leader_ctx"}
	held, gate := make(chan struct{}), make(chan struct{})
	running, release := make(chan struct{}), make(chan struct{})
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	leaderErr, memberErr := make(chan error, 1), make(chan error, 1)
	go func() {
		leaderErr <- repo.With(lctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			close(held)
			<-gate
			p.AmountCents += 1
			return ledgerInsert("leader")(ctx, tx, p)
		})
	}()
	<-held
	go func() {
		memberErr <- repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			close(running)
			<-release // ignores ctx: slow I/O, say
			p.AmountCents += 2
			return ledgerInsert("member")(ctx, tx, p)
		})
	}()
	waitQueued(t, repo, key, 1)
	close(gate)
	bound := time.After(time.Minute) // a hang
	select {
	case <-running:
	case <-bound:
		t.Fatal("the member's fn has not run a minute after the leader's fn returned")
	}
	lcancel()
	select {
	case err := <-leaderErr:
		if !errors.Is(err, lock.ErrCommitUnknown) || !errors.Is(err, context.Canceled) {
			t.Errorf("the leader, its ctx ended while the member's fn ran: %v, want lock.ErrCommitUnknown and context.Canceled", err)
		}
	case <-bound:
		close(release)
		t.Fatal("the leader's call has not returned a minute after the group began, its ctx ended, while the member's fn runs")
	}
	close(release)
	select {
	case err := <-memberErr:
		if err != nil {
			t.Errorf("the member: %v, want nil", err)
		}
	case <-bound:
		t.Fatal("the member's call has not returned a minute after the group began")
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 1+2: the group commits the leader's part after its ctx ended", amount)
	}
	if got := ledger(t, ctx, pool); len(got) != 2 {
		t.Errorf("ledger %q, want leader and member", got)
	}
}
