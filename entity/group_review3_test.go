package entity_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// Outside review, third round: the leader's cut-off of a member's fn idle
// for IdleTimeout (group_idle.go), against the same calls one by one.

// r3Busy runs, through repo, a leader, a member whose fn starts a
// statement that the server keeps busy (it waits for advisory lock
// advisory, which the test holds) and, while the statement runs, does
// something else than reading its result, and one more member. The test
// holds the lock for 3×idle once the statement waits for it, then lets fn
// read the result. The server never sees the transaction idle: one by one
// the call succeeds (where pgx's call blocks until the result comes, fn
// simply waits in it).
func r3Busy(t *testing.T, ctx context.Context, pool *pgxpool.Pool, repo payRepo, group bool, key payment.Key, idle time.Duration, advisory int64,
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
	busy := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents += 10
		return read(ctx, tx, func() {
			<-resume // not reading the statement's result meanwhile
		})
	}
	add := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	done := make(chan []result, 1)
	go func() { done <- r3Calls(t, ctx, repo, group, key, add, busy, add) }()
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

// r3Calls runs fns as grouped does when repo has group commit, else one by
// one, each after the previous returned.
func r3Calls(t *testing.T, ctx context.Context, repo payRepo, group bool, key payment.Key, fns ...payFn) []result {
	if group {
		return grouped(t, ctx, repo, key, nil, fns...)
	}
	return r2OneByOne(t, ctx, repo, key, fns...)
}

// TestGroupCommitReview3BusyStatementNotCutOff: a member's fn whose
// statement runs on the server for longer than IdleTimeout while fn does
// something else than reading its result (a QueryRow not yet scanned,
// Rows not yet read, a batch not yet read). One by one the transaction is
// never idle, and the call succeeds. Grouped, the leader saw no call
// through tx in progress for IdleTimeout and cut the fn off: it failed
// with lock.ErrIdleTimeout, though the server was busy with its statement.
func TestGroupCommitReview3BusyStatementNotCutOff(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	pool, ctx := groupSetup(t)
	execPool, _ := paySetup(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec })
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
			plain := entity.New(pool, payment.Table{}, entity.WithLockOptions(opts))
			gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
			one := r3Busy(t, ctx, pool, plain, false, payment.Key{ServiceID: 1, LineItemID: "li_r3_busy_one_" + name}, idle, advisory[name], read)
			grp := r3Busy(t, ctx, pool, gc, true, payment.Key{ServiceID: 1, LineItemID: "li_r3_busy_grp_" + name}, idle, advisory[name], read)
			for i := range one {
				if one[i].err != nil {
					t.Errorf("one by one, call %d: %v", i, one[i].err)
				}
				if (one[i].err == nil) != (grp[i].err == nil) {
					t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i].err)
				}
			}
		})
	}
}

// TestGroupCommitReview3ServerIdleTimeoutPerMember: IdleTimeout left to the
// server (negative), whose idle_in_transaction_session_timeout is 2 s;
// three calls whose fns each run no SQL and change nothing for 1.2 s. One
// by one, each transaction sits idle 1.2 s and commits. Grouped, the leader
// sent its keep-alive before a member's turn only past a twentieth of
// DefaultIdleTimeout (3 s) since the last statement, so the shared
// transaction sat idle through the leader's fn and the first member's,
// 2.4 s, and the server ended it: every call failed.
func TestGroupCommitReview3ServerIdleTimeoutPerMember(t *testing.T) {
	t.Parallel()
	const serverIdle, fnTime = 2 * time.Second, 1200 * time.Millisecond
	pool, ctx := paySetup(t, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint(serverIdle.Milliseconds())
	})
	opts := lock.Options{IdleTimeout: -1}
	slow := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		time.Sleep(fnTime)
		return nil
	}
	plain := entity.New(pool, payment.Table{}, entity.WithLockOptions(opts))
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
	one := r2OneByOne(t, ctx, plain, payment.Key{ServiceID: 1, LineItemID: "li_r3_srvidle_one"}, slow, slow, slow)
	grp := groupedBounded(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r3_srvidle_grp"}, nil, slow, slow, slow)
	for i := range one {
		if one[i].err != nil {
			t.Errorf("one by one, call %d: %v", i, one[i].err)
		}
		if (one[i].err == nil) != (grp[i].err == nil) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i].err)
		}
	}
}

// TestGroupCommitReview3KeepAliveInAbortedTx: a member's fn runs a
// statement that fails, ignores the error, and runs no statement for a
// while, less than IdleTimeout, then returns nil. One by one, its call
// fails (the transaction was aborted: ErrTxAborted) and the calls before
// and after it commit. Grouped, the leader's keep-alive (an empty SELECT,
// sent once fn has run no statement for 3/4 of IdleTimeout) failed in the
// aborted transaction (25P02) and broke the group: every call failed.
func TestGroupCommitReview3KeepAliveInAbortedTx(t *testing.T) {
	t.Parallel()
	const idle = 4 * time.Second
	pool, ctx := groupSetup(t)
	opts := lock.Options{IdleTimeout: idle}
	add := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	failed := func(waitKeepAlive bool) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents += 10
			var pid int32
			if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				return err
			}
			_, _ = tx.Exec(ctx, "SELECT 1/0") // ignored
			// Grouped, wait for the leader's keep-alive (at 3/4 of idle);
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
	plain := entity.New(pool, payment.Table{}, entity.WithLockOptions(opts))
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8), entity.WithLockOptions(opts))
	oneKey := payment.Key{ServiceID: 1, LineItemID: "li_r3_aborted_one"}
	grpKey := payment.Key{ServiceID: 1, LineItemID: "li_r3_aborted_grp"}
	one := r2OneByOne(t, ctx, plain, oneKey, add, failed(false), add)
	grp := groupedBounded(t, ctx, gc, grpKey, nil, add, failed(true), add)
	for i := range one {
		if (one[i].err == nil) != (grp[i].err == nil) || errors.Is(one[i].err, entity.ErrTxAborted) != errors.Is(grp[i].err, entity.ErrTxAborted) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i].err)
		}
	}
	oneAmt, _ := payRow(t, ctx, pool, oneKey)
	grpAmt, _ := payRow(t, ctx, pool, grpKey)
	if oneAmt != grpAmt {
		t.Errorf("amount: grouped %d, one by one %d", grpAmt, oneAmt)
	}
}
