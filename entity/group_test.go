package entity_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// seen is what one fn saw.
type seen struct {
	i       int
	amount  int64 // p.Amount
	inTx    int64 // amount read through tx
	txid    int64
	created bool
}

// TestGroupCommitArrivalOrder: callers queued behind the key's transaction
// run in one transaction, in arrival order, each seeing the row as the
// previous one left it, in p and through tx; each gets an event with the
// group's size.
func TestGroupCommitArrivalOrder(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	var rec recorder
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16), entity.WithHooks(rec.hooks()))
	key := itemKey{OwnerID: 1, Name: "li_gc_order"}
	var mu sync.Mutex
	var log []seen
	fn := func(i int) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			s := seen{i: i, amount: p.Amount, created: p.IsNew()}
			if err := tx.QueryRow(ctx, "SELECT amount, txid_current() FROM items WHERE id = $1", p.ID).Scan(&s.inTx, &s.txid); err != nil {
				return err
			}
			mu.Lock()
			log = append(log, s)
			mu.Unlock()
			p.Amount++
			return nil
		}
	}
	var fns []itemFn
	for i := range 6 {
		fns = append(fns, fn(i))
	}
	for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
		if r.err != nil || r.panicked != nil {
			t.Fatalf("call %d: %v, %v", i, r.err, r.panicked)
		}
	}
	for i, s := range log {
		if s.i != i || s.amount != int64(i) || s.inTx != int64(i) || s.txid != log[0].txid || s.created != (i == 0) {
			t.Errorf("call %d saw %+v; want call %d, amount %d in p and through tx, txid %d, created only for the first", i, s, i, i, log[0].txid)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 6 {
		t.Errorf("amount %d, want 6", amount)
	}
	if len(rec.events) != 6 {
		t.Fatalf("%d events, want 6", len(rec.events))
	}
	for _, ev := range rec.events {
		if ev.GroupSize != 6 || ev.Outcome != entity.OutcomeOK {
			t.Errorf("event %+v: want group size 6, ok", ev)
		}
	}
}

// TestGroupCommitMax: no transaction takes more than max callers.
func TestGroupCommitMax(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(3))
	key := itemKey{OwnerID: 1, Name: "li_gc_max"}
	var mu sync.Mutex
	var order []int
	txids := map[int64]int{}
	var fns []itemFn
	for i := range 8 {
		fns = append(fns, func(ctx context.Context, tx pgx.Tx, p *item) error {
			var txid int64
			if err := tx.QueryRow(ctx, "SELECT txid_current()").Scan(&txid); err != nil {
				return err
			}
			mu.Lock()
			order = append(order, i)
			txids[txid]++
			mu.Unlock()
			p.Amount++
			return nil
		})
	}
	for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
		if r.err != nil {
			t.Fatalf("call %d: %v", i, r.err)
		}
	}
	if !slices.Equal(order, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("order %v", order)
	}
	for txid, n := range txids {
		if n > 3 {
			t.Errorf("transaction %d ran %d callers, max 3", txid, n)
		}
	}
	if len(txids) < 3 {
		t.Errorf("%d transactions for 8 callers, max 3 each", len(txids))
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 8 {
		t.Errorf("amount %d, want 8", amount)
	}
}

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

// TestGroupCommitNoSavepointWithoutSQL: an fn that runs no SQL and leaves
// the row alone takes no savepoint, so more than MaxGroupSQL such callers
// share a transaction; callers with SQL, or whose row is written, are at
// most MaxGroupSQL per transaction.
func TestGroupCommitNoSavepointWithoutSQL(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	const n = entity.MaxGroupSQL + 6
	for _, withSQL := range []bool{false, true} {
		t.Run(fmt.Sprint("SQL=", withSQL), func(t *testing.T) {
			var rec recorder
			repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(200), entity.WithHooks(rec.hooks()))
			key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_gc_nosp_", withSQL)}
			var fns []itemFn
			for range n + 1 {
				fns = append(fns, func(ctx context.Context, tx pgx.Tx, p *item) error {
					if withSQL {
						p.Amount++
						_, err := tx.Exec(ctx, "SELECT 1")
						return err
					}
					return nil
				})
			}
			for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
				if r.err != nil {
					t.Fatalf("call %d: %v", i, r.err)
				}
			}
			largest := 0
			for _, ev := range rec.events {
				largest = max(largest, ev.GroupSize)
			}
			switch {
			case !withSQL && largest != n+1:
				t.Errorf("largest group %d, want all %d callers in one", largest, n+1)
			case withSQL && largest != entity.MaxGroupSQL+1: // the leader takes no savepoint
				t.Errorf("largest group %d, want %d", largest, entity.MaxGroupSQL+1)
			}
			want := int64(0)
			if withSQL {
				want = n + 1
			}
			if amount, _ := itemRow(t, ctx, pool, key); amount != want {
				t.Errorf("amount %d, want %d", amount, want)
			}
		})
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

// TestGroupCommitCtx: a caller whose ctx ends while it waits is dropped with
// ctx.Err(), its fn never run; a caller whose ctx ends before its fn
// returns gets ctx.Err() and nothing of it commits, as a call of its own.
func TestGroupCommitCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_ctx"}
	held, gate := make(chan struct{}), make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		leader <- repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
			close(held)
			<-gate
			p.Amount++
			return nil
		})
	}()
	<-held
	dropCtx, drop := context.WithCancel(ctx)
	dropped := make(chan error, 1)
	var ran atomic.Bool
	go func() {
		dropped <- repo.With(dropCtx, key, func(context.Context, pgx.Tx, *item) error {
			ran.Store(true)
			return nil
		})
	}()
	waitQueued(t, repo, key, 1)
	lateCtx, late := context.WithCancel(ctx)
	lateErr := make(chan error, 1)
	go func() {
		lateErr <- repo.With(lateCtx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
			late() // its own ctx ends before fn returns: a call of its own would not commit
			p.Amount += 10
			return nil
		})
	}()
	waitQueued(t, repo, key, 2)
	drop()
	if err := <-dropped; !errors.Is(err, context.Canceled) {
		t.Errorf("dropped caller: %v, want context.Canceled", err)
	}
	waitQueued(t, repo, key, 1)
	close(gate)
	if err := <-leader; err != nil {
		t.Error(err)
	}
	if err := <-lateErr; !errors.Is(err, context.Canceled) {
		t.Errorf("caller whose ctx ended in its fn: %v, want context.Canceled", err)
	}
	if ran.Load() {
		t.Error("the dropped caller's fn ran")
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 1 {
		t.Errorf("amount %d, want 1 (the leader's)", amount)
	}
}

// TestGroupCommitReentrant: a member's fn calling With for its key with its
// ctx fails with lock.ErrReentrant, as without the option.
func TestGroupCommitReentrant(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_reentrant"}
	var inner [2]error
	nested := func(i int) itemFn {
		return func(ctx context.Context, _ pgx.Tx, p *item) error {
			inner[i] = repo.With(ctx, key, itemNoop)
			p.Amount++
			return nil
		}
	}
	for i, r := range grouped(t, ctx, repo, key, nil, nested(0), nested(1)) {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	for i, err := range inner {
		if !errors.Is(err, lock.ErrReentrant) {
			t.Errorf("nested With in call %d: %v, want ErrReentrant", i, err)
		}
	}
}

// TestGroupCommitProperty: for random groups of calls that succeed, fail or
// panic, with and without SQL, the grouped run leaves the same row and the
// same ledger as running the calls that succeeded one by one, in order,
// without group commit; and each of them saw what it would have seen then.
func TestGroupCommitProperty(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	rng := rand.New(rand.NewPCG(11, uint64(time.Now().UnixNano())))
	plain := entity.New(pool, itemTable{})
	errFn := errors.New("fn failed")
	// op returns call j's fn of kind kind on key; seen gets the amount fn saw.
	op := func(kind, j int, seen *int64) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			*seen = p.Amount
			p.Amount += int64(j + 1)
			var ops []int
			if err := json.Unmarshal(p.Data, &ops); err != nil {
				return fmt.Errorf("data %q: %w", p.Data, err)
			}
			data, err := json.Marshal(append(ops, j))
			if err != nil {
				return err
			}
			p.Data = data
			if kind%2 == 1 { // SQL
				if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprintf("%s/%d", p.Name, j)); err != nil {
					return err
				}
			}
			switch kind {
			case 2, 3:
				return errFn
			case 4, 5:
				panic(errFn)
			case 7:
				_, _ = tx.Exec(ctx, "SELECT 1/0")
			}
			return nil
		}
	}
	for round := range 12 {
		n := 2 + rng.IntN(12)
		repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(2+rng.IntN(n)))
		kinds := make([]int, n)
		for j := range kinds {
			kinds[j] = rng.IntN(8) // 0, 1, 6: ok; 2, 3: error; 4, 5: panic; 7: a failed statement
		}
		grp := itemKey{OwnerID: 1, Name: fmt.Sprintf("g%d", round)}
		ref := itemKey{OwnerID: 1, Name: fmt.Sprintf("r%d", round)}
		if err := repo.With(ctx, grp, func(_ context.Context, _ pgx.Tx, p *item) error {
			p.Data = json.RawMessage(`[]`)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := plain.With(ctx, ref, func(_ context.Context, _ pgx.Tx, p *item) error {
			p.Data = json.RawMessage(`[]`)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		saw := make([]int64, n)
		var fns []itemFn
		for j, kind := range kinds {
			fns = append(fns, op(kind, j, &saw[j]))
		}
		res := grouped(t, ctx, repo, grp, nil, fns...)
		for j, r := range res {
			ok := kinds[j] == 0 || kinds[j] == 1 || kinds[j] == 6
			if ok != (r.err == nil && r.panicked == nil) {
				t.Fatalf("round %d (kinds %v): call %d ended with %v, %v", round, kinds, j, r.err, r.panicked)
			}
			if !ok {
				continue
			}
			var want int64
			if err := plain.With(ctx, ref, func(ctx context.Context, tx pgx.Tx, p *item) error {
				want = p.Amount
				return op(kinds[j], j, new(int64))(ctx, tx, p)
			}); err != nil {
				t.Fatal(err)
			}
			if saw[j] != want {
				t.Errorf("round %d (kinds %v): call %d saw amount %d, one by one %d", round, kinds, j, saw[j], want)
			}
		}
		var gAmount, rAmount int64
		var gData, rData string
		q := "SELECT amount, data::text FROM items WHERE name = $1"
		if err := pool.QueryRow(ctx, q, grp.Name).Scan(&gAmount, &gData); err != nil {
			t.Fatal(err)
		}
		if err := pool.QueryRow(ctx, q, ref.Name).Scan(&rAmount, &rData); err != nil {
			t.Fatal(err)
		}
		if gAmount != rAmount || gData != rData {
			t.Errorf("round %d (kinds %v): grouped left %d %s, one by one %d %s", round, kinds, gAmount, gData, rAmount, rData)
		}
	}
	var gEntries, rEntries []string
	for _, e := range ledger(t, ctx, pool) {
		if e[0] == 'g' {
			gEntries = append(gEntries, e[1:])
		} else {
			rEntries = append(rEntries, e[1:])
		}
	}
	if !slices.Equal(gEntries, rEntries) {
		t.Errorf("ledger grouped %v, one by one %v", gEntries, rEntries)
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

// TestGroupCommitConnsPerKey: however many callers a hot key has, group
// commit takes at most ConnsPerKey of the pool's connections for it.
func TestGroupCommitConnsPerKey(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(4))
	key := itemKey{OwnerID: 1, Name: "li_gc_conns"}
	var most atomic.Int32
	var wg sync.WaitGroup
	for range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
				for n := pool.Stat().AcquiredConns(); n > most.Load() && !most.CompareAndSwap(most.Load(), n); {
				}
				p.Amount++
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if most.Load() > entity.ConnsPerKey {
		t.Errorf("%d connections acquired at once, want at most %d", most.Load(), entity.ConnsPerKey)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 24 {
		t.Errorf("amount %d, want 24", amount)
	}
}

// TestGroupCommitLockTimeout: LockTimeout bounds the wait in the queue, as
// without the option.
func TestGroupCommitLockTimeout(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(4),
		entity.WithLockOptions(lock.Options{LockTimeout: 50 * time.Millisecond}))
	key := itemKey{OwnerID: 1, Name: "li_gc_timeout"}
	held, gate := make(chan struct{}), make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		leader <- repo.With(ctx, key, func(context.Context, pgx.Tx, *item) error {
			close(held)
			<-gate
			return nil
		})
	}()
	<-held
	err := repo.With(ctx, key, itemNoop)
	close(gate)
	if !errors.Is(err, lock.ErrLockTimeout) {
		t.Errorf("queued caller: %v, want ErrLockTimeout", err)
	}
	if err := <-leader; err != nil {
		t.Error(err)
	}
	if n := entity.Queued(repo, key.LockKey()); n != 0 {
		t.Errorf("%d callers left in the queue", n)
	}
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
