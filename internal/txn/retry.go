package txn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrCommitUnknown is lock.ErrCommitUnknown, what lock's Run and entity's
// With return (wrapped) when the connection failed after COMMIT was sent and
// before its answer arrived: the transaction may or may not have committed.
var ErrCommitUnknown = errors.New("lock: connection lost after COMMIT was sent: outcome unknown")

// errConnLost marks an error after which the connection was gone before
// COMMIT was sent: the server rolled the transaction back (it never commits
// without a COMMIT), so running it again is safe.
var errConnLost = errors.New("connection lost before commit")

// BeforeCommit marks err, which ended a transaction before its COMMIT was
// sent, as safe to retry when the connection is gone: closed is whether the
// connection was closed by then. A failed dial (*pgconn.ConnectError) and a
// FATAL or PANIC from the server (which ends the session, whatever language
// its message is in) count as gone. Otherwise err is returned as it is.
func BeforeCommit(err error, closed bool) error {
	if err == nil || errors.Is(err, errConnLost) {
		return err
	}
	var connectErr *pgconn.ConnectError
	if closed || errors.As(err, &connectErr) || sessionEnded(err) {
		return &lostError{idleEnded(err)}
	}
	return err
}

// BeginFailed marks err, the failure of BEGIN (and of getting a connection
// for it), as safe to retry unless the server answered it with an ERROR:
// nothing that could commit was sent. The severity is read from the
// unlocalized field, so a server whose lc_messages says "FEHLER" is
// understood too.
func BeginFailed(err error) error {
	return BeforeCommit(err, !serverError(err))
}

// ReadyToCommit returns the error to return instead of sending COMMIT when
// that can't succeed: ctx is done, or the connection is closed (closed).
// Nothing was committed then, and the caller rolls back.
func ReadyToCommit(ctx context.Context, closed bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("commit not sent: %w", err)
	}
	if closed {
		return &lostError{errors.New("commit not sent: connection closed")}
	}
	return nil
}

// AfterCommit classifies err, the failure of a round trip that carried
// COMMIT, sent on a connection that was open (see ReadyToCommit). An ERROR
// from the server (a deferred constraint, say; but not a connection
// exception, class 08, or an internal error, XX000, which Citus's
// coordinator raises about a worker's COMMIT), pgx.ErrTxCommitRollback, or
// the session ended by idle_in_transaction_session_timeout (25P03, which only
// fires while the server waits for a command) means the transaction did not
// commit. Anything else — the connection broke, ctx ended the wait, a FATAL
// arrived — leaves the outcome unknown, and err is wrapped in
// ErrCommitUnknown. (pgconn's SafeToRetry can't tell here: once the COMMIT
// was written, a read on a connection closed meanwhile reports "conn closed"
// as safe to retry.) Severities are read unlocalized, never from the
// translated text.
func AfterCommit(err error) error {
	if err == nil || errors.As(err, new(*notSentError)) {
		return err
	}
	if connectionException(err) || internalError(err) {
		// Reported by the server about a connection of its own (Citus's
		// coordinator about a worker): whether the worker committed is
		// unknown. Citus reports a worker's COMMIT whose answer it lost
		// as an internal error ("could not commit transaction for shard",
		// XX000), whether or not the worker committed.
		return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
	}
	if serverError(err) || errors.Is(err, pgx.ErrTxCommitRollback) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "25P03" {
		return &lostError{idleEnded(err)}
	}
	return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
}

// CommitNotSent marks err, from a commit that failed before COMMIT was
// sent (database/sql's Tx.Commit once its ctx is done), as a definite
// failure: AfterCommit returns it as it is.
func CommitNotSent(err error) error { return &notSentError{err} }

type notSentError struct{ err error }

func (e *notSentError) Error() string { return "commit not sent: " + e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

type lostError struct{ err error }

func (e *lostError) Error() string { return e.err.Error() }
func (e *lostError) Unwrap() []error {
	return []error{e.err, errConnLost}
}

// Retryable reports whether a transaction that failed with err may be run
// again: a serialization failure (40001), a deadlock (40P01), a connection
// exception the server reported (class 08: a Citus worker out of reach), or
// a connection lost before COMMIT was sent. Never after ErrCommitUnknown or
// ErrTxEnded (fn's own COMMIT may have committed), never once ctx is done,
// never for a lock or statement timeout (the caller's own bound).
func Retryable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && transient(err)
}

// transient reports whether err is one Retryable allows, ctx aside. Never
// ErrTxEnded: fn committed (or may have) by itself before the failure, so
// whatever the failure, running fn again could apply its work twice.
func transient(err error) bool {
	if err == nil || errors.Is(err, ErrCommitUnknown) || errors.Is(err, ErrTxEnded) {
		return false
	}
	if errors.Is(err, errConnLost) {
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01") || connectionException(err)
}

// connectionException reports whether err is a server's error of class 08
// (connection exception) on a connection that is itself fine: Citus's
// coordinator reports so a worker it could not reach ("08006"). Before
// COMMIT nothing was committed, and the transaction may run again; at
// COMMIT, AfterCommit makes it ErrCommitUnknown.
func connectionException(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "08")
}

// internalError reports whether err is a server's internal error (SQLSTATE
// XX000): at COMMIT the server can't vouch that nothing committed.
func internalError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "XX000"
}

// Retry is the policy of lock.Retry: Attempts in all, waiting a random time
// in [Backoff/2, Backoff] before the second, doubling up to MaxBackoff
// (which caps the first backoff too).
type Retry struct {
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Default backoffs of lock.Retry.
const (
	DefaultBackoff    = 50 * time.Millisecond
	DefaultMaxBackoff = 2 * time.Second
)

// Do calls attempt until it succeeds, fails with an error Retryable refuses,
// or r.Attempts calls have been made. It returns the last error; when an
// attempt was retried, the error says how many were made. The wait between
// attempts honours ctx: once ctx is done, an error that would otherwise have
// been retried also matches ctx.Err(), whether ctx ended during the wait or
// during the attempt.
func (r Retry) Do(ctx context.Context, attempt func() error) error {
	backoff, maxBackoff := r.Backoff, r.MaxBackoff
	if backoff <= 0 {
		backoff = DefaultBackoff
	}
	if maxBackoff <= 0 {
		maxBackoff = DefaultMaxBackoff
	}
	backoff = min(backoff, maxBackoff)
	for n := 1; ; n++ {
		err := attempt()
		if err != nil && n < r.Attempts && transient(err) && ctx.Err() != nil {
			// It would have been retried but for ctx, which ended during
			// the attempt: say so, as the wait below does.
			err = Classify(ctx, err)
		}
		if err == nil || n >= r.Attempts || !Retryable(ctx, err) {
			if err != nil && n > 1 {
				err = fmt.Errorf("after %d attempts: %w", n, err)
			}
			return err
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("after %d attempts: %w", n, Classify(ctx, err))
		case <-t.C:
		}
		backoff = min(backoff, maxBackoff/2) * 2 // no overflow
		backoff = min(backoff, maxBackoff)
	}
}
