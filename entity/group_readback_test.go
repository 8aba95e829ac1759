package entity_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
)

// TestGroupCommitReadBackLocksADuplicate: on a table not yet
// deduplicated (advisory lock, no unique index), a member whose fn deletes
// the row leaves the next duplicate as the key's row. A call of its own
// would Find that row with its row lock, so a writer that doesn't take the
// advisory lock (old code during a rollout) waits for the commit; the group
// must hold that row locked too before it writes it, or the final write
// overwrites the writer's committed change with the value read before it.
func TestGroupCommitReadBackLocksADuplicate(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	if _, err := pool.Exec(ctx, "DROP INDEX "+itemsKeyIndex); err != nil {
		t.Fatal(err)
	}
	key := itemKey{OwnerID: 1, Name: "li_reader_dup"}
	var first, dup int64
	if err := pool.QueryRow(ctx, "INSERT INTO items (owner_id, name) VALUES (1, $1) RETURNING id", key.Name).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, "INSERT INTO items (owner_id, name) VALUES (1, $1) RETURNING id", key.Name).Scan(&dup); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	del := func(ctx context.Context, tx pgx.Tx, p *item) error {
		_, err := tx.Exec(ctx, "DELETE FROM items WHERE id = $1", p.ID)
		return err
	}
	writer := make(chan error, 1)
	var blocked bool
	bump := func(ctx context.Context, tx pgx.Tx, p *item) error {
		if p.ID != dup {
			t.Errorf("the member after the delete got row %d, want the duplicate %d", p.ID, dup)
		}
		p.Amount++
		// Old code, no advisory lock: a call of its own holds dup locked
		// (Find), so this waits for the commit.
		go func() {
			_, err := pool.Exec(context.WithoutCancel(ctx), "UPDATE items SET amount = amount + 100 WHERE id = $1", dup)
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
	for i, r := range grouped(t, ctx, repo, key, nil, itemNoop, del, bump) {
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
	if err := pool.QueryRow(ctx, "SELECT amount FROM items WHERE id = $1", dup).Scan(&amount); err != nil {
		t.Fatal(err)
	}
	if amount != 101 {
		t.Errorf("amount %d, want 101 (the group's +1 and the writer's +100, as with the calls one by one)", amount)
	}
}

// TestGroupCommitReadBackUnderRowLevelSecurity: with row-level security whose UPDATE
// policy hides a row its SELECT policy shows (a closed item), Find
// (FOR NO KEY UPDATE, which applies the UPDATE policy too) no longer finds
// the row once a member's fn has closed it, and a call of its own after it
// fails. The group's read-back must not hand the next member a row its
// final write can't update: that member's With returned nil, and its change
// was never written (UPDATE of 0 rows).
func TestGroupCommitReadBackUnderRowLevelSecurity(t *testing.T) {
	t.Parallel()
	admin, ctx := groupSetup(t)
	role := fmt.Sprintf("paylock_rls_%d", time.Now().UnixNano())
	var schema string
	if err := admin.QueryRow(ctx, "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'items'::regclass").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"CREATE ROLE " + role,
		fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", schema, role),
		fmt.Sprintf("GRANT ALL ON ALL TABLES IN SCHEMA %s TO %s", schema, role),
		fmt.Sprintf("GRANT ALL ON ALL SEQUENCES IN SCHEMA %s TO %s", schema, role),
		fmt.Sprintf("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %s TO %s", schema, role),
		"ALTER TABLE items ENABLE ROW LEVEL SECURITY",
		"CREATE POLICY see ON items FOR SELECT USING (true)",
		"CREATE POLICY add ON items FOR INSERT WITH CHECK (true)",
		"CREATE POLICY open_only ON items FOR UPDATE USING (status <> 'closed') WITH CHECK (true)",
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	t.Cleanup(func() {
		admin.Exec(context.Background(), "DROP OWNED BY "+role)
		admin.Exec(context.Background(), "DROP ROLE "+role)
	})
	cfg := admin.Config().Copy()
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE "+role)
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_reader_rls"}
	if err := repo.With(ctx, key, itemNoop); err != nil {
		t.Fatal(err)
	}
	closeIt := func(ctx context.Context, tx pgx.Tx, p *item) error {
		_, err := tx.Exec(ctx, "UPDATE items SET status = 'closed' WHERE id = $1", p.ID)
		return err
	}
	bump := func(ctx context.Context, tx pgx.Tx, p *item) error { p.Amount++; return nil }
	res := grouped(t, ctx, repo, key, nil, itemNoop, closeIt, bump)
	amount, _ := itemRow(t, ctx, admin, key)
	if res[2].err == nil && res[2].panicked == nil && amount != 1 {
		t.Errorf("the member after the row was closed: With returned nil, but the row's amount is %d, want 1 (or an error, as a call of its own gets)", amount)
	}
}
