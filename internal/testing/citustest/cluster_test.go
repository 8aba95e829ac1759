package citustest_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestNewDB: the database exists on every node with the extension; the
// coordinator knows both workers; a table distributed on the coordinator
// can be written there and read on every worker.
func TestNewDB(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	coord, err := pgx.Connect(ctx, db.CoordinatorURL())
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Close(ctx)
	var workers int
	if err := coord.QueryRow(ctx, "SELECT count(*) FROM citus_get_active_worker_nodes()").Scan(&workers); err != nil {
		t.Fatal(err)
	}
	if workers != citustest.Workers {
		t.Fatalf("%d active workers, want %d", workers, citustest.Workers)
	}
	if _, err := coord.Exec(ctx, `CREATE TABLE t (k bigint, v text);
		SELECT create_distributed_table('t', 'k');
		INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g`); err != nil {
		t.Fatal(err)
	}
	for i := range citustest.Workers {
		w, err := pgx.Connect(ctx, db.WorkerURL(i))
		if err != nil {
			t.Fatal(err)
		}
		var n int
		var isCoord bool
		err = w.QueryRow(ctx, "SELECT (SELECT count(*) FROM t), citus_is_coordinator()").Scan(&n, &isCoord)
		w.Close(ctx)
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
		if n != 100 || isCoord {
			t.Errorf("worker %d: %d rows, coordinator %t; want 100 rows on a worker", i, n, isCoord)
		}
	}
}
