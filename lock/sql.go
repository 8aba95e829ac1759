package lock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"

	"github.com/paylock/paylock/internal/txn"
)

// The database/sql variants serve callers that hold a *sql.DB rather than a
// pgx pool (sqlx, sqlc on database/sql, GORM underneath), with any
// PostgreSQL driver. Their statements carry the lock id as a literal and take
// no parameters, so drivers run them with the simple protocol: nothing is
// prepared per key.

// AcquireTx is Acquire for a database/sql transaction.
func AcquireTx(ctx context.Context, tx *sql.Tx, key Key) error {
	if err := key.Validate(); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, literalLockSQL("pg_advisory_xact_lock", key)); err != nil {
		return fmt.Errorf("lock: acquire %s: %w", key, txn.Classify(ctx, err))
	}
	return nil
}

// TryAcquireTx is TryAcquire for a database/sql transaction.
func TryAcquireTx(ctx context.Context, tx *sql.Tx, key Key) (bool, error) {
	if err := key.Validate(); err != nil {
		return false, err
	}
	var ok bool
	if err := tx.QueryRowContext(ctx, literalLockSQL("pg_try_advisory_xact_lock", key)).Scan(&ok); err != nil {
		return false, fmt.Errorf("lock: try acquire %s: %w", key, txn.Classify(ctx, err))
	}
	return ok, nil
}

func literalLockSQL(fn string, key Key) string {
	return lockSQL(fn+"("+strconv.FormatInt(key.ID(), 10)+")", key)
}

// RunDB is Run for a *sql.DB, with the zero Options. See Options.RunDB.
func RunDB(ctx context.Context, db *sql.DB, key Key, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return Options{}.RunDB(ctx, db, key, fn)
}

// RunDB is Options.Run for a *sql.DB: it begins a READ COMMITTED transaction,
// applies o and takes the lock in one round trip, runs fn, and commits; it
// rolls back if fn returns an error (returned unchanged) or panics (raised
// again). fn must not commit or roll back tx: database/sql offers no way to
// refuse it, and committing early would release the lock early.
func (o Options) RunDB(ctx context.Context, db *sql.DB, key Key, fn func(ctx context.Context, tx *sql.Tx) error) (err error) {
	if fn == nil {
		return errors.New("lock: RunDB called with a nil fn")
	}
	if err := key.Validate(); err != nil {
		return err
	}
	if txn.Held(ctx, key.ID()) {
		return fmt.Errorf("lock: run %s: %w", key, ErrReentrant)
	}
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return fmt.Errorf("lock: run %s: begin: %w", key, txn.Classify(ctx, err))
	}
	done := false
	defer func() {
		if !done {
			tx.Rollback() // fn failed or panicked; a panic continues after this
		}
	}()
	setAndLock := o.settings().SetSQL() + "; " + literalLockSQL("pg_advisory_xact_lock", key)
	if _, err := tx.ExecContext(ctx, setAndLock); err != nil {
		return fmt.Errorf("lock: acquire %s: %w", key, txn.Classify(ctx, err))
	}
	if err := fn(txn.WithHeld(ctx, key.ID()), tx); err != nil {
		return err
	}
	done = true
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("lock: run %s: commit: %w", key, txn.Classify(ctx, err))
	}
	return nil
}
