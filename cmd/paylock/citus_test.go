package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestMigrateCitus: `paylock migrate` against a Citus coordinator says it
// distributed payments, twice; against a worker it exits 1 and names the
// coordinator.
func TestMigrateCitus(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	for range 2 {
		if out := mustRun(t, ctx, "migrate", "--database-url", db.CoordinatorURL()); !strings.Contains(out, "payments (distributed by service_id)") {
			t.Fatalf("paylock migrate on the coordinator printed %q", out)
		}
	}
	code, out, errOut := paylock(ctx, "migrate", "--database-url", db.WorkerURL(0))
	coordinator := "127.0.0.1:" + strconv.Itoa(db.Cluster.Coordinator.Port)
	if code != 1 || out != "" || !strings.Contains(errOut, "Citus worker") || !strings.Contains(errOut, coordinator) {
		t.Fatalf("paylock migrate on a worker: exit %d, stdout %q, stderr %q; want exit 1 and a line naming the coordinator %s", code, out, errOut, coordinator)
	}
	t.Logf("on a worker: %s", errOut)
}
