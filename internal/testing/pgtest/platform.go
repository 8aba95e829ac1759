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
		if pgErr.Message != "division by zero" {
			// The message domain was found, the backend's own was not.
			t.Fatalf("pgtest: the server translated its message but not its severity (%s): "+
				"it was started in a directory its user can't read, so it can't find its own "+
				"path and so its default message domain (internal/tools/pgserver starts it in its own directory)", pgErr.Error())
		}
		unavailable(t, locale, "PostgreSQL has no translations for it (its message came as "+pgErr.Error()+")")
	}
	return dbURL
}

// RefuseConnCheck makes the database at url refuse a non-zero
// client_connection_check_interval as PostgreSQL does on a platform that
// can't tell that a socket closed (Windows; before 15, anything but Linux):
// same SQLSTATE (22023), same words. A set_config of its own, first on the
// database's search_path, stands in for the server's check hook; it passes
// every other setting on to pg_catalog.set_config.
func RefuseConnCheck(t testing.TB, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `
		CREATE SCHEMA platform;
		CREATE FUNCTION platform.set_config(name text, value text, is_local boolean) RETURNS text
		LANGUAGE plpgsql AS $$
		BEGIN
			IF name = 'client_connection_check_interval' AND value <> '0' THEN
				RAISE EXCEPTION 'invalid value for parameter "%": %', name, value
					USING ERRCODE = '22023', DETAIL = 'client_connection_check_interval must be set to 0 on this platform.';
			END IF;
			RETURN pg_catalog.set_config(name, value, is_local);
		END $$;
		DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = platform, pg_catalog, public', current_database()); END $$`); err != nil {
		t.Fatal(err)
	}
	// Checked on a new session, which gets the database's search_path.
	check, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(ctx)
	var pgErr *pgconn.PgError
	if _, err := check.Exec(ctx, "SELECT set_config('client_connection_check_interval', '1000', true)"); !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("pgtest: the database still accepts client_connection_check_interval (%v)", err)
	}
}

// isDuplicateDatabase: CREATE DATABASE lost a race with another test
// binary: SQLSTATE 42P04, or 23505 from pg_database's unique index when
// both inserted at once; whatever the server's language.
func isDuplicateDatabase(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505")
}

func unavailable(t testing.TB, locale, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("pgtest: messages in %s unavailable: %s", locale, why)
	}
	t.Skipf("pgtest: messages in %s unavailable (CI=true makes this fail): %s", locale, why)
}
