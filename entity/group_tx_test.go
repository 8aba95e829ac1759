package entity_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// What a member's fn does to the group's shared transaction (commits it,
// rolls back to a savepoint not its own, prepares statements, uses large
// objects, leaves a goroutine on tx), against the same calls one by one.

// TestGroupCommitLargeObjects: a fn that uses tx.LargeObjects commits under
// group commit as it does without it, alone or in a group: the end of its
// large objects must not end the group's transaction.
func TestGroupCommitLargeObjects(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	lo := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		los := tx.LargeObjects()
		if _, err := los.Create(ctx, 0); err != nil {
			return err
		}
		return nil
	}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Amount))
		return err
	}
	t.Run("Alone", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "li_gc_lo_alone"}
		if err := repo.With(ctx, key, lo); err != nil {
			t.Errorf("lone caller using large objects: %v", err)
		}
		if amount, _ := itemRow(t, ctx, pool, key); amount != 1 {
			t.Errorf("amount %d, want 1", amount)
		}
	})
	t.Run("Grouped", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "li_gc_lo_group"}
		res := grouped(t, ctx, repo, key, nil, add, lo, add)
		for i, r := range res {
			if r.err != nil {
				t.Errorf("call %d: %v", i, r.err)
			}
		}
		if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
			t.Errorf("amount %d, want 3", amount)
		}
	})
}

// TestGroupCommitCommitBegin: a member whose fn commits the group's
// transaction with "COMMIT; BEGIN" (the connection stays in a transaction,
// so nothing tells the client) commits what the members before it did. They
// must never be told that nothing of theirs was committed
// (ErrGroupRolledBack), and Retry must not run them again: the outcome, for
// them, is unknown.
func TestGroupCommitCommitBegin(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	add := func(name string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount++
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(name, "/", p.Amount))
			return err
		}
	}
	errC := errors.New("c failed")
	cases := []struct {
		name string
		fns  []itemFn
	}{
		{"ThenFail", []itemFn{add("a"), add("b"), func(ctx context.Context, tx pgx.Tx, p *item) error {
			if _, err := tx.Exec(ctx, "COMMIT; BEGIN"); err != nil {
				return err
			}
			return errC
		}}},
		{"ThenRowsOpen", []itemFn{add("a"), add("b"), func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "COMMIT; BEGIN")
			return err
		}, func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Query(ctx, "SELECT generate_series(1, 100000)")
			return err
		}}},
	}
	for _, retry := range []bool{false, true} {
		for _, c := range cases {
			t.Run(fmt.Sprint(c.name, "/retry=", retry), func(t *testing.T) {
				var opts []entity.Option
				if retry {
					opts = append(opts, entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 3}}))
				}
				repo := entity.New(pool, itemTable{}, append(opts, entity.WithGroupCommit(16))...)
				key := itemKey{OwnerID: 1, Name: fmt.Sprint("li_gc_cb_", c.name, retry)}
				res := grouped(t, ctx, repo, key, nil, c.fns...)
				committed := map[string]int{}
				rows, _ := pool.Query(ctx, "SELECT entry FROM ledger WHERE entry LIKE 'a/%' OR entry LIKE 'b/%'")
				entries, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				_, _ = pool.Exec(ctx, "DELETE FROM ledger")
				for _, e := range entries {
					committed[strings.Split(e, "/")[0]]++
				}
				for i, name := range []string{"a", "b"} {
					if committed[name] > 1 {
						t.Errorf("call %s applied %d times (ledger %v): %v", name, committed[name], entries, res[i].err)
					}
					if committed[name] == 1 && errors.Is(res[i].err, entity.ErrGroupRolledBack) {
						t.Errorf("call %s committed but told ErrGroupRolledBack: %v", name, res[i].err)
					}
					if committed[name] == 1 && res[i].err != nil && !errors.Is(res[i].err, lock.ErrCommitUnknown) {
						t.Errorf("call %s committed, error %v does not match ErrCommitUnknown", name, res[i].err)
					}
				}
			})
		}
	}
}

// TestGroupCommitForeignSavepoint: a member's fn that rolls back to a
// savepoint it did not create (one an earlier member's fn left open) must
// not undo what earlier members did while they are told it committed:
// every call reported a success has its ledger entry and its increment.
func TestGroupCommitForeignSavepoint(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	spThenAdd := func(name string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount++
			if _, err := tx.Exec(ctx, "SAVEPOINT sp1"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
			return err
		}
	}
	rollbackTo := func(name string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount++
			if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name); err != nil {
				return err
			}
			_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT sp1") // not its own
			return nil
		}
	}
	for _, c := range []struct {
		name string
		fns  []itemFn
	}{
		{"Leader", []itemFn{spThenAdd("a"), rollbackTo("b")}},
		{"Member", []itemFn{spThenAdd("a"), spThenAdd("b"), rollbackTo("c")}},
		{"NotLast", []itemFn{spThenAdd("a"), spThenAdd("b"), rollbackTo("c"), spThenAdd("d")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := itemKey{OwnerID: 1, Name: "li_gc_fsp_" + c.name}
			res := grouped(t, ctx, repo, key, nil, c.fns...)
			got := ledger(t, ctx, pool)
			_, _ = pool.Exec(ctx, "DELETE FROM ledger")
			var amount int64
			if err := pool.QueryRow(ctx, "SELECT coalesce(sum(amount), 0) FROM items WHERE owner_id = $1 AND name = $2",
				key.OwnerID, key.Name).Scan(&amount); err != nil {
				t.Fatal(err)
			}
			ok := 0
			for i, r := range res {
				name := string(rune('a' + i))
				if r.err == nil {
					ok++
					if !slices.Contains(got, name) {
						t.Errorf("call %s reported committed, its ledger entry is missing (ledger %v)", name, got)
					}
				}
			}
			if amount != int64(ok) {
				t.Errorf("amount %d, but %d calls reported committed (%v)", amount, ok, res)
			}
		})
	}
}

// TestGroupCommitExecModes: the checks a member's first statement carries
// (the transaction is still the group's, the previous member's savepoint is
// still there) work in every pgx query mode.
func TestGroupCommitExecModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			pool, ctx := itemsPool(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode })
			if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
			add := func(name string) itemFn {
				return func(ctx context.Context, tx pgx.Tx, p *item) error {
					p.Amount++
					_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
					return err
				}
			}
			key := itemKey{OwnerID: 1, Name: "li_gc_modes"}
			res := grouped(t, ctx, repo, key, nil, add("a"), add("b"), add("c"))
			for i, r := range res {
				if r.err != nil {
					t.Errorf("call %d: %v", i, r.err)
				}
			}
			res = grouped(t, ctx, repo, key, nil, add("d"), func(ctx context.Context, tx pgx.Tx, p *item) error {
				_, err := tx.Exec(ctx, "COMMIT; BEGIN")
				return err
			}, add("f"))
			// d's work was committed by that COMMIT; the call that ended
			// the transaction fails alone, and f leads a transaction of its
			// own, as one by one.
			if !errors.Is(res[0].err, lock.ErrCommitUnknown) || !errors.Is(res[1].err, lock.ErrTxEnded) || res[2].err != nil {
				t.Errorf("COMMIT; BEGIN: %v", res)
			}
			_, _ = pool.Exec(ctx, "DELETE FROM ledger WHERE entry = 'd'")
			res = grouped(t, ctx, repo, key, nil, func(ctx context.Context, tx pgx.Tx, p *item) error {
				_, err := tx.Exec(ctx, "SAVEPOINT sp1")
				return err
			}, func(ctx context.Context, tx pgx.Tx, p *item) error {
				_, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT sp1")
				return err
			}, add("g"))
			if !errors.Is(res[0].err, entity.ErrGroupRolledBack) {
				t.Errorf("foreign savepoint: %v", res)
			}
			if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"a", "b", "c", "f"}) {
				t.Errorf("ledger %v, want [a b c f]", got)
			}
			if amount, _ := itemRow(t, ctx, pool, key); amount != 5 { // a, b, c, d (which COMMIT; BEGIN committed) and f
				t.Errorf("amount %d, want 5", amount)
			}
		})
	}
}

// TestGroupCommitReleasedOwnSavepoint: a member whose fn released its own
// savepoint and then failed breaks the transaction, which then commits
// nothing: the others are told so (ErrGroupRolledBack), not
// ErrCommitUnknown.
func TestGroupCommitReleasedOwnSavepoint(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_released"}
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Amount))
		return err
	}
	errB := errors.New("b failed")
	res := grouped(t, ctx, repo, key, nil, add, func(ctx context.Context, tx pgx.Tx, p *item) error {
		if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT paylock_group_2"); err != nil {
			return err
		}
		return errB
	})
	if !errors.Is(res[0].err, entity.ErrGroupRolledBack) || errors.Is(res[0].err, lock.ErrCommitUnknown) {
		t.Errorf("call 0: %v, want ErrGroupRolledBack", res[0].err)
	}
	if got := ledger(t, ctx, pool); len(got) != 0 {
		t.Errorf("ledger %v committed", got)
	}
}

// TestGroupCommitGoexitRacesSavepointGoroutine: member 1 begins a
// savepoint with tx.Begin, leaves a goroutine running statements on it and
// calls runtime.Goexit. Without group commit the goroutine's statements
// fail with pgx.ErrTxClosed once the call ends; so in a group, where the
// rollback of the member's savepoint must not share the connection with
// the goroutine (-race reports it if it does). -short runs the calls one
// by one, for comparison.
func TestGroupCommitGoexitRacesSavepointGoroutine(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	stopped := make(chan error, 1)
	if testing.Short() { // -short: the same calls one by one, for comparison (no race)
		gc = entity.New(pool, itemTable{})
	}
	run := groupedBounded
	if testing.Short() {
		run = func(t *testing.T, ctx context.Context, repo itemRepo, key itemKey, _ []context.Context, fns ...itemFn) []result {
			return oneByOne(t, ctx, repo, key, fns...)
		}
	}
	res := run(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r2_goexit_sp"}, nil,
		itemNoop,
		func(ctx context.Context, tx pgx.Tx, p *item) error {
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
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil },
	)
	<-stopped
	for i, r := range res {
		t.Logf("call %d: %v %v", i, r.err, r.panicked)
	}
}

// TestGroupCommitPreparedByName: a member's fn prepares a statement by name
// with tx.Prepare and executes it by that name: it succeeds or fails in a
// group as it does one by one.
func TestGroupCommitPreparedByName(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, itemTable{})
	byName := func(entry string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			if _, err := tx.Prepare(ctx, "r2stmt", "INSERT INTO ledger (entry) VALUES ($1)"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "r2stmt", entry)
			return err
		}
	}
	one := oneByOne(t, ctx, plain, itemKey{OwnerID: 1, Name: "li_r2_pn_one"}, itemNoop, byName("one"))
	grp := groupedBounded(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r2_pn_grp"}, nil, itemNoop, byName("grp"))
	if (one[1].err == nil) != (grp[1].err == nil) {
		t.Errorf("member 1: grouped %v; one by one %v; ledger %q", grp[1].err, one[1].err, ledger(t, ctx, pool))
	}
}

// TestGroupCommitBadPrepareBreaksGroup: member 2's fn prepares a statement
// the server refuses to parse (tx.Prepare) and returns that error. One by
// one only member 2 fails; so in a group: the refused Prepare must not
// abort the shared transaction and fail the calls around it.
func TestGroupCommitBadPrepareBreaksGroup(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, itemTable{})
	fns := []itemFn{
		ledgerInsert("leader"),
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil },
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Prepare(ctx, "r2bad", "SELEC 1")
			return err
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount += 10; return nil },
	}
	one := oneByOne(t, ctx, plain, itemKey{OwnerID: 1, Name: "li_r2_bp_one"}, fns[1:]...)
	grp := groupedBounded(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r2_bp_grp"}, nil, fns...)
	for i := 1; i < len(fns); i++ {
		if (one[i-1].err == nil) != (grp[i].err == nil) {
			t.Errorf("call %d: grouped %v; one by one %v", i, grp[i].err, one[i-1].err)
		}
	}
	if grp[0].err != nil {
		t.Errorf("leader: grouped %v; one by one it commits", grp[0].err)
	}
}

// TestGroupCommitMemberAfterCommitBeginBlamed: member 1's fn runs
// "COMMIT; BEGIN" and member 2 then writes a ledger row: member 2
// succeeds or fails in a group as it does one by one.
func TestGroupCommitMemberAfterCommitBeginBlamed(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	plain := entity.New(pool, itemTable{})
	fns := func(tag string) []itemFn {
		return []itemFn{
			itemNoop,
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				_, err := tx.Exec(ctx, "COMMIT; BEGIN")
				return err
			},
			ledgerInsert(tag + "member2"),
		}
	}
	one := oneByOne(t, ctx, plain, itemKey{OwnerID: 1, Name: "li_r2_cb_one"}, fns("one:")...)
	grp := groupedBounded(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r2_cb_grp"}, nil, fns("grp:")...)
	if (one[2].err == nil) != (grp[2].err == nil) {
		t.Errorf("member 2: grouped %v (ErrTxEnded: %t); one by one %v", grp[2].err, errors.Is(grp[2].err, lock.ErrTxEnded), one[2].err)
	}
	t.Logf("ledger %q", ledger(t, ctx, pool))
}

// TestGroupCommitGoroutineLeftUsingTx: fn leaves a goroutine that keeps
// running statements through tx after fn returned, on a pool of one
// connection. Those statements fail with pgx.ErrTxClosed and never touch
// the connection the next members use (-race reports it if they do). The
// goroutine starts once the next member's fn does: a statement sent while
// fn returns may run in fn's transaction, and a result it holds open then
// fails fn's call (ErrRowsOpen), with or without group commit.
func TestGroupCommitGoroutineLeftUsingTx(t *testing.T) {
	t.Parallel()
	pool, ctx := itemsPool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(8))
	key := itemKey{OwnerID: 1, Name: "li_stray"}
	var wg sync.WaitGroup
	strayErrs := make(chan error, 4) // two strays a round, two rounds
	stray := func(gate <-chan struct{}) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			if _, err := tx.Exec(ctx, "SELECT $1::int", 1); err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				for i := 0; ; i++ {
					if _, err := tx.Exec(ctx, "SELECT $1::int", i); err != nil {
						strayErrs <- err
						return
					}
					if r, err := tx.Query(ctx, "SELECT $1::int", i); err == nil {
						for r.Next() {
						}
						r.Close()
					}
				}
			}()
			p.Amount++
			return nil
		}
	}
	opens := func(gate chan struct{}, fn itemFn) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			close(gate)
			return fn(ctx, tx, p)
		}
	}
	for range 2 {
		gate1, gate2 := make(chan struct{}), make(chan struct{})
		res := groupedBounded(t, ctx, repo, key, nil, itemNoop, stray(gate1), opens(gate1, ledgerInsert("x"+time.Now().String())), stray(gate2), opens(gate2, itemNoop))
		for i, r := range res {
			if r.err != nil {
				t.Errorf("call %d: %v", i, r.err)
			}
		}
	}
	wg.Wait()
	close(strayErrs)
	for err := range strayErrs {
		if !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("a statement after fn returned: %v, want pgx.ErrTxClosed", err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 4 {
		t.Errorf("amount %d, want 4", amount)
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
