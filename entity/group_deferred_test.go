package entity_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/entity"
)

// Deferred constraints: one by one, a call's COMMIT checks what its fn left
// pending (an INITIALLY DEFERRED foreign key, say); in a group, each
// member's part is checked once its fn returned, as its own COMMIT would,
// not at the group's COMMIT, where a later member may have mended it (or a
// violation of one member's fail them all).

func deferredSetup(t *testing.T) (itemRepo, itemRepo, context.Context, func(string) int) {
	t.Helper()
	pool, ctx := groupSetup(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (k text, pid int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)`); err != nil {
		t.Fatal(err)
	}
	count := func(sql string) int {
		var n int
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	return entity.New(pool, itemTable{}, entity.WithGroupCommit(16)), entity.New(pool, itemTable{}), ctx, count
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// TestGroupCommitDeferredViolationMendedLater: a member inserts a child
// whose parent is missing (the foreign key is deferred), and the next one
// inserts the parent. One by one, the first call's COMMIT fails (23503)
// and nothing of it stays; grouped, the same.
func TestGroupCommitDeferredViolationMendedLater(t *testing.T) {
	t.Parallel()
	repo, plain, ctx, count := deferredSetup(t)
	fns := func(side string) []itemFn {
		return []itemFn{
			func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil },
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount += 10
				_, err := tx.Exec(ctx, "INSERT INTO child VALUES ($1, $2)", side, side+"1")
				return err
			},
			func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount += 100
				_, err := tx.Exec(ctx, "INSERT INTO parent VALUES ($1)", side+"1")
				return err
			},
		}
	}
	// Parents 11 (one by one) and 21 (grouped).
	var want []string
	for i, fn := range fns("1") {
		err := plain.With(ctx, itemKey{OwnerID: 1, Name: "deferred_one"}, fn)
		want = append(want, fmt.Sprintf("call %d: %s %t", i, sqlState(err), err == nil))
	}
	var got []string
	for i, r := range grouped(t, ctx, repo, itemKey{OwnerID: 1, Name: "deferred_group"}, nil, fns("2")...) {
		got = append(got, fmt.Sprintf("call %d: %s %t", i, sqlState(r.err), r.err == nil && r.panicked == nil))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("grouped %v; one by one %v", got, want)
	}
	if n, m := count("SELECT count(*) FROM child WHERE k = '2'"), count("SELECT count(*) FROM child WHERE k = '1'"); n != m {
		t.Errorf("children: grouped %d, one by one %d", n, m)
	}
	if n, m := count("SELECT count(*) FROM parent WHERE id = 21"), count("SELECT count(*) FROM parent WHERE id = 11"); n != m {
		t.Errorf("parents: grouped %d, one by one %d", n, m)
	}
	if n, m := count("SELECT amount FROM items WHERE name = 'deferred_group'"),
		count("SELECT amount FROM items WHERE name = 'deferred_one'"); n != m {
		t.Errorf("amount: grouped %d, one by one %d", n, m)
	}
}

// TestGroupCommitDeferredViolationAlone: a member leaves a deferred
// violation nobody mends, between two that succeed. One by one, only its
// call fails; grouped, the same: the others commit.
func TestGroupCommitDeferredViolationAlone(t *testing.T) {
	t.Parallel()
	repo, _, ctx, count := deferredSetup(t)
	res := grouped(t, ctx, repo, itemKey{OwnerID: 1, Name: "deferred_alone"}, nil,
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil },
		func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount += 10
			_, err := tx.Exec(ctx, "INSERT INTO child VALUES ('alone', 99)")
			return err
		},
		func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount += 100; return nil },
	)
	for i, want := range []string{"", "23503", ""} {
		if got := sqlState(res[i].err); got != want || (want == "" && res[i].err != nil) || res[i].panicked != nil {
			t.Errorf("call %d: %v %v, want SQLSTATE %q", i, res[i].err, res[i].panicked, want)
		}
	}
	if n := count("SELECT count(*) FROM child"); n != 0 {
		t.Errorf("%d children, want 0", n)
	}
	if n := count("SELECT amount FROM items WHERE name = 'deferred_alone'"); n != 101 {
		t.Errorf("amount %d, want 101", n)
	}
}
