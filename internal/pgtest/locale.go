package pgtest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DBMessages is DB for a database whose sessions get the server's messages
// in locale (lc_messages, e.g. "de_DE.UTF-8"): severities and messages come
// translated, as on a server set up in that language. It checks that they
// do. When the server can't — the OS lacks the locale, or PostgreSQL its
// translations — the test fails under CI=true (.ci/run installs both) and is
// skipped, saying why, otherwise.
func DBMessages(t testing.TB, locale string) string {
	t.Helper()
	dbURL := DB(t)
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin("ALTER DATABASE " + cfg.Database + " SET lc_messages = '" + locale + "'"); err != nil {
		unavailable(t, locale, "the OS lacks the locale: "+err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SELECT 1/0")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("SELECT 1/0 = %v, want a server error", err)
	}
	if pgErr.Severity == pgErr.SeverityUnlocalized {
		unavailable(t, locale, "PostgreSQL has no translations for it (its message came as "+pgErr.Error()+")")
	}
	return dbURL
}

func unavailable(t testing.TB, locale, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("pgtest: messages in %s unavailable: %s", locale, why)
	}
	t.Skipf("pgtest: messages in %s unavailable (CI=true makes this fail): %s", locale, why)
}
