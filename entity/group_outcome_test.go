package entity_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// What each call of a group is told, and when: the commit killed, a fn
// ended by runtime.Goexit, a member's or the leader's ctx ending before the
// group ends.

// TestGroupCommitKilledDuringCommit: the connection killed while COMMIT runs
// leaves the outcome unknown for every member whose fn succeeded: each gets
// ErrCommitUnknown, none success, and Retry runs none again.
func TestGroupCommitKilledDuringCommit(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	if _, err := pool.Exec(ctx, `
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	-- At COMMIT only: a group checks each member's deferred constraints at its end too.
	IF NEW.status = 'slow' AND current_query() = 'COMMIT' THEN
		PERFORM pg_sleep(30);
	END IF;
	RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON items DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION slow_commit()`); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16),
		entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 3}}))
	key := itemKey{OwnerID: 1, Name: "li_gc_killcommit"}
	go func() {
		for ctx.Err() == nil {
			var n int
			_ = pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND query = 'COMMIT' AND wait_event = 'PgSleep'`).Scan(&n)
			if n > 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var runs atomic.Int32
	add := func(name string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			runs.Add(1)
			p.Amount++
			p.Status = "slow"
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
			return err
		}
	}
	res := grouped(t, ctx, repo, key, nil, add("a"), add("b"), add("c"))
	for i, r := range res {
		if !errors.Is(r.err, lock.ErrCommitUnknown) {
			t.Errorf("call %d: %v, want ErrCommitUnknown", i, r.err)
		}
	}
	if n := runs.Load(); n != 3 {
		t.Errorf("fns ran %d times, want 3 (no retry after ErrCommitUnknown)", n)
	}
}

// TestGroupCommitGoexitCommitsNothing: fn inserts a ledger row and its
// goroutine ends with runtime.Goexit (t.FailNow in a test's fn). Its call
// never returned: nothing of it commits, as without group commit; the
// others' do.
func TestGroupCommitGoexitCommitsNothing(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	key := itemKey{OwnerID: 1, Name: "li_goexit"}
	res := groupedBounded(t, ctx, repo, key, nil,
		ledgerInsert("leader"),
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 100
			if _, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", "goexit"); err != nil {
				return err
			}
			runtime.Goexit()
			return nil
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount += 5; return nil },
	)
	if res[0].err != nil || res[2].err != nil {
		t.Fatalf("leader %v, third %v", res[0].err, res[2].err)
	}
	if got := ledger(t, ctx, pool); len(got) != 1 || got[0] != "leader" {
		t.Errorf("ledger %q, want only the leader's", got)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 5 {
		t.Errorf("amount %d, want 5: the Goexit call's change was committed", amount)
	}
}

// TestGroupCommitMemberReturnsAtItsCtx: member 1's fn returns at once and
// its ctx ends while member 2's fn still runs. No call waits past its ctx:
// member 1 returns then, before member 2's fn ends, with
// lock.ErrCommitUnknown and its ctx's error (the group may yet commit its
// part, and does).
func TestGroupCommitMemberReturnsAtItsCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	type member1 struct{}
	// On a busy machine the group may end at its time budget before member
	// 2, so that member 1 commits before member 2's fn cancels its ctx:
	// that round shows nothing, and runs again on a fresh key.
	for round := range 5 {
		returned := make(chan struct{}) // member 1's call ended (its Done hook ran)
		var size1 int                   // member 1's Event.GroupSize
		repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithHooks(entity.Hooks{
			Done: func(ctx context.Context, ev entity.Event) {
				if ctx.Value(member1{}) != nil {
					size1 = ev.GroupSize
					close(returned)
				}
			},
		}))
		key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_ctx_return_", round)}
		ctx1, cancel1 := context.WithCancel(context.WithValue(ctx, member1{}, true))
		var waited bool
		res := groupedBounded(t, ctx, repo, key, []context.Context{nil, ctx1},
			itemNoop,
			func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil },
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				cancel1() // member 1's ctx ends while this fn runs
				select {
				case <-returned:
					waited = true
				case <-time.After(30 * time.Second): // only a member 1 that waits for this fn gets here
				}
				p.Amount += 10
				return nil
			},
		)
		cancel1()
		if res[1].err == nil && size1 < 3 {
			t.Logf("round %d: member 1's group ended before member 2 (group of %d): again", round, size1)
			continue
		}
		if !waited {
			t.Errorf("member 1 (%v) did not return while member 2's fn ran", res[1].err)
		}
		if !errors.Is(res[1].err, lock.ErrCommitUnknown) || !errors.Is(res[1].err, context.Canceled) {
			t.Errorf("member 1: %v, want ErrCommitUnknown and context.Canceled", res[1].err)
		}
		if amount, _ := itemRow(t, ctx, pool, key); amount != 11 {
			t.Errorf("amount %d, want 11: member 1's part was committed with the group", amount)
		}
		return
	}
	t.Error("in 5 rounds member 1's group always ended before member 2 joined it")
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
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8),
		entity.WithLockOptions(lock.Options{IdleTimeout: -1}))
	key := itemKey{OwnerID: 1, Name: "li_leader_ctx"}
	held, gate := make(chan struct{}), make(chan struct{})
	running, release := make(chan struct{}), make(chan struct{})
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	leaderErr, memberErr := make(chan error, 1), make(chan error, 1)
	go func() {
		leaderErr <- repo.With(lctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			close(held)
			<-gate
			p.Amount += 1
			return ledgerInsert("leader")(ctx, tx, p)
		})
	}()
	<-held
	go func() {
		memberErr <- repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			close(running)
			<-release // ignores ctx: slow I/O, say
			p.Amount += 2
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
	if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 1+2: the group commits the leader's part after its ctx ended", amount)
	}
	if got := ledger(t, ctx, pool); len(got) != 2 {
		t.Errorf("ledger %q, want leader and member", got)
	}
}

// goexitSave is itemTable whose Save calls runtime.Goexit on its call
// number at (t.FailNow in a Table method does).
type goexitSave struct {
	itemTable
	calls *atomic.Int32
	at    int32
}

func (t goexitSave) Save(old, p *item) (string, []any, error) {
	if t.calls.Add(1) == t.at {
		runtime.Goexit()
	}
	return t.itemTable.Save(old, p)
}

// TestGroupCommitTableGoexitOnTheGroupsGoroutine: the Table's Save calls
// runtime.Goexit while the leader's row is written before its member's turn,
// on the group's own goroutine. As one by one, where the leader's call would
// never return and commit nothing: the leader's goroutine ends with
// runtime.Goexit, nothing of it commits, and the member, which had no turn
// yet, leads the next transaction and succeeds; the key is free afterwards.
func TestGroupCommitTableGoexitOnTheGroupsGoroutine(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	var calls atomic.Int32
	// Save's calls: the leader's step (1), then the leader's row written
	// before the member's turn (2), on the group's goroutine.
	repo := entity.New(pool, goexitSave{calls: &calls, at: 2}, entity.WithGroupCommit(8))
	key := itemKey{OwnerID: 1, Name: "li_table_goexit"}
	held, gate := make(chan struct{}), make(chan struct{})
	leaderExited, memberErr := make(chan bool, 1), make(chan error, 1)
	go func() {
		returned := false
		defer func() { leaderExited <- !returned }()
		_ = repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			close(held)
			<-gate
			p.Amount += 1
			return nil
		})
		returned = true
	}()
	<-held
	go func() {
		memberErr <- repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 2
			return nil
		})
	}()
	waitQueued(t, repo, key, 1)
	close(gate)
	bound := time.After(time.Minute) // a hang
	select {
	case exited := <-leaderExited:
		if !exited {
			t.Error("the leader's call returned; want its goroutine ended by runtime.Goexit, as the Table's Save did")
		}
	case <-bound:
		t.Fatal("the leader's call has not ended a minute after the group began")
	}
	select {
	case err := <-memberErr:
		if err != nil {
			t.Errorf("the member: %v, want nil (it leads the next transaction)", err)
		}
	case <-bound:
		t.Fatal("the member's call has not returned a minute after the group began")
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 2 {
		t.Errorf("amount %d, want 2: nothing of the leader's call commits", amount)
	}
	if err := repo.With(ctx, key, itemNoop); err != nil {
		t.Errorf("a call after: %v", err)
	}
}
