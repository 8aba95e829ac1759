package entity_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestGroupCommitMemberCtxEndsWhileTaken: the leader took a member from
// the queue and, before handing it its turn, writes its own row (a trigger
// makes that write wait for an advisory lock the test holds). The member's
// ctx ends meanwhile: its call returns with ctx's error, fn not run, as it
// would while it waited for the lock one by one, without waiting for the
// leader's write: no call waits past its ctx. The leader commits.
func TestGroupCommitMemberCtxEndsWhileTaken(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	const advisory = 7341
	if _, err := pool.Exec(ctx, `CREATE FUNCTION block_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status = 'block' THEN PERFORM pg_advisory_xact_lock(7341); END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER block_write BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION block_write()`); err != nil {
		t.Fatal(err)
	}
	blocker, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Release()
	if _, err := blocker.Exec(ctx, "SELECT pg_advisory_lock($1)", advisory); err != nil {
		t.Fatal(err)
	}
	unlocked := false
	unlock := func() {
		if !unlocked {
			unlocked = true
			if _, err := blocker.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", advisory); err != nil {
				t.Error(err)
			}
		}
	}
	defer unlock()

	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "handoff_ctx"}
	held, gate := make(chan struct{}), make(chan struct{})
	leaderDone := make(chan error, 1)
	go func() {
		leaderDone <- repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			close(held)
			<-gate
			p.Status = "block"
			return nil
		})
	}()
	<-held
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ran atomic.Bool
	memberDone := make(chan error, 1)
	go func() {
		memberDone <- repo.With(mctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			ran.Store(true)
			p.Amount++
			return nil
		})
	}()
	waitQueued(t, repo, key, 1)
	close(gate)
	// The leader's write waits for the advisory lock: the member was taken.
	if err := pgtest.AwaitLockWaiters(ctx, pool, 1); err != nil {
		t.Fatal(err)
	}
	if n := entity.Queued(repo, key.LockKey()); n != 0 {
		t.Fatalf("%d callers queued while the leader writes its row, want 0 (taken)", n)
	}
	cancel()
	select {
	case err := <-memberDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("member: %v, want context.Canceled", err)
		}
	case <-time.After(time.Minute): // only a hang takes that long: the write waits for the test
		t.Fatal("the member's call did not return after its ctx ended: it waits for the leader's write")
	}
	unlock()
	select {
	case err := <-leaderDone:
		if err != nil {
			t.Errorf("leader: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the leader's call did not return")
	}
	if ran.Load() {
		t.Error("the member's fn ran though its ctx ended before its turn")
	}
	if _, status := itemRow(t, ctx, pool, key); status != "block" {
		t.Errorf("status %q, want block", status)
	}
}
