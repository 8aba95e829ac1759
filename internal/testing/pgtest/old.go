package pgtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/tools/pgserver"
)

// EnvOldServer names the variable that gives the tests a PostgreSQL older
// than paylock supports (internal/tools/pgversion): the directory holding its
// initdb and postgres. make test-versions sets it, to a PostgreSQL 13.
const EnvOldServer = "PAYLOCK_TEST_OLD_SERVER"

// OldServer starts a throwaway cluster from EnvOldServer's binaries, for a
// test that checks that paylock refuses it, and stops it when t ends. It
// skips t, saying so, when the variable is unset, under CI=true too: make
// test-versions runs these tests with it set and fails if they skip.
func OldServer(t testing.TB) *pgserver.Server {
	t.Helper()
	bin := os.Getenv(EnvOldServer)
	if bin == "" {
		t.Skip(EnvOldServer + " is unset: no PostgreSQL older than paylock supports (make test-versions sets it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgserver.Start(ctx, pgserver.Options{Fast: true, BinDir: bin})
	if err != nil {
		t.Fatalf("pgtest: start the server in %s=%s: %v", EnvOldServer, bin, err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("pgtest: stop the old server: %v", err)
		}
	})
	return s
}
