package dedupe

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/payment"
)

// Report describes the duplicates in payments, and what a merge would do.
type Report struct {
	Rows        int         // rows in payments
	Groups      int         // keys with more than one row
	Extra       int         // rows beyond the first of each such key: what a merge moves
	ByCopies    map[int]int // rows per key -> keys with that many rows
	Worst       []Group     // the keys with the most rows
	Sample      []Group     // a few other duplicated keys, picked by a hash of the key
	Quarantined int         // rows already in payment_duplicates (0 if the table is missing)
	IndexExists bool
	IndexValid  bool
}

// Group is one duplicated key and its rows' ids, ascending: the first is the
// one a merge keeps.
type Group struct {
	Key     payment.Key
	IDs     []int64
	Amounts []int64 // amount_cents of each row, in IDs order
}

// Inspect reads the duplicates without changing anything: counts, the worst
// keys and a sample, up to n of each.
func Inspect(ctx context.Context, pool *pgxpool.Pool, n int) (*Report, error) {
	r := &Report{ByCopies: map[int]int{}}
	rows, err := pool.Query(ctx, `
		SELECT c, count(*), (SELECT count(*) FROM payments) FROM (
			SELECT count(*) AS c FROM payments GROUP BY service_id, line_item_id HAVING count(*) > 1) d
		GROUP BY c ORDER BY c`)
	if err != nil {
		return nil, fmt.Errorf("dedupe: inspect: %w", err)
	}
	var copies, keys int
	_, err = pgx.ForEachRow(rows, []any{&copies, &keys, &r.Rows}, func() error {
		r.ByCopies[copies] = keys
		r.Groups += keys
		r.Extra += keys * (copies - 1)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dedupe: inspect: %w", err)
	}
	if r.Groups == 0 {
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&r.Rows); err != nil {
			return nil, fmt.Errorf("dedupe: inspect: %w", err)
		}
	}
	const groups = `SELECT service_id, line_item_id, array_agg(id ORDER BY id), array_agg(amount_cents ORDER BY id)
		FROM payments GROUP BY service_id, line_item_id HAVING count(*) > 1 `
	if r.Worst, err = readGroups(ctx, pool, groups+"ORDER BY count(*) DESC, service_id, line_item_id LIMIT $1", n); err != nil {
		return nil, err
	}
	if r.Sample, err = readGroups(ctx, pool, groups+"ORDER BY md5(service_id || '/' || line_item_id) LIMIT $1", n); err != nil {
		return nil, err
	}
	var quarantine bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", Table).Scan(&quarantine); err != nil {
		return nil, fmt.Errorf("dedupe: inspect: %w", err)
	}
	if quarantine {
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+Table).Scan(&r.Quarantined); err != nil {
			return nil, fmt.Errorf("dedupe: count quarantine: %w", err)
		}
	}
	if r.IndexExists, r.IndexValid, err = IndexState(ctx, pool); err != nil {
		return nil, err
	}
	return r, nil
}

func readGroups(ctx context.Context, pool *pgxpool.Pool, sql string, n int) ([]Group, error) {
	rows, err := pool.Query(ctx, sql, n)
	if err != nil {
		return nil, fmt.Errorf("dedupe: inspect: %w", err)
	}
	gs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Group, error) {
		var g Group
		err := r.Scan(&g.Key.ServiceID, &g.Key.LineItemID, &g.IDs, &g.Amounts)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("dedupe: inspect: %w", err)
	}
	return gs, nil
}
