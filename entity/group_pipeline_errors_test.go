package entity_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
)

// TestGroupCommitStatementErrorIsolated: a member whose first statement
// fails before the server runs it (PostgreSQL refuses to parse it, or pgx
// can't encode an argument) fails alone, as without the option: its error
// comes back, and the members before and after it commit. pgx prepares or
// describes a new statement in a round trip before it runs the batch, and
// encodes the arguments before it sends it, so when fn's statement goes in
// one batch with the savepoint, such an error keeps the savepoint (and the
// check, the release, the write of the row) from running at all.
func TestGroupCommitStatementErrorIsolated(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec,
	} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			pool, ctx := itemsPool(t, func(cfg *pgxpool.Config) { cfg.ConnConfig.DefaultQueryExecMode = mode })
			if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
			add := func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount++
				_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Name, "/", p.Amount))
				return err
			}
			t.Run("Parse", func(t *testing.T) {
				key := itemKey{OwnerID: 1, Name: "parse"}
				res := grouped(t, ctx, repo, key, nil, add, func(ctx context.Context, tx pgx.Tx, p *item) error {
					p.Amount += 100
					_, err := tx.Exec(ctx, "INSERT INTO no_such_table VALUES ($1)", 1)
					return err
				}, add)
				var pgErr *pgconn.PgError
				if !errors.As(res[1].err, &pgErr) || pgErr.Code != "42P01" {
					t.Errorf("call 1: %v, want its own undefined_table error", res[1].err)
				}
				for _, i := range []int{0, 2} {
					if res[i].err != nil {
						t.Errorf("call %d: %v, want nil (another call's bad statement failed it)", i, res[i].err)
					}
				}
			})
			t.Run("Encode", func(t *testing.T) {
				// fn goes on after a statement pgx refused to send, as it may:
				// nothing reached the server, the transaction is intact.
				key := itemKey{OwnerID: 1, Name: "encode"}
				res := grouped(t, ctx, repo, key, nil, add, func(ctx context.Context, tx pgx.Tx, p *item) error {
					if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", make(chan int)); err == nil {
						return errors.New("a chan encoded")
					}
					return add(ctx, tx, p)
				}, add)
				for i, r := range res {
					if r.err != nil {
						t.Errorf("call %d: %v, want nil", i, r.err)
					}
				}
				if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
					t.Errorf("amount %d, want 3", amount)
				}
			})
		})
	}
}

// TestGroupCommitCtxDuringPrefixWrite: the leader's row write is slow (a
// trigger) and the member behind it runs a statement with a ctx shorter
// than that write. The write is the leader's, done before the member's
// turn, so the member's ctx covers only its own statement: both calls
// succeed and both commit, as one by one.
func TestGroupCommitCtxDuringPrefixWrite(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	if _, err := pool.Exec(ctx, `CREATE FUNCTION slow_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status = 'slow' AND OLD.status <> 'slow' THEN PERFORM pg_sleep(2); END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER slow_paid BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION slow_paid()`); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	// A first group prepares the member's statement on the connection.
	for i, r := range grouped(t, ctx, repo, itemKey{OwnerID: 1, Name: "ctx_warm"}, nil, itemNoop,
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", "warm")
			return err
		}) {
		if r.err != nil {
			t.Fatalf("warm-up call %d: %v", i, r.err)
		}
	}
	key := itemKey{OwnerID: 1, Name: "ctx_prefix"}
	res := grouped(t, ctx, repo, key, nil, func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Status = "slow"
		return nil
	}, func(ctx context.Context, tx pgx.Tx, p *item) error {
		sctx, cancel := context.WithTimeout(ctx, time.Second) // half the write: room for a busy machine
		defer cancel()
		_, err := tx.Exec(sctx, "INSERT INTO ledger VALUES ($1)", "member")
		return err
	})
	for i, r := range res {
		if r.err != nil || r.panicked != nil {
			t.Errorf("call %d: %v %v, want nil as one by one", i, r.err, r.panicked)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM items WHERE name = $1 AND status = 'slow'", key.Name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("the leader's change was not committed")
	}
	if got := ledger(t, ctx, pool); !slices.Contains(got, "member") {
		t.Errorf("ledger %v, want the member's row", got)
	}
}

// TestGroupCommitTriggerOnGroupWrite: a trigger fills data when a
// row becomes paid. The leader marks it paid (in p), the next member
// runs a statement that leaves the row alone, the last one changes the
// amount. One by one, the trigger's data stays; in a group, the write of
// the leader's row (before the second member's statement) fires it, and the
// third member must get the row with that data, as it did when the row was
// read back after every member with SQL: else its write puts data back to
// NULL.
func TestGroupCommitTriggerOnGroupWrite(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	if _, err := pool.Exec(ctx, `CREATE FUNCTION paid_data() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status = 'paid' AND OLD.status <> 'paid' THEN NEW.data := '{"paid": true}'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER paid_data BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION paid_data()`); err != nil {
		t.Fatal(err)
	}
	fns := []itemFn{
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Status = "paid"; return nil },
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", p.Name)
			return err
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil },
	}
	data := func(key itemKey) string {
		var d *string
		if err := pool.QueryRow(ctx, "SELECT data::text FROM items WHERE owner_id = $1 AND name = $2",
			key.OwnerID, key.Name).Scan(&d); err != nil {
			t.Fatal(err)
		}
		if d == nil {
			return "NULL"
		}
		return *d
	}
	plain := entity.New(pool, itemTable{})
	one := itemKey{OwnerID: 1, Name: "trigger_one_by_one"}
	for i, fn := range fns {
		if err := plain.With(ctx, one, fn); err != nil {
			t.Fatalf("one by one, call %d: %v", i, err)
		}
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	// A first group prepares the member's statement on the connection, so
	// that in the second it goes in one pipeline with the write.
	for i, r := range grouped(t, ctx, repo, itemKey{OwnerID: 1, Name: "trigger_warm"}, nil, fns...) {
		if r.err != nil {
			t.Fatalf("warm-up call %d: %v", i, r.err)
		}
	}
	key := itemKey{OwnerID: 1, Name: "trigger_group"}
	for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
		if r.err != nil {
			t.Fatalf("call %d: %v", i, r.err)
		}
	}
	if got, want := data(key), data(one); got != want {
		t.Errorf("data %s in a group, %s one by one", got, want)
	}
}

// TestGroupCommitRowScannedTwice: a Row scanned a second time fails as
// pgx's does, with pgx.ErrNoRows, for a member as for a call of its own.
func TestGroupCommitRowScannedTwice(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	var errs [2]error
	twice := func(i int) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			var n int64
			row := tx.QueryRow(ctx, "SELECT amount FROM items WHERE id = $1", p.ID)
			if err := row.Scan(&n); err != nil {
				return err
			}
			errs[i] = row.Scan(&n)
			return nil
		}
	}
	key := itemKey{OwnerID: 1, Name: "scanned_twice"}
	for i, r := range grouped(t, ctx, repo, key, nil, twice(0), twice(1)) {
		if r.err != nil {
			t.Fatalf("call %d: %v", i, r.err)
		}
	}
	if !errors.Is(errs[0], pgx.ErrNoRows) {
		t.Fatalf("leader's second Scan: %v; pgx changed", errs[0])
	}
	if !errors.Is(errs[1], pgx.ErrNoRows) {
		t.Errorf("member's second Scan: %v, want %v as the leader's", errs[1], errs[0])
	}
}

// TestGroupCommitRowGoneBetweenStatements: a member's fn deletes the
// row and inserts it again, as it was, in two statements. Both succeed
// without the option, and did in a group while the row was read only once
// fn returned; the read sent after each statement must not turn the first
// one's success into an error because the row is missing in between.
func TestGroupCommitRowGoneBetweenStatements(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	recreate := func(ctx context.Context, tx pgx.Tx, p *item) error {
		if _, err := tx.Exec(ctx, "DELETE FROM items WHERE id = $1", p.ID); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO items (id, owner_id, name, amount, status, data, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, p.ID, p.OwnerID, p.Name, p.Amount, p.Status, p.Data, p.CreatedAt, p.UpdatedAt)
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		p.Amount++
		return nil
	}
	bump := func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil }
	plain := entity.New(pool, itemTable{})
	one := itemKey{OwnerID: 1, Name: "recreate_one_by_one"}
	for i, fn := range []itemFn{bump, recreate, bump} {
		if err := plain.With(ctx, one, fn); err != nil {
			t.Fatalf("one by one, call %d: %v", i, err)
		}
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "recreate_group"}
	for i, r := range grouped(t, ctx, repo, key, nil, bump, recreate, bump) {
		if r.err != nil {
			t.Errorf("call %d: %v, want nil as one by one", i, r.err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 3", amount)
	}
}
