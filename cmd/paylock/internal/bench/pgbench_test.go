package bench

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestPgbenchOnServerRefusingConnCheck: on a server that refuses
// client_connection_check_interval (Windows; before 15, anything but Linux)
// the pgbench row asks first, as With does, and runs without it; the script
// that sets it anyway fails there, which is what the bench did before it
// asked.
func TestPgbenchOnServerRefusingConnCheck(t *testing.T) {
	path := findPgbench()
	if path == "" {
		t.Skip("no pgbench on PATH or beside the server binaries")
	}
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	url := pgtest.DB(t)
	pgtest.RefuseConnCheck(t, url)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := setup(ctx, pool, &Report{}); err != nil {
		t.Fatal(err)
	}

	target, err := probePgbenchTarget(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if target.connCheck {
		t.Fatal("the probe says the server accepts client_connection_check_interval")
	}
	res, err := runPgbench(ctx, path, "prepared", url, "hot", target, 2, time.Second)
	if err != nil || res.Ops == 0 || res.Errors != 0 {
		t.Fatalf("pgbench with the probed settings: %d ops, %d errors, %v", res.Ops, res.Errors, err)
	}

	target.connCheck = true
	if res, err := runPgbench(ctx, path, "prepared", url, "hot", target, 2, time.Second); err == nil && res.Errors == 0 {
		t.Fatalf("pgbench setting client_connection_check_interval ran %d ops without an error on a server that refuses it: the test can't fail", res.Ops)
	}
}
