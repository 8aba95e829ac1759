package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
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

// TestLocksCitus: on the coordinator `paylock locks` shows the holder and
// the waiter of a payment's advisory lock, and says what it can't see
// (RowLock callers, the waits in the shards) and where to look; on a
// worker it says that it shows that node's advisory locks only, and lists
// none.
func TestLocksCitus(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)
	paytest.Seed(t, ctx, coord)
	key := payment.Key{ServiceID: 1, LineItemID: "li_1"}
	holding, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 2)
	go func() {
		done <- payment.NewDistributedRepository(coord).With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error {
			close(holding)
			<-release
			return nil
		})
	}()
	<-holding
	go func() {
		done <- payment.NewDistributedRepository(coord).With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error { return nil })
	}()
	if err := pgtest.AwaitLockWaiters(ctx, coord, 1); err != nil {
		close(release)
		t.Fatal(err)
	}
	out := mustRun(t, ctx, "locks", "--database-url", db.CoordinatorURL())
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	for _, want := range []string{"Citus coordinator", "citus_lock_waits", `payments service_id=1 line_item_id="li_1"`, "held by  pid", "waiting  1"} {
		if !strings.Contains(out, want) {
			t.Errorf("paylock locks on the coordinator lacks %q:\n%s", want, out)
		}
	}
	var n int
	if err := coord.QueryRow(ctx, "SELECT count(*) FROM citus_lock_waits").Scan(&n); err != nil {
		t.Errorf("the view the note names: %v", err)
	}
	out = mustRun(t, ctx, "locks", "--database-url", db.WorkerURL(0))
	if !strings.Contains(out, "Citus worker") || !strings.Contains(out, ": 0 advisory locks") {
		t.Errorf("paylock locks on a worker:\n%s", out)
	}
}
