package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/pgversion"
)

// TestCommandsRefuseServerOlderThan14: every command that connects, pointed
// at a real PostgreSQL 13 (make test-versions provides one), exits 1 with
// pgversion's one sentence instead of the raw SQL error its first 14-only
// feature would raise (pg_locks.waitstart for locks), and changes nothing.
func TestCommandsRefuseServerOlderThan14(t *testing.T) {
	old := pgtest.OldServer(t)
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	url := old.ConnString("postgres")

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var version string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if err := pgversion.Check(ctx, conn); !errors.Is(err, pgversion.ErrTooOld) {
		t.Fatalf("pgversion.Check on PostgreSQL %s = %v, want ErrTooOld", version, err)
	}

	for _, args := range [][]string{
		{"locks"},
		{"locks", "--json"},
		{"migrate"},
		{"dedupe"},
		{"demo", "--payments", "2"},
		{"bench", "--duration", "100ms", "--workloads", "hot", "--strategies", "paylock", "--no-pgbench"},
	} {
		name := strings.Join(args, " ")
		code, stdout, stderr := paylock(ctx, append(args, "--database-url", url)...)
		want := "paylock " + args[0] + ": paylock needs PostgreSQL 14 or newer; this server is PostgreSQL " + version + "\n"
		if code != exitFailure || stderr != want {
			t.Errorf("paylock %s: exit %d, stderr %q; want exit %d, stderr %q (stdout %q)", name, code, stderr, exitFailure, want, stdout)
		}
	}
	var tables int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("%d tables created on the refused server", tables)
	}
}
