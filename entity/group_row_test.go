package entity_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
)

// The row handed from member to member (deleted, re-created, refused by the
// server, left with unsaved fields, read by a Table that panics), against
// the contract: a group ends exactly as the same calls one by one.

// TestGroupCommitRefusedRowChargedToItsMember: member 1 sets Data to JSON
// that jsonb refuses (22P05); member 2 adds to the amount and writes a
// ledger row. One by one, member 1 fails with the server's error and member
// 2 succeeds; so in a group.
func TestGroupCommitRefusedRowChargedToItsMember(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	key := itemKey{OwnerID: 1, Name: "li_refused"}
	res := groupedBounded(t, ctx, repo, key, nil,
		itemNoop,
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Data = json.RawMessage(`{"note":"\u0000"}`)
			return nil
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 5
			return ledgerInsert("second")(ctx, tx, p)
		},
	)
	if !isCode(res[1].err, "22P05") || errors.Is(res[1].err, entity.ErrGroupRolledBack) {
		t.Errorf("member 1 = %v, want the server's 22P05, not ErrGroupRolledBack", res[1].err)
	}
	if res[0].err != nil || res[2].err != nil {
		t.Errorf("leader %v, member 2 %v; want nil for both", res[0].err, res[2].err)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 5 {
		t.Errorf("amount %d, want 5", amount)
	}
	if got := ledger(t, ctx, pool); len(got) != 1 {
		t.Errorf("ledger %q, want member 2's row", got)
	}
}

// TestGroupCommitMemberDeletesTheRow: add 3, DELETE the row, add 5. One by
// one all succeed and the third call creates the row again; so in a group.
func TestGroupCommitMemberDeletesTheRow(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	key := itemKey{OwnerID: 1, Name: "li_deleted"}
	var created bool
	res := groupedBounded(t, ctx, repo, key, nil,
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount += 3; return nil },
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "DELETE FROM items WHERE id = $1", p.ID)
			return err
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			created = p.IsNew()
			p.Amount += 5
			return nil
		},
	)
	for i, r := range res {
		if r.err != nil || r.panicked != nil {
			t.Errorf("call %d: %v %v", i, r.err, r.panicked)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 5 {
		t.Errorf("amount %d, want 5 (the row created again)", amount)
	}
	if !created {
		t.Error("the third call's p.IsNew() = false, want true: it created the row again")
	}
}

// scanPanics13 is itemTable whose Scan panics on a row of amount 13.
type scanPanics13 struct{ itemTable }

func (t scanPanics13) Scan(row pgx.Row, created bool) (*item, error) {
	p, err := t.itemTable.Scan(row, created)
	if err == nil && p.Amount == 13 {
		panic("scan: amount 13")
	}
	return p, err
}

// TestGroupCommitTablePanicEveryoneReturns: a Table whose Scan panics on
// some data, met when the group reads the row back after a member's SQL:
// every call returns (none hangs), the panicking one with the panic.
func TestGroupCommitTablePanicEveryoneReturns(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New[itemKey, item](pool, scanPanics13{}, entity.WithGroupCommit(8))
	key := itemKey{OwnerID: 1, Name: "li_panic_scan"}
	res := groupedBounded(t, ctx, repo, key, nil,
		itemNoop,
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "UPDATE items SET amount = 13 WHERE id = $1", p.ID)
			return err
		},
		itemNoop,
		itemNoop,
	)
	panics := 0
	for _, r := range res {
		if r.panicked != nil {
			panics++
		}
	}
	if panics == 0 {
		t.Errorf("no call panicked: %+v", res)
	}
}

// boomTable is itemTable whose Save panics on a row whose status is
// "boom", or when the amount went from 0 to 2 or more in one write.
type boomTable struct{ itemTable }

func (b boomTable) Save(before, after *item) (string, []any, error) {
	if after.Status == "boom" || (before.Amount == 0 && after.Amount >= 2) {
		panic("boom")
	}
	return b.itemTable.Save(before, after)
}

// TestGroupCommitSavePanics: a Table whose Save panics fails only the call
// it panics for, which leaves nothing committed, and never leaves a caller
// waiting for an outcome that never comes. Save compares each member's row
// with the one before it, as one by one, never a row several members
// changed.
func TestGroupCommitSavePanics(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, entity.Table[itemKey, item](boomTable{}), entity.WithGroupCommit(16))
	add := func(name string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount = 1
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
			return err
		}
	}
	t.Run("Member", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "li_gc_boom_member"}
		res := grouped(t, ctx, repo, key, nil, add("a"), func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Status = "boom"
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ('b')")
			return err
		}, add("c"))
		if res[0].err != nil || res[2].err != nil || res[1].panicked == nil {
			t.Errorf("results %v, want a and c nil, b panicked", res)
		}
		if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"a", "c"}) {
			t.Errorf("ledger %v, want [a c]: the call whose Save panicked left its SQL", got)
		}
		_, _ = pool.Exec(ctx, "DELETE FROM ledger")
	})
	t.Run("Commit", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "li_gc_boom_commit"}
		inc := func(_ context.Context, _ pgx.Tx, p *item) error { p.Amount++; return nil }
		done := make(chan []result, 1)
		go func() { done <- grouped(t, ctx, repo, key, nil, inc, inc) }()
		select {
		case res := <-done:
			// Each member's row is written with a Save of its own, as one
			// by one: the write from 0 to 2 that panics never happens.
			if res[0].err != nil || res[0].panicked != nil || res[1].err != nil || res[1].panicked != nil {
				t.Errorf("results %v, want both nil, as one by one", res)
			}
			if amount, _ := itemRow(t, ctx, pool, key); amount != 2 {
				t.Errorf("amount %d, want 2", amount)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a member still waits for the outcome of a group whose final write panicked")
		}
	})
}

// TestGroupCommitDeletedRowRecreatedByFailingMember: member 1 deletes the
// row, member 2 fails (its savepoint rolled back), member 3 adds 4. One by
// one, member 3 finds no row, creates it (IsNew) and commits amount 4; so
// in a group: member 2's rollback must not hand member 3 a row that no
// longer exists.
func TestGroupCommitDeletedRowRecreatedByFailingMember(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, itemTable{})
	own := errors.New("member 2 fails")
	var sawNew [2]bool
	fns := func(side int) []itemFn {
		return []itemFn{
			func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount = 1; return nil },
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				_, err := tx.Exec(ctx, "DELETE FROM items WHERE id = $1", p.ID)
				return err
			},
			func(ctx context.Context, tx pgx.Tx, p *item) error { return own },
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				sawNew[side] = p.IsNew()
				p.Amount += 4
				return nil
			},
		}
	}
	one := itemKey{OwnerID: 1, Name: "li_r2_del_one"}
	oneRes := oneByOne(t, ctx, plain, one, fns(0)...)
	key := itemKey{OwnerID: 1, Name: "li_r2_del_grp"}
	grpRes := groupedBounded(t, ctx, gc, key, nil, fns(1)...)
	for i := range oneRes {
		if (oneRes[i].err == nil) != (grpRes[i].err == nil) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grpRes[i].err, oneRes[i].err)
		}
	}
	oneOK, oneAmt := itemExists(t, ctx, pool, one)
	grpOK, grpAmt := itemExists(t, ctx, pool, key)
	if oneOK != grpOK || oneAmt != grpAmt || sawNew[0] != sawNew[1] {
		t.Errorf("final row: grouped exists=%t amount=%d (member 3 saw IsNew %t); one by one exists=%t amount=%d (IsNew %t); member 3 returned %v",
			grpOK, grpAmt, sawNew[1], oneOK, oneAmt, sawNew[0], grpRes[3].err)
	}
}

// TestGroupCommitUnsavedFieldHandedOn: member 1 sets p.UpdatedAt and
// member 2 records the UpdatedAt it is handed: in a group it is handed
// what it is one by one.
func TestGroupCommitUnsavedFieldHandedOn(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, itemTable{})
	fns := func(tag string) []itemFn {
		return []itemFn{
			itemNoop,
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.UpdatedAt = time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC)
				return nil
			},
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				_, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", tag+p.UpdatedAt.Format("2006"))
				return err
			},
		}
	}
	oneByOne(t, ctx, plain, itemKey{OwnerID: 1, Name: "li_r2_upd_one"}, fns("one:")...)
	groupedBounded(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r2_upd_grp"}, nil, fns("grp:")...)
	got := ledger(t, ctx, pool)
	if len(got) != 2 || got[0][4:] != got[1][4:] {
		t.Errorf("ledger %q: member 2 saw a different p.UpdatedAt grouped", got)
	}
}

// TestGroupCommitRowChangedThroughSQL: a member whose fn changes the row
// itself through tx (an UPDATE, as a trigger would) hands the next member
// the row with that change, and the final write keeps it: the group ends
// where the same calls one by one end. Leader and member alike.
func TestGroupCommitRowChangedThroughSQL(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	plain := entity.New(pool, itemTable{})
	bumpInSQL := func(n int) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "UPDATE items SET amount = amount + $1 WHERE id = $2", n, p.ID)
			return err
		}
	}
	inP := func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil }
	both := func(ctx context.Context, tx pgx.Tx, p *item) error {
		if err := bumpInSQL(100)(ctx, tx, p); err != nil {
			return err
		}
		p.Status = "both" // Save writes p whole, as it does for a call of its own
		return nil
	}
	fns := []itemFn{bumpInSQL(1000), inP, bumpInSQL(5), inP, both, inP, bumpInSQL(7)}
	one := itemKey{OwnerID: 1, Name: "li_sql_row_one_by_one"}
	for i, fn := range fns {
		if err := plain.With(ctx, one, fn); err != nil {
			t.Fatalf("one by one, call %d: %v", i, err)
		}
	}
	key := itemKey{OwnerID: 1, Name: "li_sql_row"}
	for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
		if r.err != nil || r.panicked != nil {
			t.Fatalf("call %d: %v, %v", i, r.err, r.panicked)
		}
	}
	wantAmount, wantStatus := itemRow(t, ctx, pool, one)
	if amount, status := itemRow(t, ctx, pool, key); amount != wantAmount || status != wantStatus {
		t.Errorf("grouped: amount %d, status %q; one by one: %d, %q", amount, status, wantAmount, wantStatus)
	}
}
