package entity_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/payment"
)

// r2OneByOne runs fns one by one through a Repository without group commit
// on key, and returns each call's error.
func r2OneByOne(t *testing.T, ctx context.Context, repo payRepo, key payment.Key, fns ...payFn) []result {
	t.Helper()
	res := make([]result, len(fns))
	for i, fn := range fns {
		func() {
			defer func() { res[i].panicked = recover() }()
			res[i].err = repo.With(ctx, key, fn)
		}()
	}
	return res
}

func r2Exists(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key payment.Key) (bool, int64) {
	t.Helper()
	var n, amount int64
	err := pool.QueryRow(ctx, "SELECT count(*), coalesce(sum(amount_cents), 0) FROM payments WHERE service_id = $1 AND line_item_id = $2",
		key.ServiceID, key.LineItemID).Scan(&n, &amount)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0, amount
}

// TestGroupCommitReviewDeletedRowRecreatedByFailingMember: member 1 deletes the row,
// member 2 (which recreates it in its savepoint) fails, member 3 adds 4.
// One by one: member 3 creates the row (IsNew) and commits amount 4.
// Grouped: member 2's ROLLBACK TO undoes the re-insert, but g.gone stays
// false, so member 3 gets a row that no longer exists; its UPDATE hits no
// row; it returns nil and nothing of it is committed.
func TestGroupCommitReviewDeletedRowRecreatedByFailingMember(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, payment.Table{})
	own := errors.New("member 2 fails")
	var sawNew [2]bool
	fns := func(side int) []payFn {
		return []payFn{
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents = 1; return nil },
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				_, err := tx.Exec(ctx, "DELETE FROM payments WHERE id = $1", p.ID)
				return err
			},
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { return own },
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				sawNew[side] = p.IsNew()
				p.AmountCents += 4
				return nil
			},
		}
	}
	one := payment.Key{ServiceID: 1, LineItemID: "li_r2_del_one"}
	oneRes := r2OneByOne(t, ctx, plain, one, fns(0)...)
	key := payment.Key{ServiceID: 1, LineItemID: "li_r2_del_grp"}
	grpRes := groupedBounded(t, ctx, gc, key, nil, fns(1)...)
	for i := range oneRes {
		if (oneRes[i].err == nil) != (grpRes[i].err == nil) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grpRes[i].err, oneRes[i].err)
		}
	}
	oneOK, oneAmt := r2Exists(t, ctx, pool, one)
	grpOK, grpAmt := r2Exists(t, ctx, pool, key)
	if oneOK != grpOK || oneAmt != grpAmt || sawNew[0] != sawNew[1] {
		t.Errorf("final row: grouped exists=%t amount=%d (member 3 saw IsNew %t); one by one exists=%t amount=%d (IsNew %t); member 3 returned %v",
			grpOK, grpAmt, sawNew[1], oneOK, oneAmt, sawNew[0], grpRes[3].err)
	}
}

// TestGroupCommitReviewSetLocalLeaksIntoNextMember: member 1 sets a transaction-local
// setting (set_config(..., true), i.e. SET LOCAL, as an app does for RLS or
// audit triggers); member 2 records the setting it runs under. One by one,
// member 2 runs in a transaction of its own and sees none. Grouped, the
// setting outlives member 1's released savepoint and member 2 runs as
// member 1.
func TestGroupCommitReviewUnsavedFieldHandedOn(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, payment.Table{})
	fns := func(tag string) []payFn {
		return []payFn{
			payNoop,
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				p.UpdatedAt = time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC)
				return nil
			},
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				_, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", tag+p.UpdatedAt.Format("2006"))
				return err
			},
		}
	}
	r2OneByOne(t, ctx, plain, payment.Key{ServiceID: 1, LineItemID: "li_r2_upd_one"}, fns("one:")...)
	groupedBounded(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r2_upd_grp"}, nil, fns("grp:")...)
	got := ledger(t, ctx, pool)
	if len(got) != 2 || got[0][4:] != got[1][4:] {
		t.Errorf("ledger %q: member 2 saw a different p.UpdatedAt grouped", got)
	}
}

// TestGroupCommitReviewGoexitRacesSavepointGoroutine: member 1 begins a savepoint
// with tx.Begin, leaves a goroutine running statements on it, runs SQL and
// calls runtime.Goexit. Without group commit the Managed tx is closed (End)
// before the rollback, so the goroutine gets pgx.ErrTxClosed. Grouped,
// step's Goexit path rolls back to the member's savepoint while tx.m is
// still open: the goroutine and the group use the connection at once.
func TestGroupCommitReviewGoexitRacesSavepointGoroutine(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	stopped := make(chan error, 1)
	if testing.Short() { // -short: the same calls one by one, for comparison (no race)
		gc = entity.New(pool, payment.Table{})
	}
	run := groupedBounded
	if testing.Short() {
		run = func(t *testing.T, ctx context.Context, repo payRepo, key payment.Key, _ []context.Context, fns ...payFn) []result {
			res := make([]result, len(fns))
			for i, fn := range fns {
				done := make(chan struct{})
				go func() {
					defer close(done)
					defer func() { res[i].panicked = recover() }()
					res[i].err = repo.With(ctx, key, fn)
				}()
				<-done
			}
			return res
		}
	}
	res := run(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r2_goexit_sp"}, nil,
		payNoop,
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			sp, err := tx.Begin(ctx)
			if err != nil {
				return err
			}
			running := make(chan struct{})
			go func() {
				once := false
				for {
					_, err := sp.Exec(context.Background(), "SELECT 1")
					if !once {
						once = true
						close(running)
					}
					if errors.Is(err, pgx.ErrTxClosed) {
						stopped <- nil
						return
					}
				}
			}()
			<-running
			runtime.Goexit()
			return nil
		},
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil },
	)
	<-stopped
	for i, r := range res {
		t.Logf("call %d: %v %v", i, r.err, r.panicked)
	}
}

// TestGroupCommitReviewSettleIgnoresCtx: a trigger makes the write of status 'slow'
// take 3 s. Member 1 sets that status with a ctx of 1 s. One by one, the
// write goes with COMMIT under ctx: the call is back at its deadline with
// an error, nothing committed. Grouped, settle writes it under
// context.WithoutCancel(m.ctx): the call waits the whole 3 s past its ctx
// and its write commits.
func TestGroupCommitReviewPreparedByName(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, payment.Table{})
	byName := func(entry string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			if _, err := tx.Prepare(ctx, "r2stmt", "INSERT INTO ledger (entry) VALUES ($1)"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "r2stmt", entry)
			return err
		}
	}
	one := r2OneByOne(t, ctx, plain, payment.Key{ServiceID: 1, LineItemID: "li_r2_pn_one"}, payNoop, byName("one"))
	grp := groupedBounded(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r2_pn_grp"}, nil, payNoop, byName("grp"))
	if (one[1].err == nil) != (grp[1].err == nil) {
		t.Errorf("member 1: grouped %v; one by one %v; ledger %q", grp[1].err, one[1].err, ledger(t, ctx, pool))
	}
}

// TestGroupCommitReviewManyMembersOneConn: 70 members, each inserting a ledger row,
// behind a leader, on a pool of one connection, max 100: more than
// MaxGroupSQL. Each must succeed, as one by one.
func TestGroupCommitReviewManyMembersOneConn(t *testing.T) {
	t.Parallel()
	pool, ctx := paySetup(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(100))
	fns := []payFn{payNoop}
	for i := range 70 {
		fns = append(fns, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents++
			_, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", fmt.Sprint(i))
			return err
		})
	}
	res := groupedBounded(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r2_many"}, nil, fns...)
	for i, r := range res {
		if r.err != nil || r.panicked != nil {
			t.Errorf("call %d: %v %v", i, r.err, r.panicked)
		}
	}
	if amount, _ := payRow(t, ctx, pool, payment.Key{ServiceID: 1, LineItemID: "li_r2_many"}); amount != 70 {
		t.Errorf("amount %d, want 70", amount)
	}
	if n := len(ledger(t, ctx, pool)); n != 70 {
		t.Errorf("ledger %d rows, want 70", n)
	}
}

// TestGroupCommitReviewBadPrepareBreaksGroup: member 2's fn prepares a statement the
// server refuses to parse (tx.Prepare) and returns that error. One by one
// only member 2 fails. Grouped, memberTx.Prepare runs outside member 2's
// savepoint (start is not called): the transaction aborts, and members 0
// and 1, whose fns succeeded, and member 3 fail too.
func TestGroupCommitReviewBadPrepareBreaksGroup(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, payment.Table{})
	fns := []payFn{
		ledgerInsert("leader"),
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil },
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			_, err := tx.Prepare(ctx, "r2bad", "SELEC 1")
			return err
		},
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents += 10; return nil },
	}
	one := r2OneByOne(t, ctx, plain, payment.Key{ServiceID: 1, LineItemID: "li_r2_bp_one"}, fns[1:]...)
	grp := groupedBounded(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r2_bp_grp"}, nil, fns...)
	for i := 1; i < len(fns); i++ {
		if (one[i-1].err == nil) != (grp[i].err == nil) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i-1].err)
		}
	}
	if grp[0].err != nil {
		t.Errorf("leader: grouped %v; one by one it commits", grp[0].err)
	}
}

// TestGroupCommitReviewLoneCallerRowsConn: "A lone caller runs exactly as without the
// option." Without it, Rows from tx.Query report their connection
// (pgx.Rows.Conn); with group commit, a lone caller's Rows return nil.
func TestGroupCommitReviewLoneCallerRowsConn(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	check := func(repo payRepo, key payment.Key) error {
		return repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			rows, err := tx.Query(ctx, "SELECT 1")
			if err != nil {
				return err
			}
			defer rows.Close()
			if rows.Conn() == nil {
				return errors.New("rows.Conn() is nil")
			}
			return nil
		})
	}
	oneErr := check(entity.New(pool, payment.Table{}), payment.Key{ServiceID: 1, LineItemID: "li_r2_rc_one"})
	grpErr := check(entity.New(pool, payment.Table{}, entity.WithGroupCommit(8)), payment.Key{ServiceID: 1, LineItemID: "li_r2_rc_grp"})
	if (oneErr == nil) != (grpErr == nil) {
		t.Errorf("lone caller: with group commit %v; without %v", grpErr, oneErr)
	}
}

// TestGroupCommitReviewRollbackIntoLeadersSavepoint: the leader's fn leaves a SQL
// savepoint s open (legal: COMMIT commits it); member 2 runs ROLLBACK TO
// SAVEPOINT s without having set one. One by one member 2 fails (3B001,
// no such savepoint) and the others commit. Grouped, the leader runs
// without a savepoint of the group's, so member 2 rolls back into what the
// leader and member 1 did: every call fails, nothing is committed
// (DESIGN.md: "no fn can roll back into what a member before it did").
func TestGroupCommitReviewMemberAfterCommitBeginBlamed(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, payment.Table{})
	fns := func(tag string) []payFn {
		return []payFn{
			payNoop,
			func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				_, err := tx.Exec(ctx, "COMMIT; BEGIN")
				return err
			},
			ledgerInsert(tag + "member2"),
		}
	}
	one := r2OneByOne(t, ctx, plain, payment.Key{ServiceID: 1, LineItemID: "li_r2_cb_one"}, fns("one:")...)
	grp := groupedBounded(t, ctx, gc, payment.Key{ServiceID: 1, LineItemID: "li_r2_cb_grp"}, nil, fns("grp:")...)
	if (one[2].err == nil) != (grp[2].err == nil) {
		t.Errorf("member 2: grouped %v (ErrTxEnded: %t); one by one %v", grp[2].err, errors.Is(grp[2].err, entity.ErrTxEnded), one[2].err)
	}
	t.Logf("ledger %q", ledger(t, ctx, pool))
}
