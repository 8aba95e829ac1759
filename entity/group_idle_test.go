package entity_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// The leader's cut-off of a member's fn idle for IdleTimeout
// (group_idle.go), and the server's IdleTimeout in a group, against the same
// calls one by one.

// runBusy runs, through repo, a leader, a member whose fn starts a
// statement that the server keeps busy (it waits for advisory lock
// advisory, which the test holds) and, while the statement runs, does
// something else than reading its result, and one more member. The test
// holds the lock for 3×idle once the statement waits for it, then lets fn
// read the result. The server never sees the transaction idle: one by one
// the call succeeds (where pgx's call blocks until the result comes, fn
// simply waits in it).
func runBusy(t *testing.T, ctx context.Context, pool *pgxpool.Pool, repo itemRepo, group bool, key itemKey, idle time.Duration, advisory int64,
	read func(ctx context.Context, tx pgx.Tx, wait func()) error,
) []result {
	t.Helper()
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
	resume := make(chan struct{})
	busy := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount += 10
		return read(ctx, tx, func() {
			<-resume // not reading the statement's result meanwhile
		})
	}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil }
	done := make(chan []result, 1)
	go func() { done <- groupedOrOneByOne(t, ctx, repo, group, key, add, busy, add) }()
	// Wait until fn's statement waits for the lock, then 3×idle with the
	// statement busy on the server; then let it end, and fn read it.
	for {
		var waiting bool
		if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted)",
			advisory).Scan(&waiting); err != nil {
			close(resume)
			t.Fatal(err)
		}
		if waiting {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-time.After(3 * idle):
	case <-ctx.Done():
	}
	unlock()
	close(resume)
	select {
	case res := <-done:
		return res
	case <-ctx.Done():
		t.Fatal("the calls have not returned")
		return nil
	}
}

// TestGroupCommitBusyStatementNotCutOff: a member's fn whose
// statement runs on the server for longer than IdleTimeout while fn does
// something else than reading its result (a QueryRow not yet scanned,
// Rows not yet read, a batch not yet read). One by one the transaction is
// never idle, and the call succeeds. Grouped, the leader saw no call
// through tx in progress for IdleTimeout and cut the fn off: it failed
// with lock.ErrIdleTimeout, though the server was busy with its statement.
func TestGroupCommitBusyStatementNotCutOff(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	pool, ctx := groupSetup(t)
	execPool, _ := itemsPool(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec })
	// A statement whose first row (100 kB: the server flushes it) comes
	// at once, and whose second waits for the lock.
	const twoRows = "SELECT CASE WHEN i = 1 THEN repeat('x', 100000) ELSE pg_advisory_xact_lock_shared($1)::text END FROM generate_series(1, 2) i"
	reads := map[string]func(ctx context.Context, tx pgx.Tx, wait func()) error{
		"QueryRow": func(ctx context.Context, tx pgx.Tx, wait func()) error {
			// The first statement goes with the member's savepoint; the
			// second, pipelined, returns before its result (exec mode).
			if _, err := tx.Exec(ctx, "SELECT $1::int", 1); err != nil {
				return err
			}
			row := tx.QueryRow(ctx, "SELECT pg_advisory_xact_lock_shared($1)::text", int64(7301))
			wait()
			var s string
			return row.Scan(&s)
		},
		"Query": func(ctx context.Context, tx pgx.Tx, wait func()) error {
			rows, err := tx.Query(ctx, twoRows, int64(7302))
			if err != nil {
				return err
			}
			wait()
			_, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		},
		"SendBatch": func(ctx context.Context, tx pgx.Tx, wait func()) error {
			b := &pgx.Batch{}
			b.Queue("SELECT pg_advisory_xact_lock_shared($1)::text", int64(7303))
			br := tx.SendBatch(ctx, b)
			wait()
			if _, err := br.Exec(); err != nil {
				br.Close()
				return err
			}
			return br.Close()
		},
	}
	advisory := map[string]int64{"QueryRow": 7301, "Query": 7302, "SendBatch": 7303}
	for name, read := range reads {
		t.Run(name, func(t *testing.T) {
			opts := lock.Options{IdleTimeout: idle}
			pool := pool
			if name == "QueryRow" {
				pool = execPool
			}
			plain := entity.New(pool, itemTable{}, entity.WithLockOptions(opts))
			gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
			one := runBusy(t, ctx, pool, plain, false, itemKey{OwnerID: 1, Name: "li_r3_busy_one_" + name}, idle, advisory[name], read)
			grp := runBusy(t, ctx, pool, gc, true, itemKey{OwnerID: 1, Name: "li_r3_busy_grp_" + name}, idle, advisory[name], read)
			allSucceedAsOneByOne(t, one, grp)
		})
	}
}

// TestGroupCommitServerIdleTimeoutPerMember: IdleTimeout left to the
// server (negative), whose idle_in_transaction_session_timeout is 5 s;
// three calls whose fns each run no SQL and change nothing for 2 s. One
// by one, each transaction sits idle 2 s and commits. Grouped, the leader
// sent its keep-alive before a member's turn only past a twentieth of
// DefaultIdleTimeout (3 s) since the last statement, so the shared
// transaction sat idle through the three fns, 6 s, and the server ended
// it: every call failed.
func TestGroupCommitServerIdleTimeoutPerMember(t *testing.T) {
	t.Parallel()
	// Each fn well within the server's limit, the three together past it.
	const serverIdle, fnTime = 5 * time.Second, 2 * time.Second
	pool, ctx := itemsPool(t, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint(serverIdle.Milliseconds())
	})
	opts := lock.Options{IdleTimeout: -1}
	slow := func(ctx context.Context, tx pgx.Tx, p *item) error {
		time.Sleep(fnTime)
		return nil
	}
	plain := entity.New(pool, itemTable{}, entity.WithLockOptions(opts))
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
	one := oneByOne(t, ctx, plain, itemKey{OwnerID: 1, Name: "li_r3_srvidle_one"}, slow, slow, slow)
	grp := groupedBounded(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r3_srvidle_grp"}, nil, slow, slow, slow)
	allSucceedAsOneByOne(t, one, grp)
}

// TestGroupCommitKeepAliveInAbortedTx: a member's fn runs a
// statement that fails, ignores the error, and runs no statement for a
// while, less than IdleTimeout, then returns nil. One by one, its call
// fails (the transaction was aborted: ErrTxAborted) and the calls before
// and after it commit. Grouped, the leader's keep-alive (an empty SELECT,
// sent once fn has run no statement for half of IdleTimeout) failed in the
// aborted transaction (25P02) and broke the group: every call failed.
func TestGroupCommitKeepAliveInAbortedTx(t *testing.T) {
	t.Parallel()
	const idle = 4 * time.Second
	pool, ctx := groupSetup(t)
	opts := lock.Options{IdleTimeout: idle}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil }
	failed := func(waitKeepAlive bool) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 10
			var pid int32
			if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				return err
			}
			_, _ = tx.Exec(ctx, "SELECT 1/0") // ignored
			// Grouped, wait for the leader's keep-alive (at half of idle);
			// one by one there is none, and fn returns at once.
			for waitKeepAlive {
				var q string
				if err := pool.QueryRow(ctx, "SELECT query FROM pg_stat_activity WHERE pid = $1", pid).Scan(&q); err != nil {
					return err
				}
				if q == "SELECT" {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			return nil
		}
	}
	plain := entity.New(pool, itemTable{}, entity.WithLockOptions(opts))
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
	oneKey := itemKey{OwnerID: 1, Name: "li_r3_aborted_one"}
	grpKey := itemKey{OwnerID: 1, Name: "li_r3_aborted_grp"}
	one := oneByOne(t, ctx, plain, oneKey, add, failed(false), add)
	grp := groupedBounded(t, ctx, gc, grpKey, nil, add, failed(true), add)
	for i := range one {
		if (one[i].err == nil) != (grp[i].err == nil) || errors.Is(one[i].err, entity.ErrTxAborted) != errors.Is(grp[i].err, entity.ErrTxAborted) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i].err)
		}
	}
	oneAmt, _ := itemRow(t, ctx, pool, oneKey)
	grpAmt, _ := itemRow(t, ctx, pool, grpKey)
	if oneAmt != grpAmt {
		t.Errorf("amount: grouped %d, one by one %d", grpAmt, oneAmt)
	}
}

// groupedStalled runs leader, m1, the stalled fn and m3 in a group through repo
// on key: the stalled fn stalls (no statement through tx, ctx ignored)
// until the calls around it have returned, then wakes and runs after. It
// returns each call's outcome; the stalled call's is waited for only once
// it woke. A failing test wakes it before it unwinds.
func groupedStalled(t *testing.T, ctx context.Context, repo itemRepo, key itemKey, leader, m1 itemFn,
	stalled func(ctx context.Context, tx pgx.Tx, p *item, wait func()) error, m3 itemFn,
) []result {
	t.Helper()
	wake := make(chan struct{})
	woken := false
	wakeUp := func() {
		if !woken {
			woken = true
			close(wake)
		}
	}
	defer wakeUp()
	stalledFn := func(ctx context.Context, tx pgx.Tx, p *item) error {
		return stalled(ctx, tx, p, func() { <-wake })
	}
	fns := []itemFn{leader, m1, stalledFn, m3}
	res := make([]result, len(fns))
	dones := make([]chan struct{}, len(fns))
	held, gate := make(chan struct{}), make(chan struct{})
	var once sync.Once
	for i, fn := range fns {
		dones[i] = make(chan struct{})
		if i == 0 {
			inner := fn
			fn = func(ctx context.Context, tx pgx.Tx, p *item) error {
				once.Do(func() { close(held) })
				<-gate
				return inner(ctx, tx, p)
			}
		}
		go func() {
			defer close(dones[i])
			defer func() { res[i].panicked = recover() }()
			res[i].err = repo.With(ctx, key, fn)
		}()
		if i == 0 {
			<-held
		} else {
			waitQueued(t, repo, key, i)
		}
	}
	close(gate)
	for _, i := range []int{0, 1, 3} {
		select {
		case <-dones[i]:
		case <-time.After(time.Minute):
			wakeUp()
			t.Fatalf("call %d has not returned a minute after the group began, while call 2's fn stalls", i)
		}
	}
	wakeUp()
	select {
	case <-dones[2]:
	case <-time.After(time.Minute):
		t.Fatal("the stalled call has not returned a minute after its fn woke")
	}
	return res
}

// TestGroupCommitCutOff: a member's fn stalls (no statement through
// tx for longer than IdleTimeout) and, once woken, ends in various ways;
// what one by one gives is written out: the server would have ended its
// transaction, so nothing of it commits, and the calls around it commit.
func TestGroupCommitCutOff(t *testing.T) {
	t.Parallel()
	const idle = 500 * time.Millisecond
	pool, ctx := groupSetup(t)
	add := func(n int64, entry string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += n
			return ledgerInsert(entry)(ctx, tx, p)
		}
	}
	stallThen := func(then func(ctx context.Context, tx pgx.Tx) error) func(ctx context.Context, tx pgx.Tx, p *item, wait func()) error {
		return func(ctx context.Context, tx pgx.Tx, p *item, wait func()) error {
			p.Amount += 1000
			if err := ledgerInsert("stalled")(ctx, tx, p); err != nil {
				return err
			}
			wait()
			return then(ctx, tx)
		}
	}
	repo := func(opts lock.Options) itemRepo {
		opts.IdleTimeout = idle
		return entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
	}
	n := 0
	key := func() itemKey {
		n++
		_, _ = pool.Exec(ctx, "DELETE FROM ledger")
		return itemKey{OwnerID: 1, Name: fmt.Sprint("li_r3_cut_", n)}
	}
	wantOthers := func(t *testing.T, res []result, k itemKey, amount int64) {
		t.Helper()
		for _, i := range []int{0, 1, 3} {
			if res[i].err != nil || res[i].panicked != nil {
				t.Errorf("call %d: %v (panic %v), want nil as one by one", i, res[i].err, res[i].panicked)
			}
		}
		if got, _ := itemRow(t, ctx, pool, k); got != amount {
			t.Errorf("amount %d, want %d", got, amount)
		}
		if got := ledger(t, ctx, pool); len(got) != 3 {
			t.Errorf("ledger %q, want leader, m1 and m3 only", got)
		}
	}

	t.Run("panic", func(t *testing.T) {
		k := key()
		res := groupedStalled(t, ctx, repo(lock.Options{}), k, add(1, "leader"), add(2, "m1"),
			stallThen(func(context.Context, pgx.Tx) error { panic("woke up and panicked") }), add(4, "m3"))
		wantOthers(t, res, k, 7)
		if res[2].panicked != "woke up and panicked" {
			t.Errorf("stalled call: %v, panic %v; want its panic re-raised, as alone", res[2].err, res[2].panicked)
		}
	})
	t.Run("ownError", func(t *testing.T) {
		k := key()
		own := errors.New("own")
		res := groupedStalled(t, ctx, repo(lock.Options{}), k, add(1, "leader"), add(2, "m1"),
			stallThen(func(context.Context, pgx.Tx) error { return own }), add(4, "m3"))
		wantOthers(t, res, k, 7)
		if !errors.Is(res[2].err, own) {
			t.Errorf("stalled call: %v, want its own error, as alone", res[2].err)
		}
	})
	t.Run("statementAfter", func(t *testing.T) {
		k := key()
		var lateErr error
		res := groupedStalled(t, ctx, repo(lock.Options{}), k, add(1, "leader"), add(2, "m1"),
			stallThen(func(ctx context.Context, tx pgx.Tx) error {
				rows, err := tx.Query(ctx, "SELECT 1")
				if err == nil {
					rows.Close()
				}
				lateErr = err
				b := &pgx.Batch{}
				b.Queue("SELECT 1")
				if err := tx.SendBatch(ctx, b).Close(); !errors.Is(err, lock.ErrIdleTimeout) {
					return fmt.Errorf("batch after the cut-off: %v", err)
				}
				if c := tx.Conn(); c != nil {
					return errors.New("tx.Conn after the cut-off is not nil")
				}
				if _, err := tx.Begin(ctx); !errors.Is(err, lock.ErrIdleTimeout) {
					return fmt.Errorf("Begin after the cut-off: %v", err)
				}
				return nil
			}), add(4, "m3"))
		wantOthers(t, res, k, 7)
		if !errors.Is(lateErr, lock.ErrIdleTimeout) {
			t.Errorf("Query after the cut-off: %v, want lock.ErrIdleTimeout", lateErr)
		}
		if !errors.Is(res[2].err, lock.ErrIdleTimeout) {
			t.Errorf("stalled call: %v, want lock.ErrIdleTimeout", res[2].err)
		}
	})
	t.Run("abortedThenStalled", func(t *testing.T) {
		// A statement of fn's fails, fn ignores it and stalls: the
		// leader's keep-alive is refused in the aborted transaction
		// (harmless), then fn is cut off and its savepoint rolled back.
		k := key()
		res := groupedStalled(t, ctx, repo(lock.Options{}), k, add(1, "leader"), add(2, "m1"),
			func(ctx context.Context, tx pgx.Tx, p *item, wait func()) error {
				p.Amount += 1000
				if err := ledgerInsert("stalled")(ctx, tx, p); err != nil {
					return err
				}
				_, _ = tx.Exec(ctx, "SELECT 1/0")
				wait()
				return nil
			}, add(4, "m3"))
		wantOthers(t, res, k, 7)
		if !errors.Is(res[2].err, lock.ErrIdleTimeout) {
			t.Errorf("stalled call: %v, want lock.ErrIdleTimeout", res[2].err)
		}
	})
	t.Run("rowDeletedBefore", func(t *testing.T) {
		k := key()
		var m3New bool
		res := groupedStalled(t, ctx, repo(lock.Options{}), k, add(1, "leader"),
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				if err := ledgerInsert("m1")(ctx, tx, p); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "DELETE FROM items WHERE id = $1", p.ID)
				return err
			},
			func(ctx context.Context, tx pgx.Tx, p *item, wait func()) error {
				if !p.IsNew() {
					return errors.New("stalled fn: the row deleted before it is not new")
				}
				p.Amount += 1000
				wait()
				return nil
			},
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				m3New = p.IsNew()
				p.Amount += 4
				return ledgerInsert("m3")(ctx, tx, p)
			})
		wantOthers(t, res, k, 4)
		if !m3New {
			t.Error("m3 did not create the row again (IsNew false), as it would one by one")
		}
		if !errors.Is(res[2].err, lock.ErrIdleTimeout) {
			t.Errorf("stalled call: %v, want lock.ErrIdleTimeout", res[2].err)
		}
	})
	t.Run("retry", func(t *testing.T) {
		k := key()
		attempts := 0
		res := groupedStalled(t, ctx, repo(lock.Options{Retry: lock.Retry{Attempts: 2, Backoff: time.Millisecond}}), k, add(1, "leader"), add(2, "m1"),
			func(ctx context.Context, tx pgx.Tx, p *item, wait func()) error {
				attempts++
				p.Amount += 1000
				if attempts == 1 {
					if err := ledgerInsert("stalled")(ctx, tx, p); err != nil {
						return err
					}
					wait()
				}
				return nil
			}, add(4, "m3"))
		for _, i := range []int{0, 1, 2, 3} {
			if res[i].err != nil {
				t.Errorf("call %d: %v, want nil (the stalled call retried once)", i, res[i].err)
			}
		}
		if got, _ := itemRow(t, ctx, pool, k); got != 1007 {
			t.Errorf("amount %d, want 1007: the retried call once", got)
		}
		if got := ledger(t, ctx, pool); len(got) != 3 || attempts != 2 {
			t.Errorf("ledger %q after %d attempts, want leader, m1 and m3, 2 attempts", got, attempts)
		}
	})
}

// TestGroupCommitCutOffRace: a member's fn runs a statement, then
// no statement for about IdleTimeout, then returns, or runs another
// statement: the leader's cut-off races with fn's return or its call
// (run with -race). Whichever wins, a call that returned nil has its
// ledger row committed and one that failed has not, unless its outcome is
// unknown; and nobody hangs.
func TestGroupCommitCutOffRace(t *testing.T) {
	t.Parallel()
	const idle = 40 * time.Millisecond
	pool, _ := groupSetup(t)
	ctx := pgtest.Context(t, 10*time.Minute) // 40 rounds on a busy machine: a bound for a hang only
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(lock.Options{IdleTimeout: idle}))
	cuts := 0
	for round := range 40 {
		_, _ = pool.Exec(ctx, "DELETE FROM ledger")
		key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_r3_race_", round)}
		entry := func(i int) string { return fmt.Sprint(round, "/", i) }
		add := func(i int) itemFn {
			return func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount++
				return ledgerInsert(entry(i))(ctx, tx, p)
			}
		}
		racy := func(i int) itemFn {
			return func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount++
				if err := ledgerInsert(entry(i))(ctx, tx, p); err != nil {
					return err
				}
				time.Sleep(idle - idle/8 + time.Duration(round%8)*idle/32)
				if round%2 == 1 {
					_, err := tx.Exec(ctx, "SELECT 1")
					return err
				}
				return nil
			}
		}
		// Held at PostgreSQL while the calls queue (groupedHeld), not by the
		// leader's fn: a leader idle in its fn for 40 ms would stop
		// gathering before the others queued on a busy machine.
		res := groupedHeld(t, ctx, pool, repo, key, add(0), racy(1), add(2), racy(3), add(4))
		got := ledger(t, ctx, pool)
		for i, r := range res {
			committed := slices.Contains(got, entry(i))
			switch {
			case r.panicked != nil:
				t.Errorf("round %d call %d panicked: %v", round, i, r.panicked)
			case r.err == nil && !committed:
				t.Errorf("round %d call %d returned nil, its row is not committed (ledger %q)", round, i, got)
			case r.err != nil && committed && !errors.Is(r.err, lock.ErrCommitUnknown):
				t.Errorf("round %d call %d failed (%v), its row is committed", round, i, r.err)
			}
			if errors.Is(r.err, lock.ErrIdleTimeout) {
				cuts++
			}
		}
	}
	t.Logf("%d calls ended with lock.ErrIdleTimeout", cuts)
}

// TestGroupCommitTinyIdleTimeout: IdleTimeout 1 ms, so that the
// leader's idle watch fires in the middle of its gathering, members are cut
// off, and the server ends transactions. Whatever happens, a call that
// returned nil has its ledger row committed, one that failed has not
// (unless its outcome is unknown), no call panics and none hangs. Before
// the fix, the watch's stop ran after the leader popped a caller it then
// could not take (its keep-alive failed): requeue found the key gone and
// panicked (nil pointer), and the popped caller waited for its turn for
// good, past its ctx.
func TestGroupCommitTinyIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = time.Millisecond
	pool, _ := groupSetup(t)
	ctx := pgtest.Context(t, 10*time.Minute) // 30 rounds on a busy machine: a bound for a hang only
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(lock.Options{IdleTimeout: idle}))
	for round := range 30 {
		_, _ = pool.Exec(ctx, "DELETE FROM ledger")
		key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_r3_tiny_", round)}
		entry := func(i int) string { return fmt.Sprint(round, "/", i) }
		fn := func(i int) itemFn {
			return func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount++
				if err := ledgerInsert(entry(i))(ctx, tx, p); err != nil {
					return err
				}
				time.Sleep(time.Duration(i%3) * idle / 2)
				if i%2 == 1 {
					rows, err := tx.Query(ctx, "SELECT generate_series(1, 3)")
					if err != nil {
						return err
					}
					time.Sleep(idle)
					rows.Close()
				}
				return nil
			}
		}
		res := groupedHeld(t, ctx, pool, repo, key, fn(0), fn(1), fn(2), fn(3), fn(4), fn(5))
		got := ledger(t, ctx, pool)
		for i, r := range res {
			committed := slices.Contains(got, entry(i))
			switch {
			case r.panicked != nil:
				t.Errorf("round %d call %d panicked: %v", round, i, r.panicked)
			case r.err == nil && !committed:
				t.Errorf("round %d call %d returned nil, its row is not committed (ledger %q)", round, i, got)
			case r.err != nil && committed && !errors.Is(r.err, lock.ErrCommitUnknown):
				t.Errorf("round %d call %d failed (%v), its row is committed", round, i, r.err)
			}
		}
	}
}

// groupedHeld runs fns through repo on key as one group: the key is held at
// PostgreSQL by another session while the first caller waits for it and
// the others queue behind it, then released. It returns each call's
// outcome; a call not back within a minute fails the test.
func groupedHeld(t *testing.T, ctx context.Context, pool *pgxpool.Pool, repo itemRepo, key itemKey, fns ...itemFn) []result {
	t.Helper()
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	id := key.LockKey().ID()
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1::bigint)", id); err != nil {
		t.Fatal(err)
	}
	held := true
	unhold := func() {
		if held {
			held = false
			if _, err := holder.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1::bigint)", id); err != nil {
				t.Error(err)
			}
		}
	}
	defer unhold()
	res := make([]result, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { res[i].panicked = recover() }()
			res[i].err = repo.With(ctx, key, fn)
		}()
		if i == 0 {
			if err := pgtest.AwaitLockWaiters(ctx, pool, 1); err != nil {
				t.Fatal(err)
			}
		} else {
			waitQueued(t, repo, key, i)
		}
	}
	unhold()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a call has not returned a minute after the key was released")
	}
	return res
}

// TestGroupCommitTwoStalled: two members in a row stall (no
// statement through tx, ctx ignored) until every other call returned. One
// by one, the server ends each one's transaction, idle for IdleTimeout,
// and the calls after them run: each stalled call fails with
// lock.ErrIdleTimeout, the others commit, without waiting for the stalled
// fns to wake. Grouped: the same (the first is cut off; the second leads
// the next transaction, where the server ends it).
func TestGroupCommitTwoStalled(t *testing.T) {
	t.Parallel()
	const idle = 500 * time.Millisecond
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(lock.Options{IdleTimeout: idle}))
	key := itemKey{OwnerID: 1, Name: "li_r3_two_stalled"}
	wake := make(chan struct{})
	woken := false
	wakeUp := func() {
		if !woken {
			woken = true
			close(wake)
		}
	}
	defer wakeUp()
	add := func(n int64, entry string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += n
			return ledgerInsert(entry)(ctx, tx, p)
		}
	}
	stalled := func(entry string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 1000
			if err := ledgerInsert(entry)(ctx, tx, p); err != nil {
				return err
			}
			<-wake
			return nil
		}
	}
	fns := []itemFn{add(1, "leader"), add(2, "m1"), stalled("s2"), stalled("s3"), add(4, "m4"), add(8, "m5")}
	res := make([]result, len(fns))
	dones := make([]chan struct{}, len(fns))
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	id := key.LockKey().ID()
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1::bigint)", id); err != nil {
		t.Fatal(err)
	}
	for i, fn := range fns {
		dones[i] = make(chan struct{})
		go func() {
			defer close(dones[i])
			defer func() { res[i].panicked = recover() }()
			res[i].err = repo.With(ctx, key, fn)
		}()
		if i == 0 {
			if err := pgtest.AwaitLockWaiters(ctx, pool, 1); err != nil {
				t.Fatal(err)
			}
		} else {
			waitQueued(t, repo, key, i)
		}
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1::bigint)", id); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 4, 5} {
		select {
		case <-dones[i]:
			if res[i].err != nil {
				t.Errorf("call %d: %v, want nil as one by one", i, res[i].err)
			}
		case <-time.After(time.Minute):
			wakeUp()
			t.Fatalf("call %d has not returned a minute after the key was released, while calls 2 and 3 stall", i)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 15 {
		t.Errorf("amount %d, want 1+2+4+8", amount)
	}
	if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"leader", "m1", "m4", "m5"}) {
		t.Errorf("ledger %q, want the four calls that did not stall", got)
	}
	wakeUp()
	for _, i := range []int{2, 3} {
		select {
		case <-dones[i]:
		case <-time.After(time.Minute):
			t.Fatalf("stalled call %d has not returned a minute after its fn woke", i)
		}
		if !errors.Is(res[i].err, lock.ErrIdleTimeout) {
			t.Errorf("stalled call %d: %v, want lock.ErrIdleTimeout", i, res[i].err)
		}
	}
}

// TestGroupCommitGoroutineKeepsBusy: a member's fn sleeps for
// 3×IdleTimeout while a goroutine of its runs a statement through tx every
// IdleTimeout/5, and waits for it before it returns. The server never sees
// the transaction idle for IdleTimeout: one by one the call commits; so
// must it in a group (the leader counts the goroutine's calls).
func TestGroupCommitGoroutineKeepsBusy(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(lock.Options{IdleTimeout: idle}))
	key := itemKey{OwnerID: 1, Name: "li_r3_goroutine_busy"}
	busy := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount += 10
		errc := make(chan error, 1)
		stop := make(chan struct{})
		go func() {
			for {
				if _, err := tx.Exec(ctx, "SELECT $1::int", 1); err != nil {
					errc <- err
					return
				}
				select {
				case <-stop:
					errc <- nil
					return
				case <-time.After(idle / 5):
				}
			}
		}()
		time.Sleep(3 * idle)
		close(stop)
		if err := <-errc; err != nil {
			return err
		}
		return ledgerInsert("busy")(ctx, tx, p)
	}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil }
	res := groupedHeld(t, ctx, pool, repo, key, add, busy, add)
	for i, r := range res {
		if r.err != nil {
			t.Errorf("call %d: %v, want nil as one by one", i, r.err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 12 {
		t.Errorf("amount %d, want 12", amount)
	}
}

// TestGroupCommitCutOffOwnErrorNotRetried: with lock.Retry, a
// member's fn stalls for 3×IdleTimeout and then returns its own error,
// without a call through tx. One by one, the server ended its transaction
// meanwhile, but nobody read that: the call fails with fn's own error after
// one attempt. Grouped, the cut-off marked fn's own error as a lost
// connection, safe to retry, and lock.Retry ran fn again (its side effects
// outside the database twice).
func TestGroupCommitCutOffOwnErrorNotRetried(t *testing.T) {
	t.Parallel()
	const idle = 300 * time.Millisecond
	pool, ctx := groupSetup(t)
	opts := lock.Options{IdleTimeout: idle, Retry: lock.Retry{Attempts: 3, Backoff: time.Millisecond}}
	own := errors.New("own")
	var attempts atomic.Int32
	fn := func(ctx context.Context, tx pgx.Tx, p *item) error {
		attempts.Add(1)
		if _, err := tx.Exec(ctx, "SELECT $1::int", 1); err != nil {
			return err
		}
		time.Sleep(3 * idle)
		return own
	}
	plain := entity.New(pool, itemTable{}, entity.WithLockOptions(opts))
	oneErr := plain.With(ctx, itemKey{OwnerID: 1, Name: "li_r3_own_one"}, fn)
	oneAttempts := attempts.Swap(0)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
	res := groupedHeld(t, ctx, pool, gc, itemKey{OwnerID: 1, Name: "li_r3_own_grp"}, itemNoop, fn)
	if grpAttempts := attempts.Load(); grpAttempts != oneAttempts || !errors.Is(res[1].err, own) || !errors.Is(oneErr, own) {
		t.Errorf("grouped: %d attempts, %v; one by one: %d attempts, %v", grpAttempts, res[1].err, oneAttempts, oneErr)
	}
}

// TestGroupCommitIdleTimeout: the server ending the group's transaction,
// idle while a member's fn runs no SQL for longer than IdleTimeout, commits
// nothing, and no member is told otherwise; with Retry each call is applied
// exactly once.
func TestGroupCommitIdleTimeout(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	for _, retry := range []int{1, 3} {
		t.Run(fmt.Sprint("attempts=", retry), func(t *testing.T) {
			_, _ = pool.Exec(ctx, "DELETE FROM ledger")
			repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16), entity.WithLockOptions(lock.Options{
				IdleTimeout: 200 * time.Millisecond, Retry: lock.Retry{Attempts: retry, Backoff: time.Millisecond}}))
			key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_gc_idle_", retry)}
			add := func(name string) itemFn {
				return func(ctx context.Context, tx pgx.Tx, p *item) error {
					p.Amount++
					_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
					return err
				}
			}
			var slept atomic.Bool
			res := grouped(t, ctx, repo, key, nil, add("a"), add("b"), func(_ context.Context, _ pgx.Tx, p *item) error {
				if !slept.Swap(true) {
					time.Sleep(time.Second)
				}
				p.Amount++
				return nil
			}, add("d"))
			got := ledger(t, ctx, pool)
			var amount int64
			_ = pool.QueryRow(ctx, "SELECT coalesce(sum(amount), 0) FROM items WHERE name = $1", key.Name).Scan(&amount)
			ok := 0
			for i, r := range res {
				name := string(rune('a' + i))
				if r.err == nil {
					ok++
					if i != 2 && !slices.Contains(got, name) {
						t.Errorf("call %s reported committed, its entry is missing (ledger %v)", name, got)
					}
				} else if i != 2 && slices.Contains(got, name) {
					t.Errorf("call %s failed (%v) but its entry is committed", name, r.err)
				}
			}
			if amount != int64(ok) {
				t.Errorf("amount %d, %d calls reported committed: %v", amount, ok, res)
			}
		})
	}
}

// TestGroupCommitIdleTimeoutThenFail: a member that ran SQL, then outlived
// the idle timeout and failed. One by one, the call before it commits and
// it fails with its own error; so in a group, where the leader cuts it off
// before the server would end the shared transaction.
func TestGroupCommitIdleTimeoutThenFail(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16), entity.WithLockOptions(lock.Options{
		IdleTimeout: time.Second}))
	key := itemKey{OwnerID: 1, Name: "li_gc_idlefail"}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Amount))
		return err
	}
	errB := errors.New("b failed")
	res := grouped(t, ctx, repo, key, nil, add, func(ctx context.Context, tx pgx.Tx, p *item) error {
		if err := add(ctx, tx, p); err != nil {
			return err
		}
		time.Sleep(3 * time.Second) // past IdleTimeout, by more than a busy machine's delays
		return errB
	})
	if res[0].err != nil {
		t.Errorf("call 0: %v, want nil, as one by one", res[0].err)
	}
	if !errors.Is(res[1].err, errB) {
		t.Errorf("call 1: %v, want its own error", res[1].err)
	}
	if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"1"}) {
		t.Errorf("ledger %q, want call 0's row only", got)
	}
}

// TestGroupCommitReentrantOtherCtx: a With for the key from inside fn given
// another ctx than fn's, with no LockTimeout, is freed as without group
// commit: one by one, the server ends the outer transaction, idle for
// IdleTimeout, the inner call runs and commits, and the outer call fails.
// In a group the same: the nested call, when it leads, holds the group
// until the server ends it (a leader's fn is its call's own); as a member,
// the leader cuts it off (see TestGroupCommitCutsOffAStalledFn) and the
// calls before it commit, as one by one.
func TestGroupCommitReentrantOtherCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	for _, leader := range []bool{true, false} {
		t.Run(fmt.Sprint("leader=", leader), func(t *testing.T) {
			repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16),
				entity.WithLockOptions(lock.Options{IdleTimeout: 2 * time.Second}))
			key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_gc_reother_", leader)}
			innerCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			var inner error
			nested := func(_ context.Context, _ pgx.Tx, p *item) error {
				inner = repo.With(innerCtx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
					p.Amount += 100
					return nil
				})
				p.Amount++
				return nil
			}
			inc := func(_ context.Context, _ pgx.Tx, p *item) error { p.Amount++; return nil }
			fns := []itemFn{inc, nested}
			if leader {
				fns = []itemFn{nested, inc}
			}
			res := grouped(t, ctx, repo, key, nil, fns...)
			if inner != nil {
				t.Errorf("inner With: %v, want nil once the server ended the outer transaction", inner)
			}
			// The call that nests fails; the other commits, before it or
			// after it.
			outer, other := res[1:], res[0]
			if leader {
				outer, other = res[:1], res[1]
			}
			if other.err != nil {
				t.Errorf("the call that does not nest: %v", other.err)
			}
			want := int64(101)
			for i, r := range outer {
				if r.err == nil || errors.Is(r.err, lock.ErrCommitUnknown) {
					t.Errorf("call %d: %v, want an error saying nothing was committed", i, r.err)
				}
			}
			if amount, _ := itemRow(t, ctx, pool, key); amount != want {
				t.Errorf("amount %d, want %d", amount, want)
			}
		})
	}
}

// TestGroupCommitIdleTimeoutPerMember: fns that run no SQL and take a while
// each. One by one, each transaction is idle for one fn; in a group, each
// member's fn gets IdleTimeout too, rather than the sum of all of them.
func TestGroupCommitIdleTimeoutPerMember(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	const idle, fnTime = 2500 * time.Millisecond, time.Second
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8),
		entity.WithLockOptions(lock.Options{IdleTimeout: idle}))
	key := itemKey{OwnerID: 1, Name: "li_idle"}
	slow := func(ctx context.Context, tx pgx.Tx, p *item) error {
		time.Sleep(fnTime)
		p.Amount++
		return nil
	}
	res := groupedBounded(t, ctx, repo, key, nil, slow, slow, slow, slow)
	for i, r := range res {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 4 {
		t.Errorf("amount %d, want 4", amount)
	}
}

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
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8),
		entity.WithLockOptions(lock.Options{IdleTimeout: idle}),
		entity.WithHooks(entity.Hooks{Done: func(_ context.Context, ev entity.Event) {
			mu.Lock()
			defer mu.Unlock()
			sizes[ev.GroupSize]++
		}}))
	key := itemKey{OwnerID: 1, Name: "li_stalled"}
	add := func(n int64, entry string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += n
			return ledgerInsert(entry)(ctx, tx, p)
		}
	}
	wake, woke := make(chan struct{}), make(chan struct{})
	var lateErr error
	stalled := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount += 1000
		if err := ledgerInsert("stalled")(ctx, tx, p); err != nil {
			return err
		}
		<-wake // ignores ctx: stuck, as far as anyone can tell
		_, lateErr = tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ('late')")
		close(woke)
		return nil
	}
	fns := []itemFn{add(1, "leader"), add(2, "second"), stalled, add(4, "fourth")}
	errs := make([]chan error, len(fns))
	held, gate := make(chan struct{}), make(chan struct{})
	for i, fn := range fns {
		errs[i] = make(chan error, 1)
		if i == 0 {
			inner := fn
			fn = func(ctx context.Context, tx pgx.Tx, p *item) error {
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
	if amount, _ := itemRow(t, ctx, pool, key); amount != 7 {
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

// allSucceedAsOneByOne fails t unless every call one by one succeeded and
// each grouped call succeeded too.
func allSucceedAsOneByOne(t *testing.T, one, grp []result) {
	t.Helper()
	for i := range one {
		if one[i].err != nil {
			t.Errorf("one by one, call %d: %v", i, one[i].err)
		}
		if (one[i].err == nil) != (grp[i].err == nil) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i].err)
		}
	}
}
