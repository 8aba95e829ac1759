package entity_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/payment"
)

// TestReaderReviewDeletedRowNextDuplicateLocked: on a table not yet
// deduplicated (advisory lock, no unique index), a member whose fn deletes
// the row leaves the next duplicate as the key's row. A call of its own
// would Find that row with its row lock, so a writer that doesn't take the
// advisory lock (old code during a rollout) waits for the commit; the group
// must hold that row locked too before it writes it, or the final write
// overwrites the writer's committed change with the value read before it.
func TestReaderReviewDeletedRowNextDuplicateLocked(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	if _, err := pool.Exec(ctx, "DROP INDEX "+payment.UniqueIndex); err != nil {
		t.Fatal(err)
	}
	key := payment.Key{ServiceID: 1, LineItemID: "li_reader_dup"}
	var first, dup int64
	if err := pool.QueryRow(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES (1, $1) RETURNING id", key.LineItemID).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES (1, $1) RETURNING id", key.LineItemID).Scan(&dup); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(16))
	del := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		_, err := tx.Exec(ctx, "DELETE FROM payments WHERE id = $1", p.ID)
		return err
	}
	writer := make(chan error, 1)
	var blocked bool
	bump := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		if p.ID != dup {
			t.Errorf("the member after the delete got row %d, want the duplicate %d", p.ID, dup)
		}
		p.AmountCents++
		// Old code, no advisory lock: a call of its own holds dup locked
		// (Find), so this waits for the commit.
		go func() {
			_, err := pool.Exec(context.WithoutCancel(ctx), "UPDATE payments SET amount_cents = amount_cents + 100 WHERE id = $1", dup)
			writer <- err
		}()
		select {
		case err := <-writer:
			writer <- err
		case <-time.After(time.Second):
			blocked = true
		}
		return nil
	}
	for i, r := range grouped(t, ctx, repo, key, nil, payNoop, del, bump) {
		if r.err != nil || r.panicked != nil {
			t.Fatalf("call %d: %v, %v", i, r.err, r.panicked)
		}
	}
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	if !blocked {
		t.Errorf("the concurrent writer updated row %d while the group held the key's row: not locked", dup)
	}
	var amount int64
	if err := pool.QueryRow(ctx, "SELECT amount_cents FROM payments WHERE id = $1", dup).Scan(&amount); err != nil {
		t.Fatal(err)
	}
	if amount != 101 {
		t.Errorf("amount %d, want 101 (the group's +1 and the writer's +100, as with the calls one by one)", amount)
	}
}
