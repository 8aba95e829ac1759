package entity_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// A member that fails (an error, a panic, a broken transaction, a tx kept
// past its fn) undoes only its own part; a failed COMMIT or a lost
// connection reaches every member it concerns, as one by one.

// TestGroupCommitFailureIsolation: a member's error or panic undoes only its
// own changes, row and SQL; its error comes back unchanged, its panic is
// re-raised on its goroutine; the others commit.
func TestGroupCommitFailureIsolation(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_isolation"}
	errB, errF := errors.New("b failed"), errors.New("f failed")
	entry := func(ctx context.Context, tx pgx.Tx, e string) error {
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", e)
		return err
	}
	res := grouped(t, ctx, repo, key, nil,
		func(ctx context.Context, tx pgx.Tx, p *item) error { // a: ok
			p.Amount++
			return entry(ctx, tx, "a")
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // b: error after SQL
			p.Amount += 100
			if err := entry(ctx, tx, "b"); err != nil {
				return err
			}
			return errB
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // c: panic after SQL
			p.Amount += 1000
			if err := entry(ctx, tx, "c"); err != nil {
				return err
			}
			panic("c")
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // d: ok, sees a's amount
			if p.Amount != 1 {
				return fmt.Errorf("d saw amount %d, want 1", p.Amount)
			}
			p.Amount++
			return entry(ctx, tx, "d")
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // e: failed statement, nil
			p.Amount += 10000
			_ = entry(ctx, tx, "e")
			_, _ = tx.Exec(ctx, "SELECT 1/0")
			return nil
		},
		func(_ context.Context, _ pgx.Tx, p *item) error { // f: error, no SQL
			p.Amount += 5
			p.Status = "f"
			return errF
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // g: ok, no SQL
			if p.Amount != 2 || p.Status == "f" {
				return fmt.Errorf("g saw amount %d, status %q; want 2 and f's change undone", p.Amount, p.Status)
			}
			p.Amount++
			return nil
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // h: fn changes the key: Save refuses
			p.ID = -1
			return entry(ctx, tx, "h")
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { // i: ok, reads what g left
			var inTx int64
			if err := tx.QueryRow(ctx, "SELECT amount FROM items WHERE id = $1", p.ID).Scan(&inTx); err != nil {
				return err
			}
			if inTx != 3 || p.Amount != 3 {
				return fmt.Errorf("i saw %d in tx and %d in p, want 3", inTx, p.Amount)
			}
			p.Amount++
			return entry(ctx, tx, "i")
		},
	)
	want := []struct {
		err   error
		panic any
	}{{nil, nil}, {errB, nil}, {nil, "c"}, {nil, nil}, {entity.ErrTxAborted, nil}, {errF, nil}, {nil, nil}, {errItemKeyChanged, nil}, {nil, nil}}
	for i, r := range res {
		w := want[i]
		switch {
		case w.panic != nil:
			if r.panicked != w.panic {
				t.Errorf("call %c: panicked with %v, err %v; want panic %v", 'a'+i, r.panicked, r.err, w.panic)
			}
		case w.err == errB || w.err == errF:
			if r.err != w.err {
				t.Errorf("call %c: %v, want its own error unchanged", 'a'+i, r.err)
			}
		case !errors.Is(r.err, w.err) || (w.err == nil && r.err != nil) || r.panicked != nil:
			t.Errorf("call %c: %v, %v; want %v", 'a'+i, r.err, r.panicked, w.err)
		}
	}
	if amount, status := itemRow(t, ctx, pool, key); amount != 4 || status == "f" {
		t.Errorf("amount %d, status %q; want 4 (a, d, g, i)", amount, status)
	}
	if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"a", "d", "i"}) {
		t.Errorf("ledger %v, want [a d i]", got)
	}
}

// TestGroupCommitLeaderFails: the first caller's fn runs without a savepoint,
// as a call of its own: when it fails or panics after SQL, its transaction
// rolls back with nothing of it kept, and the callers queued behind it run
// in the next one.
func TestGroupCommitLeaderFails(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	errLeader := errors.New("leader failed")
	for i, fail := range []func() error{func() error { return errLeader }, func() error { panic(errLeader) }} {
		key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_gc_leader_", i)}
		add := func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount++
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(i, "/", p.Amount))
			return err
		}
		res := grouped(t, ctx, repo, key, nil, func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 100
			if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(i, "/leader")); err != nil {
				return err
			}
			return fail()
		}, add, add)
		if r := res[0]; r.err != errLeader && r.panicked != errLeader {
			t.Errorf("leader %d: %v, %v", i, r.err, r.panicked)
		}
		for j, r := range res[1:] {
			if r.err != nil || r.panicked != nil {
				t.Errorf("call %d after leader %d: %v, %v", j+1, i, r.err, r.panicked)
			}
		}
		if amount, _ := itemRow(t, ctx, pool, key); amount != 2 {
			t.Errorf("amount %d, want 2", amount)
		}
	}
	if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"0/1", "0/2", "1/1", "1/2"}) {
		t.Errorf("ledger %v, want [0/1 0/2 1/1 1/2]", got)
	}
}

// TestGroupCommitMemberBreaksTransaction: a member that leaves a result
// open gets ErrRowsOpen and nothing of it commits, as a call of its own;
// the result is closed, and the others go on. A member that ends the transaction with COMMIT in SQL gets
// ErrTxEnded, and the members before it, whose work that COMMIT committed,
// get ErrCommitUnknown, never a success nor a retry.
func TestGroupCommitMemberBreaksTransaction(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Name, "/", p.Amount))
		return err
	}
	t.Run("RowsOpen", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "rows"}
		res := grouped(t, ctx, repo, key, nil, add, add, func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Query(ctx, "SELECT generate_series(1, 100000)")
			return err
		}, add)
		for i, want := range []error{nil, nil, lock.ErrRowsOpen, nil} {
			if !errors.Is(res[i].err, want) || (want == nil && res[i].err != nil) {
				t.Errorf("call %d: %v, want %v", i, res[i].err, want)
			}
			if want == entity.ErrGroupRolledBack && errors.Is(res[i].err, lock.ErrCommitUnknown) {
				t.Errorf("call %d: %v matches ErrCommitUnknown", i, res[i].err)
			}
		}
		if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"rows/1", "rows/2", "rows/3"}) {
			t.Errorf("ledger %v, want [rows/1 rows/2 rows/3]", got)
		}
	})
	t.Run("TxEnded", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "ended"}
		res := grouped(t, ctx, repo, key, nil, add, add, func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "COMMIT")
			return err
		})
		for i, want := range []error{lock.ErrCommitUnknown, lock.ErrCommitUnknown, lock.ErrTxEnded} {
			if !errors.Is(res[i].err, want) {
				t.Errorf("call %d: %v, want %v", i, res[i].err, want)
			}
		}
	})
}

// TestGroupCommitLeakedTx: a member's tx, kept past its fn, fails with
// pgx.ErrTxClosed, also while a later member of the group runs, and neither
// writes nor breaks the group.
func TestGroupCommitLeakedTx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_leak"}
	var leaked [2]pgx.Tx
	var inGroup [2]error
	keep := func(i int) itemFn {
		return func(_ context.Context, tx pgx.Tx, p *item) error {
			leaked[i] = tx
			p.Amount++
			return nil
		}
	}
	res := grouped(t, ctx, repo, key, nil, keep(0), keep(1), func(ctx context.Context, tx pgx.Tx, p *item) error {
		for i, l := range leaked {
			_, inGroup[i] = l.Exec(ctx, "INSERT INTO ledger VALUES ('leaked')")
		}
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ('own')")
		return err
	})
	for i, r := range res {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	for i, err := range inGroup {
		if !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("call %d's tx used by a later member: %v, want pgx.ErrTxClosed", i, err)
		}
		if _, err := leaked[i].Exec(ctx, "INSERT INTO ledger VALUES ('after')"); !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("call %d's tx used after the group: %v, want pgx.ErrTxClosed", i, err)
		}
	}
	if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"own"}) {
		t.Errorf("ledger %v, want [own]", got)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 3", amount)
	}
}

// TestGroupCommitCommitFails: when COMMIT fails, every member whose fn
// succeeded gets the error, which matches what it would without the option,
// and nothing is committed.
func TestGroupCommitCommitFails(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	if _, err := pool.Exec(ctx, `
CREATE FUNCTION refuse_big() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	-- At COMMIT only: a group checks each member's deferred constraints at its end too.
	IF NEW.amount > 100 AND current_query() = 'COMMIT' THEN
		RAISE EXCEPTION 'too big' USING ERRCODE = 'P0042';
	END IF;
	RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER refuse_big AFTER UPDATE ON items DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION refuse_big()`); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_commitfail"}
	if err := repo.With(ctx, key, itemNoop); err != nil {
		t.Fatal(err)
	}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount += 40
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Amount))
		return err
	}
	errOwn := errors.New("own")
	res := grouped(t, ctx, repo, key, nil, add, add,
		func(context.Context, pgx.Tx, *item) error { return errOwn }, add)
	for i, r := range res {
		var pgErr *pgconn.PgError
		switch {
		case i == 2:
			if r.err != errOwn {
				t.Errorf("failed member got %v, want its own error", r.err)
			}
		case !errors.As(r.err, &pgErr) || pgErr.Code != "P0042":
			t.Errorf("call %d: %v; want the commit's error", i, r.err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 0 {
		t.Errorf("amount %d committed, want 0", amount)
	}
	if got := ledger(t, ctx, pool); len(got) != 0 {
		t.Errorf("ledger %v committed", got)
	}
}

// TestGroupCommitRetry: a member that loses the connection rolls the group
// back before COMMIT; with Retry every member's call runs again, and each
// is applied exactly once.
func TestGroupCommitRetry(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16),
		entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 3, Backoff: time.Millisecond}}))
	key := itemKey{OwnerID: 1, Name: "li_gc_retry"}
	var killed atomic.Bool
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Amount))
		return err
	}
	res := grouped(t, ctx, repo, key, nil, add, add,
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			if !killed.Swap(true) {
				_, _ = tx.Exec(ctx, "SELECT pg_terminate_backend(pg_backend_pid())")
				return nil
			}
			return add(ctx, tx, p)
		}, add)
	for i, r := range res {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 4 {
		t.Errorf("amount %d, want 4", amount)
	}
	if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"1", "2", "3", "4"}) {
		t.Errorf("ledger %v, want [1 2 3 4]", got)
	}
}
