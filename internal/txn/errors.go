package txn

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors the lock package exports; they live here so that payment can
// classify errors the same way without an import cycle.
var (
	ErrLockTimeout = errors.New("lock: lock_timeout expired while waiting for the lock")
	ErrDeadlock    = errors.New("lock: deadlock detected")
	ErrReentrant   = errors.New("lock: key is already held by the transaction running this fn; use its tx instead of starting another")
)

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
