package entity_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// TestGroupCommitLargeObjects: a fn that uses tx.LargeObjects commits under
// group commit as it does without it, alone or in a group: the end of its
// large objects must not end the group's transaction.
func TestGroupCommitLargeObjects(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
	lo := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		los := tx.LargeObjects()
		if _, err := los.Create(ctx, 0); err != nil {
			return err
		}
		return nil
	}
	add := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.AmountCents))
		return err
	}
	t.Run("Alone", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_gc_lo_alone"}
		if err := repo.With(ctx, key, lo); err != nil {
			t.Errorf("lone caller using large objects: %v", err)
		}
		if amount, _ := payRow(t, ctx, pool, key); amount != 1 {
			t.Errorf("amount %d, want 1", amount)
		}
	})
	t.Run("Grouped", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_gc_lo_group"}
		res := grouped(t, ctx, repo, key, nil, add, lo, add)
		for i, r := range res {
			if r.err != nil {
				t.Errorf("call %d: %v", i, r.err)
			}
		}
		if amount, _ := payRow(t, ctx, pool, key); amount != 3 {
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
	add := func(name string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents++
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(name, "/", p.AmountCents))
			return err
		}
	}
	errC := errors.New("c failed")
	cases := []struct {
		name string
		fns  []payFn
	}{
		{"ThenFail", []payFn{add("a"), add("b"), func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			if _, err := tx.Exec(ctx, "COMMIT; BEGIN"); err != nil {
				return err
			}
			return errC
		}}},
		{"ThenRowsOpen", []payFn{add("a"), add("b"), func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			_, err := tx.Exec(ctx, "COMMIT; BEGIN")
			return err
		}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
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
				repo := entity.New(pool, payment.Table{}, append(opts, entity.WithGroupCommit(16))...)
				key := payment.Key{ServiceID: 1, LineItemID: fmt.Sprint("li_gc_cb_", c.name, retry)}
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
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
	spThenAdd := func(name string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents++
			if _, err := tx.Exec(ctx, "SAVEPOINT sp1"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
			return err
		}
	}
	rollbackTo := func(name string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents++
			if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name); err != nil {
				return err
			}
			_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT sp1") // not its own
			return nil
		}
	}
	for _, c := range []struct {
		name string
		fns  []payFn
	}{
		{"Leader", []payFn{spThenAdd("a"), rollbackTo("b")}},
		{"Member", []payFn{spThenAdd("a"), spThenAdd("b"), rollbackTo("c")}},
		{"NotLast", []payFn{spThenAdd("a"), spThenAdd("b"), rollbackTo("c"), spThenAdd("d")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := payment.Key{ServiceID: 1, LineItemID: "li_gc_fsp_" + c.name}
			res := grouped(t, ctx, repo, key, nil, c.fns...)
			got := ledger(t, ctx, pool)
			_, _ = pool.Exec(ctx, "DELETE FROM ledger")
			var amount int64
			if err := pool.QueryRow(ctx, "SELECT coalesce(sum(amount_cents), 0) FROM payments WHERE service_id = $1 AND line_item_id = $2",
				key.ServiceID, key.LineItemID).Scan(&amount); err != nil {
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
CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON payments DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION slow_commit()`); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16),
		entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 3}}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_gc_killcommit"}
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
	add := func(name string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			runs.Add(1)
			p.AmountCents++
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

// countConn counts what a client writes to and reads from the server.
type countConn struct {
	net.Conn
	writes, written *atomic.Int64
}

func (c countConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	c.written.Add(int64(len(b)))
	return c.Conn.Write(b)
}

// TestGroupCommitLoneCallerWire: a lone caller sends exactly what it sends
// without group commit: the same messages, byte for byte in length, in the
// same number of writes.
func TestGroupCommitLoneCallerWire(t *testing.T) {
	t.Parallel()
	type wire struct{ writes, written atomic.Int64 }
	run := func(opts ...entity.Option) (writes, written int64) {
		var w wire
		pool, ctx := paySetup(t, func(c *pgxpool.Config) {
			c.MaxConns = 1
			// No ping of a connection idle for a second: a busy machine's
			// pauses would add writes to one run and not the other.
			c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
			dial := c.ConnConfig.DialFunc
			c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return countConn{conn, &w.writes, &w.written}, nil
			}
		})
		if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		repo := entity.New(pool, payment.Table{}, opts...)
		key := payment.Key{ServiceID: 1, LineItemID: "li_gc_wire"}
		call := func(i int) {
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				p.AmountCents++
				_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprintf("%04d", i))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 { // prepares
			call(i)
		}
		w.writes.Store(0)
		w.written.Store(0)
		for i := 3; i < 13; i++ {
			call(i)
		}
		return w.writes.Load(), w.written.Load()
	}
	writes, written := run()
	gWrites, gWritten := run(entity.WithGroupCommit(16))
	if gWrites != writes || gWritten != written {
		t.Errorf("lone caller with group commit: %d writes, %d bytes; without: %d writes, %d bytes", gWrites, gWritten, writes, written)
	}
	t.Logf("10 calls: %d writes, %d bytes", writes, written)
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
			repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16), entity.WithLockOptions(lock.Options{
				IdleTimeout: 200 * time.Millisecond, Retry: lock.Retry{Attempts: retry, Backoff: time.Millisecond}}))
			key := payment.Key{ServiceID: 1, LineItemID: fmt.Sprint("li_gc_idle_", retry)}
			add := func(name string) payFn {
				return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
					p.AmountCents++
					_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
					return err
				}
			}
			var slept atomic.Bool
			res := grouped(t, ctx, repo, key, nil, add("a"), add("b"), func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				if !slept.Swap(true) {
					time.Sleep(time.Second)
				}
				p.AmountCents++
				return nil
			}, add("d"))
			got := ledger(t, ctx, pool)
			var amount int64
			_ = pool.QueryRow(ctx, "SELECT coalesce(sum(amount_cents), 0) FROM payments WHERE line_item_id = $1", key.LineItemID).Scan(&amount)
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

// boomTable is payment.Table whose Save panics on a row whose status is
// "boom", or when the amount went from 0 to 2 or more in one write.
type boomTable struct{ payment.Table }

func (b boomTable) Save(before, after *payment.Payment) (string, []any, error) {
	if after.Status == "boom" || (before.AmountCents == 0 && after.AmountCents >= 2) {
		panic("boom")
	}
	return b.Table.Save(before, after)
}

// TestGroupCommitSavePanics: a Table whose Save panics fails only the call
// it panics for, which leaves nothing committed, and never leaves a caller
// waiting for an outcome that never comes. Save compares each member's row
// with the one before it, as one by one, never a row several members
// changed.
func TestGroupCommitSavePanics(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, entity.Table[payment.Key, payment.Payment](boomTable{}), entity.WithGroupCommit(16))
	add := func(name string) payFn {
		return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents = 1
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
			return err
		}
	}
	t.Run("Member", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_gc_boom_member"}
		res := grouped(t, ctx, repo, key, nil, add("a"), func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
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
		key := payment.Key{ServiceID: 1, LineItemID: "li_gc_boom_commit"}
		inc := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
		done := make(chan []result, 1)
		go func() { done <- grouped(t, ctx, repo, key, nil, inc, inc) }()
		select {
		case res := <-done:
			// Each member's row is written with a Save of its own, as one
			// by one: the write from 0 to 2 that panics never happens.
			if res[0].err != nil || res[0].panicked != nil || res[1].err != nil || res[1].panicked != nil {
				t.Errorf("results %v, want both nil, as one by one", res)
			}
			if amount, _ := payRow(t, ctx, pool, key); amount != 2 {
				t.Errorf("amount %d, want 2", amount)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a member still waits for the outcome of a group whose final write panicked")
		}
	})
}

// TestGroupCommitExecModes: the checks a member's first statement carries
// (the transaction is still the group's, the previous member's savepoint is
// still there) work in every pgx query mode.
func TestGroupCommitExecModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			pool, ctx := paySetup(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode })
			if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
			add := func(name string) payFn {
				return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
					p.AmountCents++
					_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", name)
					return err
				}
			}
			key := payment.Key{ServiceID: 1, LineItemID: "li_gc_modes"}
			res := grouped(t, ctx, repo, key, nil, add("a"), add("b"), add("c"))
			for i, r := range res {
				if r.err != nil {
					t.Errorf("call %d: %v", i, r.err)
				}
			}
			res = grouped(t, ctx, repo, key, nil, add("d"), func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				_, err := tx.Exec(ctx, "COMMIT; BEGIN")
				return err
			}, add("f"))
			// d's work was committed by that COMMIT; the call that ended
			// the transaction fails alone, and f leads a transaction of its
			// own, as one by one.
			if !errors.Is(res[0].err, lock.ErrCommitUnknown) || !errors.Is(res[1].err, entity.ErrTxEnded) || res[2].err != nil {
				t.Errorf("COMMIT; BEGIN: %v", res)
			}
			_, _ = pool.Exec(ctx, "DELETE FROM ledger WHERE entry = 'd'")
			res = grouped(t, ctx, repo, key, nil, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				_, err := tx.Exec(ctx, "SAVEPOINT sp1")
				return err
			}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				_, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT sp1")
				return err
			}, add("g"))
			if !errors.Is(res[0].err, entity.ErrGroupRolledBack) {
				t.Errorf("foreign savepoint: %v", res)
			}
			if got := ledger(t, ctx, pool); !slices.Equal(got, []string{"a", "b", "c", "f"}) {
				t.Errorf("ledger %v, want [a b c f]", got)
			}
			if amount, _ := payRow(t, ctx, pool, key); amount != 5 { // a, b, c, d (which COMMIT; BEGIN committed) and f
				t.Errorf("amount %d, want 5", amount)
			}
		})
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
			repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16),
				entity.WithLockOptions(lock.Options{IdleTimeout: 2 * time.Second}))
			key := payment.Key{ServiceID: 1, LineItemID: fmt.Sprint("li_gc_reother_", leader)}
			innerCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			var inner error
			nested := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				inner = repo.With(innerCtx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
					p.AmountCents += 100
					return nil
				})
				p.AmountCents++
				return nil
			}
			inc := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
			fns := []payFn{inc, nested}
			if leader {
				fns = []payFn{nested, inc}
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
			if amount, _ := payRow(t, ctx, pool, key); amount != want {
				t.Errorf("amount %d, want %d", amount, want)
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
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16), entity.WithLockOptions(lock.Options{
		IdleTimeout: time.Second}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_gc_idlefail"}
	add := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.AmountCents))
		return err
	}
	errB := errors.New("b failed")
	res := grouped(t, ctx, repo, key, nil, add, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
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

// TestGroupCommitReleasedOwnSavepoint: a member whose fn released its own
// savepoint and then failed breaks the transaction, which then commits
// nothing: the others are told so (ErrGroupRolledBack), not
// ErrCommitUnknown.
func TestGroupCommitReleasedOwnSavepoint(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
	key := payment.Key{ServiceID: 1, LineItemID: "li_gc_released"}
	add := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.AmountCents))
		return err
	}
	errB := errors.New("b failed")
	res := grouped(t, ctx, repo, key, nil, add, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
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
