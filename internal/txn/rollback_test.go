package txn_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/txn"
)

// TestRollback: the one cleanup rollback of lock and entity ends the
// transaction even once ctx is done, through the pgx transaction object when
// there is one (which it marks closed), and closes a connection on which
// ROLLBACK fails, so that a pool can't hand it out mid-transaction.
func TestRollback(t *testing.T) {
	t.Parallel()
	url := pgtest.DB(t)
	done, cancel := context.WithCancel(context.Background())
	cancel()

	t.Run("PgConnAfterCtxDone", func(t *testing.T) {
		ctx, conn := connect(t, url)
		pc := conn.PgConn()
		if _, err := pc.Exec(ctx, "BEGIN; SELECT 1/0").ReadAll(); err == nil {
			t.Fatal("SELECT 1/0 succeeded")
		}
		if s := pc.TxStatus(); s != 'E' {
			t.Fatalf("status %q before Rollback, want E", s)
		}
		txn.Rollback(done, pc, nil)
		if pc.IsClosed() || pc.TxStatus() != 'I' {
			t.Fatalf("after Rollback: closed %v, status %q; want an open, idle connection", pc.IsClosed(), pc.TxStatus())
		}
	})

	t.Run("TxAfterCtxDone", func(t *testing.T) {
		ctx, conn := connect(t, url)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "CREATE TEMP TABLE rolled_back (v int)"); err != nil {
			t.Fatal(err)
		}
		txn.Rollback(done, conn.PgConn(), tx)
		if s := conn.PgConn().TxStatus(); s != 'I' {
			t.Fatalf("status %q after Rollback, want I", s)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); !errors.Is(err, pgx.ErrTxClosed) {
			t.Fatalf("the tx after Rollback: %v, want pgx.ErrTxClosed", err)
		}
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass('pg_temp.rolled_back') IS NOT NULL").Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Fatal("the table created in the transaction survived Rollback")
		}
	})

	t.Run("FailedRollbackClosesConn", func(t *testing.T) {
		ctx, conn := connect(t, url)
		pc := conn.PgConn()
		if _, err := pc.Exec(ctx, "BEGIN").ReadAll(); err != nil {
			t.Fatal(err)
		}
		// A result left unread keeps the connection busy: ROLLBACK can't be
		// sent.
		_ = pc.ExecParams(ctx, "SELECT generate_series(1, 10)", nil, nil, nil, nil)
		if !pc.IsBusy() {
			t.Fatal("connection not busy with an unread result")
		}
		txn.Rollback(ctx, pc, nil)
		if !pc.IsClosed() {
			t.Fatal("connection still open after a ROLLBACK that could not be sent")
		}
	})

	t.Run("ClosedOrIdle", func(t *testing.T) {
		ctx, conn := connect(t, url)
		pc := conn.PgConn()
		txn.Rollback(ctx, pc, nil) // idle: nothing to do, nothing sent
		if pc.IsClosed() || pc.TxStatus() != 'I' {
			t.Fatalf("idle connection after Rollback: closed %v, status %q", pc.IsClosed(), pc.TxStatus())
		}
		if err := conn.Close(ctx); err != nil {
			t.Fatal(err)
		}
		txn.Rollback(ctx, pc, nil) // closed: must not panic or block
	})
}
