package txn

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors that package lock exports, each under one name there
// (lock.ErrLockTimeout, ...): they live here, where the engine returns them,
// because lock imports this package. Their docs are lock's.
var (
	ErrLockTimeout = errors.New("lock: lock_timeout expired while waiting for the lock")
	ErrDeadlock    = errors.New("lock: deadlock detected")
	ErrReentrant   = errors.New("lock: key already held by the calling fn's transaction: use its tx")
	ErrIdleTimeout = errors.New("lock: transaction idle longer than IdleTimeout: ended, nothing committed")
)

// idleEnded adds ErrIdleTimeout to err when it holds SQLSTATE 25P03: the
// server ended the session, idle in the transaction for longer than
// idle_in_transaction_session_timeout.
func idleEnded(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "25P03" && !errors.Is(err, ErrIdleTimeout) {
		return fmt.Errorf("%w: %w", ErrIdleTimeout, err)
	}
	return err
}

// Classify adds paylock's sentinels to err: ErrLockTimeout for SQLSTATE
// 55P03, ErrDeadlock for 40P01, and ctx.Err() when ctx is done, so that
// errors.Is matches them while errors.As still finds the *pgconn.PgError.
func Classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "55P03":
			if !errors.Is(err, ErrLockTimeout) {
				err = fmt.Errorf("%w: %w", ErrLockTimeout, err)
			}
		case "40P01":
			if !errors.Is(err, ErrDeadlock) {
				err = fmt.Errorf("%w: %w", ErrDeadlock, err)
			}
		}
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		err = fmt.Errorf("%w: %w", ctxErr, err)
	}
	return err
}

// severity returns e's severity in English whatever the server's
// lc_messages: the unlocalized field PostgreSQL 9.6 and later send, else the
// localized one (older servers and poolers such as pgbouncer, which speak
// English).
func severity(e *pgconn.PgError) string {
	if e.SeverityUnlocalized != "" {
		return e.SeverityUnlocalized
	}
	return e.Severity
}

// ServerError reports whether err holds an ERROR from the server: the
// statement failed and the session lives on. A FATAL or PANIC ended the
// session.
func ServerError(err error) bool { return serverError(err) }

func serverError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && severity(pgErr) == "ERROR"
}

// sessionEnded reports whether err holds a FATAL or PANIC from the server,
// which closes the connection after sending it.
func sessionEnded(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	s := severity(pgErr)
	return s == "FATAL" || s == "PANIC"
}

// StalePlan reports whether err is PostgreSQL refusing a prepared statement
// whose result type changed under it ("cached plan must not change result
// type"): SQLSTATE 0A000 raised by the server's RevalidateCachedQuery. The
// routine name, unlike the message, does not follow lc_messages; the English
// message is accepted too, for a server that does not send the routine.
func StalePlan(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "0A000" &&
		(pgErr.Routine == "RevalidateCachedQuery" || strings.Contains(pgErr.Message, "cached plan must not change result type"))
}
