package bench

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestRunCitus: `paylock bench --database-url <coordinator>` creates its
// throwaway database on every node of the cluster, Migrate distributes
// payments there, and the strategies that lock run hot and cold keys
// without a duplicate, a lost update or an error; the database is gone
// from every node afterwards.
func TestRunCitus(t *testing.T) {
	t.Parallel()
	db := citustest.NewDB(t)
	stdout, err := runBench(t, db.CoordinatorURL(), "--workloads", "hot,cold",
		"--strategies", "rowlock,paylock", "--workers", "4", "--duration", "300ms", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var rep Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	for _, r := range rep.Rows {
		t.Logf("%s %s: %.0f ops/s, p99 %.2f ms", r.Workload, r.Strategy, r.OpsPerSec, r.P99Ms)
		if r.Ops == 0 || r.Duplicates != 0 || r.Lost != 0 || r.Errors != 0 {
			t.Errorf("%s %s: %d ops, %d duplicates, %d lost updates, %d errors (%s)",
				r.Workload, r.Strategy, r.Ops, r.Duplicates, r.Lost, r.Errors, r.FirstError)
		}
	}
	ctx := pgtest.Context(t, time.Minute)
	for _, url := range db.URLs() {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		var left int
		err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname LIKE 'paylock_bench_%'").Scan(&left)
		conn.Close(ctx)
		if err != nil || left != 0 {
			t.Errorf("%s: %d bench databases left (%v)", url, left, err)
		}
	}
}
