package entity_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/payment"
)

// TestReview2GroupStalePlanHeals: a member's statement prepared on the
// connection (under the member's own name) goes stale when its table's
// column changes type. Without the option pgx drops its cached statement
// on the error, so the first call after the ALTER fails and the next ones
// work. In a group, forget drops the statement from the members' set, but
// pgx's Conn.Prepare still returns the old, stale statement for that name,
// so the connection fails that member's statement in every later group.
func TestReview2GroupStalePlanHeals(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	if _, err := pool.Exec(ctx, "CREATE TABLE side (id int PRIMARY KEY, v int NOT NULL); INSERT INTO side VALUES (1, 5)"); err != nil {
		t.Fatal(err)
	}
	read := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		var v int64
		if err := tx.QueryRow(ctx, "SELECT v FROM side WHERE id = $1", 1).Scan(&v); err != nil {
			return err
		}
		p.AmountCents += v
		return nil
	}
	// Control: without the option, one call fails after the ALTER, the
	// next works.
	plain := entity.New(pool, payment.Table{})
	pk := payment.Key{ServiceID: 1, LineItemID: "stale_plain"}
	if err := plain.With(ctx, pk, read); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ALTER TABLE side ALTER COLUMN v TYPE bigint"); err != nil {
		t.Fatal(err)
	}
	_ = plain.With(ctx, pk, read) // may fail: cached plan must not change result type
	if err := plain.With(ctx, pk, read); err != nil {
		t.Fatalf("without the option, the second call after the ALTER: %v", err)
	}

	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
	key := payment.Key{ServiceID: 1, LineItemID: "stale_group"}
	for g := range 2 { // prepares the member's statement, then pipelines it
		for i, r := range grouped(t, ctx, repo, key, nil, payNoop, read) {
			if r.err != nil {
				t.Fatalf("group %d before the ALTER, call %d: %v", g, i, r.err)
			}
		}
	}
	if _, err := pool.Exec(ctx, "ALTER TABLE side ALTER COLUMN v TYPE int"); err != nil {
		t.Fatal(err)
	}
	grouped(t, ctx, repo, key, nil, payNoop, read) // the member may fail once, as without the option
	for g := range 3 {
		for i, r := range grouped(t, ctx, repo, key, nil, payNoop, read) {
			if r.err != nil {
				t.Errorf("group %d after the ALTER (and after one failure), call %d: %v", g, i, r.err)
			}
		}
	}
}

// TestReview2GroupDeallocateAll: fn drops every prepared statement of its
// connection with pgx's own Conn.DeallocateAll (which also clears pgx's
// record of them). Without the option the next calls re-prepare and work.
// In a group, the members' set of statements (preparedSQL) still lists the
// member's statement, so a later member's pipeline queues its name, which
// pgx no longer knows and takes for SQL: pgx prepares "paylock_group_..."
// as a statement, outside the member's savepoint.
func TestReview2GroupDeallocateAll(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	n := 0
	add := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		n++
		p.AmountCents++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint("e", n))
		return err
	}
	dealloc := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		return tx.Conn().DeallocateAll(ctx)
	}
	// Control: without the option.
	plain := entity.New(pool, payment.Table{})
	pk := payment.Key{ServiceID: 1, LineItemID: "dealloc_plain"}
	for i, fn := range []payFn{add, dealloc, add, add} {
		if err := plain.With(ctx, pk, fn); err != nil {
			t.Fatalf("without the option, call %d: %v", i, err)
		}
	}

	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
	key := payment.Key{ServiceID: 1, LineItemID: "dealloc_group"}
	for i, r := range grouped(t, ctx, repo, key, nil, payNoop, add) { // prepares the member's statement
		if r.err != nil {
			t.Fatalf("warm-up call %d: %v", i, r.err)
		}
	}
	for i, r := range grouped(t, ctx, repo, key, nil, payNoop, dealloc, add) {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 3", amount)
	}
}
