package txn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/txn"
)

func connect(t *testing.T, url string) (context.Context, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return ctx, conn
}

// TestGermanServerErrors classifies errors from a server whose messages
// are in German by what does not get translated.
func TestGermanServerErrors(t *testing.T) {
	t.Parallel()
	ctx, conn := connect(t, pgtest.DBMessages(t, "de_DE.UTF-8"))
	serverErr := func(sql string) *pgconn.PgError {
		t.Helper()
		_, err := conn.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Severity != "FEHLER" {
			t.Fatalf("%s = %v; want a server ERROR in German", sql, err)
		}
		return pgErr
	}

	t.Run("StalePlan", func(t *testing.T) {
		if _, err := conn.Exec(ctx, "CREATE TABLE t (v int)"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Prepare(ctx, "s", "SELECT * FROM t"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "ALTER TABLE t ALTER v TYPE bigint"); err != nil {
			t.Fatal(err)
		}
		_, err := conn.Exec(ctx, "s")
		if !txn.StalePlan(err) {
			t.Fatalf("%v: not recognised as a stale cached plan", err)
		}
		if txn.StalePlan(serverErr("SELECT 1/0")) {
			t.Fatal("division by zero taken for a stale plan")
		}
	})

	t.Run("ErrorAtCommitIsDefinite", func(t *testing.T) {
		err := txn.AfterCommit(serverErr("SELECT 1/0"))
		if errors.Is(err, txn.ErrCommitUnknown) {
			t.Fatalf("%v: an ERROR from the server taken for a lost COMMIT", err)
		}
	})

	t.Run("ErrorOnBeginIsNotRetried", func(t *testing.T) {
		err := txn.BeginFailed(serverErr("SELECT set_config('lock_timeout', '9999999999', true)"))
		if txn.Retryable(ctx, err) {
			t.Fatalf("%v: an ERROR from the server taken for a lost connection", err)
		}
	})
}

// TestProbe asks the server once per connection whether it accepts
// client_connection_check_interval, and changes nothing on it.
func TestProbe(t *testing.T) {
	t.Parallel()
	ctx, conn := connect(t, pgtest.DB(t))
	s, err := txn.NewSettings(0, 0, 0).Probe(ctx, conn)
	if err != nil || !s.ConnCheck {
		t.Fatalf("Probe = %+v, %v; want ConnCheck on a server that accepts it", s, err)
	}
	var interval string
	if err := conn.QueryRow(ctx, "SHOW client_connection_check_interval").Scan(&interval); err != nil || interval != "0" {
		t.Fatalf("after Probe the session's interval is %q (%v); want 0, unchanged", interval, err)
	}
	// The answer is kept: asked again in a transaction, where it would not
	// ask the server, it still knows.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if s, err := (txn.Settings{}).Probe(ctx, conn); err != nil || !s.ConnCheck {
		t.Fatalf("second Probe = %+v, %v; want the kept answer", s, err)
	}

	t.Run("UnknownConnectionInATransaction", func(t *testing.T) {
		ctx, conn := connect(t, pgtest.DB(t))
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if s, err := (txn.Settings{ConnCheck: true}).Probe(ctx, conn); err != nil || s.ConnCheck {
			t.Fatalf("Probe in a transaction = %+v, %v; want ConnCheck off, nothing asked", s, err)
		}
	})

	t.Run("BrokenConnectionIsAnError", func(t *testing.T) {
		ctx, conn := connect(t, pgtest.DB(t))
		conn.PgConn().Conn().Close() // the socket, under pgx's feet
		if _, err := (txn.Settings{}).Probe(ctx, conn); err == nil {
			t.Fatal("Probe on a broken connection = nil error")
		}
	})
}
