package lock_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/pgtest"
	"github.com/paylock/paylock/lock"
)

// refusingConnCheck makes the database at url refuse a non-zero
// client_connection_check_interval as PostgreSQL does on a platform that
// can't tell that a socket closed (same SQLSTATE, same words): a set_config
// of its own, first on the search_path, stands in for the server's check
// hook. This server, on Linux, accepts the setting.
func refusingConnCheck(t *testing.T, ctx context.Context, url string) {
	t.Helper()
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
}

// TestConnCheckRefused: where the server refuses
// client_connection_check_interval, Run and RunDB leave it unset and work;
// they still cancel a wait.
func TestConnCheckRefused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	url := pgtest.DB(t)
	refusingConnCheck(t, ctx, url)
	runs, pool := runners(t, url)

	var pgErr *pgconn.PgError
	if _, err := pool.Exec(ctx, "SELECT set_config('client_connection_check_interval', '1000', true)"); !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("the database accepts client_connection_check_interval (%v); the test proves nothing", err)
	}
	key := lock.NewKey("test", "conncheck")
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			for range 3 { // the first probes, the others know
				var interval string
				err := r.run(ctx, lock.Options{}, key, func(ctx context.Context, q do) error {
					return q(ctx, "SHOW client_connection_check_interval", &interval)
				})
				if err != nil || interval != "0" {
					t.Fatalf("%s = %v, client_connection_check_interval %q; want nil, 0", r.name, err, interval)
				}
			}
		})
	}
}

// TestConnCheckAccepted: where the server accepts it, the transaction has
// client_connection_check_interval set, for Run and RunDB alike.
func TestConnCheckAccepted(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	runs, _ := runners(t, pgtest.DB(t))
	for _, r := range runs {
		var interval string
		err := r.run(ctx, lock.Options{}, lock.NewKey("test", "conncheck"), func(ctx context.Context, q do) error {
			return q(ctx, "SHOW client_connection_check_interval", &interval)
		})
		if err != nil || interval != "1s" {
			t.Fatalf("%s = %v, client_connection_check_interval %q; want nil, 1s", r.name, err, interval)
		}
	}
}
