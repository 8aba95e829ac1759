package txn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/txn"
)

func TestCommitClassification(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	netErr := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	for _, tt := range []struct {
		name      string
		err       error
		unknown   bool
		retryable bool
	}{
		{"ServerErrorAtCommit", txn.AfterCommit(&pgconn.PgError{Severity: "ERROR", Code: "23505"}), false, false},
		{"SerializationFailureAtCommit", txn.AfterCommit(&pgconn.PgError{Severity: "ERROR", Code: "40001"}), false, true},
		{"WorkerUnreachableBeforeCommit", txn.BeforeCommit(&pgconn.PgError{Severity: "ERROR", Code: "08006"}, false), false, true},
		{"WorkerUnreachableAtCommit", txn.AfterCommit(&pgconn.PgError{Severity: "ERROR", Code: "08006"}), true, false},
		// Citus: "could not commit transaction for shard", the worker's answer to COMMIT lost.
		{"ShardCommitUnconfirmed", txn.AfterCommit(&pgconn.PgError{Severity: "ERROR", Code: "XX000"}), true, false},
		{"CommitTurnedRollback", txn.AfterCommit(pgx.ErrTxCommitRollback), false, false},
		{"IdleTimeoutEndedTheSession", txn.AfterCommit(&pgconn.PgError{Severity: "FATAL", Code: "25P03"}), false, true},
		{"TerminatedDuringCommit", txn.AfterCommit(&pgconn.PgError{Severity: "FATAL", Code: "57P01"}), true, false},
		{"ConnectionResetAfterCommitSent", txn.AfterCommit(fmt.Errorf("read: %w", netErr)), true, false},
		{"EOFAfterCommitSent", txn.AfterCommit(io.ErrUnexpectedEOF), true, false},
		{"ConnectionLostBeforeCommit", txn.BeforeCommit(netErr, true), false, true},
		{"FnErrorOnALiveConnection", txn.BeforeCommit(errors.New("fn's own"), false), false, false},
		{"DialFailed", txn.BeginFailed(&pgconn.ConnectError{}), false, true},
		{"BeginRefusedByTheServer", txn.BeginFailed(&pgconn.PgError{Severity: "ERROR", Code: "3D000"}), false, false},
		{"ClosedBeforeCommit", txn.ReadyToCommit(context.Background(), true), false, true},
		// A server whose lc_messages is German translates Severity, not SeverityUnlocalized.
		{"TranslatedErrorAtCommit", txn.AfterCommit(&pgconn.PgError{Severity: "FEHLER", SeverityUnlocalized: "ERROR", Code: "23505"}), false, false},
		{"TranslatedErrorOnBegin", txn.BeginFailed(&pgconn.PgError{Severity: "FEHLER", SeverityUnlocalized: "ERROR", Code: "22023"}), false, false},
		{"TranslatedFatalBeforeCommit", txn.BeforeCommit(&pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01"}, false), false, true},
		{"TranslatedPanicDuringCommit", txn.AfterCommit(&pgconn.PgError{Severity: "PANIK", SeverityUnlocalized: "PANIC", Code: "XX000"}), true, false},
		{"CommitNeverSent", txn.AfterCommit(txn.CommitNotSent(context.Canceled)), false, false},
		// RunDB's check before COMMIT met a worker out of reach: COMMIT was never sent.
		{"WorkerUnreachableCommitNeverSent", txn.AfterCommit(txn.CommitNotSent(&pgconn.PgError{Severity: "ERROR", Code: "08006"})), false, true},
		// fn ran COMMIT itself, then a statement of its failed: its work may be committed.
		{"WorkerUnreachableAfterFnsCommit", txn.BeforeCommit(fmt.Errorf("%w (and %w)", &pgconn.PgError{Severity: "ERROR", Code: "08006"}, txn.ErrTxEnded), false), false, false},
		{"ConnectionLostAfterFnsCommit", txn.BeforeCommit(fmt.Errorf("%w (and %w)", netErr, txn.ErrTxEnded), true), false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := errors.Is(tt.err, txn.ErrCommitUnknown); got != tt.unknown {
				t.Errorf("unknown = %v, want %v (%v)", got, tt.unknown, tt.err)
			}
			if got := txn.Retryable(context.Background(), tt.err); got != tt.retryable {
				t.Errorf("retryable = %v, want %v (%v)", got, tt.retryable, tt.err)
			}
		})
	}
	t.Run("CtxDoneBeforeCommit", func(t *testing.T) {
		err := txn.ReadyToCommit(cancelled, false)
		if !errors.Is(err, context.Canceled) || errors.Is(err, txn.ErrCommitUnknown) || txn.Retryable(cancelled, err) {
			t.Fatalf("%v: want Canceled, definite, not retried", err)
		}
	})
	t.Run("WrappingKeepsTheCause", func(t *testing.T) {
		pgErr := &pgconn.PgError{Severity: "FATAL", Code: "57P01"}
		err := txn.BeforeCommit(fmt.Errorf("fn: %w", pgErr), true)
		var got *pgconn.PgError
		if !errors.As(err, &got) || got != pgErr || err.Error() != "fn: "+pgErr.Error() {
			t.Fatalf("%v: the cause is lost", err)
		}
	})
}
