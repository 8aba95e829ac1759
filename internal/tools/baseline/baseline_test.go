package baseline_test

import (
	"context"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/baseline"
	"github.com/paylock/paylock/payment"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// TestSequential: one caller at a time, each baseline creates the row once,
// finds it afterwards and writes back what fn changed (Naive only when fn
// says so).
func TestSequential(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.Pool(t, nil)
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO services VALUES (1, 'api')`); err != nil {
		t.Fatal(err)
	}
	if err := baseline.CreateTable(ctx, pool); err != nil {
		t.Fatal(err)
	}
	key := payment.Key{ServiceID: 1, LineItemID: "li_1"}

	var created []bool
	for _, write := range []bool{true, true, false} {
		r, err := baseline.Naive(ctx, pool, key, func(r *baseline.Row) (bool, error) {
			r.AmountCents += 5
			r.Data = []byte(`{"a": 1}`)
			return write, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, r.Created)
	}
	var rows, amount int64
	var data string
	if err := pool.QueryRow(ctx, `SELECT count(*), sum(amount_cents), max(data::text) FROM `+baseline.Table).Scan(&rows, &amount, &data); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || amount != 10 || data != `{"a": 1}` || created[0] != true || created[1] || created[2] {
		t.Errorf("Naive three times (the last not writing): %d rows, amount %d, data %s, created %v; want 1 row, 10, {\"a\": 1}, [true false false]",
			rows, amount, data, created)
	}

	created = nil
	for range 2 {
		err := baseline.RowLock(ctx, pool, key, func(r *baseline.Row) error {
			created = append(created, r.Created)
			r.AmountCents += 3
			r.Status = "captured"
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var status string
	if err := pool.QueryRow(ctx, `SELECT count(*), sum(amount_cents), max(status) FROM payments`).Scan(&rows, &amount, &status); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || amount != 6 || status != "captured" || !created[0] || created[1] {
		t.Errorf("RowLock twice: %d rows, amount %d, status %q, created %v; want 1 row, 6, captured, [true false]", rows, amount, status, created)
	}
}
