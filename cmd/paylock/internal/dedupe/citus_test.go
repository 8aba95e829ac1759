package dedupe_test

import (
	"errors"
	"testing"
	"time"

	"github.com/paylock/paylock/cmd/paylock/internal/dedupe"
	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// TestCitus: on a coordinator whose payments Migrate distributed, Inspect
// reports and Run finds nothing to merge and the index valid; on a
// distributed table with duplicates (distributed by hand, without the
// unique index) Inspect names them and Run refuses with ErrDistributed,
// moving nothing; on a worker Run refuses with payment.ErrCitusWorker.
func TestCitus(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	pool := citustest.Pool(t, db.CoordinatorURL(), nil)
	paytest.Seed(t, ctx, pool)
	if _, err := pool.Exec(ctx, `INSERT INTO payments (service_id, line_item_id) SELECT 1, 'li_' || g FROM generate_series(1, 50) g`); err != nil {
		t.Fatal(err)
	}
	r, err := dedupe.Inspect(ctx, pool, 3)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rows != 50 || r.Groups != 0 || !r.IndexValid {
		t.Fatalf("Inspect = %+v, want 50 rows, no duplicates, the index valid", r)
	}
	res, err := dedupe.Run(ctx, pool, dedupe.Options{})
	if err != nil || res.Keys != 0 || !res.Index.AlreadyValid {
		t.Fatalf("Run = %+v, %v; want nothing merged and the index already valid", res, err)
	}
	// Nothing to merge, and nothing made for it: no local quarantine table
	// beside the distributed payments.
	var quarantine bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('payment_duplicates') IS NOT NULL").Scan(&quarantine); err != nil || quarantine {
		t.Fatalf("after Run on a distributed table, payment_duplicates exists: %t (%v); want no table made", quarantine, err)
	}

	t.Run("Duplicates", func(t *testing.T) {
		// One statement at a time: Citus sends some DDL on to the workers
		// as the statement's text.
		for _, sql := range []string{
			"CREATE TABLE byhand (LIKE payments INCLUDING DEFAULTS)",
			"SELECT create_distributed_table('byhand', 'service_id')",
			"ALTER TABLE payments RENAME TO distributed",
			"ALTER TABLE byhand RENAME TO payments",
			"INSERT INTO payments (service_id, line_item_id) SELECT 1, 'li_' || (g % 10) FROM generate_series(1, 30) g",
		} {
			if _, err := pool.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		r, err := dedupe.Inspect(ctx, pool, 3)
		if err != nil {
			t.Fatal(err)
		}
		if r.Groups != 10 || r.Extra != 20 {
			t.Fatalf("Inspect = %+v, want 10 keys with 20 extra rows", r)
		}
		if _, err := dedupe.Run(ctx, pool, dedupe.Options{}); !errors.Is(err, dedupe.ErrDistributed) {
			t.Fatalf("Run on a distributed table with duplicates = %v, want ErrDistributed", err)
		}
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&n); err != nil || n != 30 {
			t.Fatalf("%d rows (%v) after the refusal, want the 30 untouched", n, err)
		}
	})

	t.Run("Worker", func(t *testing.T) {
		worker := citustest.Pool(t, db.WorkerURL(1), nil)
		if _, err := dedupe.Run(ctx, worker, dedupe.Options{}); !errors.Is(err, payment.ErrCitusWorker) {
			t.Fatalf("Run on a worker = %v, want ErrCitusWorker", err)
		}
	})
}
