package pgserver_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/tools/pgserver"
)

// TestStartFromUnreadableDirectory: a server started by root from a
// directory its own user can't enter (a checkout under root's mode-700 home)
// still translates whole messages, severity included. A postgres whose
// working directory is unreadable can't resolve its own path, so it never
// binds its default message domain: lc_messages = 'de_DE.UTF-8' then gives
// "ERROR: Division durch Null" instead of "FEHLER: Division durch Null".
func TestStartFromUnreadableDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only then does the server run as another user than the test")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir) // the test binary's working directory, which the server must not inherit

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgserver.Start(ctx, pgserver.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	conn, err := pgx.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET lc_messages = 'de_DE.UTF-8'"); err != nil {
		unavailable(t, "the OS lacks de_DE.UTF-8: "+err.Error())
	}
	_, err = conn.Exec(ctx, "SELECT 1/0")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("SELECT 1/0 = %v, want a server error", err)
	}
	if pgErr.Message == "division by zero" {
		unavailable(t, "PostgreSQL has no German translations")
	}
	if pgErr.Severity == pgErr.SeverityUnlocalized {
		t.Fatalf("severity %q with message %q: the server did not find its own message domain", pgErr.Severity, pgErr.Message)
	}
}

func unavailable(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why + " (CI=true makes this fail)")
}
