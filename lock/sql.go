package lock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/txn"
)

// AcquireTx is Acquire for a database/sql transaction; see the package doc,
// "database/sql", for how its statement is sent.
func AcquireTx(ctx context.Context, tx *sql.Tx, key Key) error {
	if err := key.Validate(); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, txn.AcquireSQL(literalID(key), key.String())); err != nil {
		return fmt.Errorf("lock: acquire %s: %w", key, txn.Classify(ctx, err))
	}
	return nil
}

// TryAcquireTx is TryAcquire for a database/sql transaction.
func TryAcquireTx(ctx context.Context, tx *sql.Tx, key Key) (bool, error) {
	if err := key.Validate(); err != nil {
		return false, err
	}
	// One row if the lock was taken, none if not.
	res, err := tx.ExecContext(ctx, txn.TryAcquireRowSQL(literalID(key), key.String()))
	if err != nil {
		return false, fmt.Errorf("lock: try acquire %s: %w", key, txn.Classify(ctx, err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("lock: try acquire %s: %w", key, err)
	}
	return n == 1, nil
}

// literalID is key's lock id as an SQL literal: database/sql's statements
// take no parameters (see the package doc, "database/sql").
func literalID(key Key) string { return strconv.FormatInt(key.ID(), 10) }

// RunDB is Run for a *sql.DB, with the zero Options. See [Options.RunDB].
func RunDB(ctx context.Context, db *sql.DB, key Key, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return Options{}.RunDB(ctx, db, key, fn)
}

// RunDB is [Options.Run] for a *sql.DB, with the same contract: it begins a
// transaction, applies o and takes the lock for key (the two in one round
// trip), runs fn and commits, rolling back if fn returns an error (returned unchanged,
// unless the connection was lost meanwhile) or panics (raised again). What
// differs, since database/sql can't refuse fn's tx.Commit and exposes only
// what each driver chooses to — how fn's own commit is caught, which
// failures are classified and retried with a driver other than pgx's
// stdlib, the round trips — is in the package doc, "database/sql".
func (o Options) RunDB(ctx context.Context, db *sql.DB, key Key, fn func(ctx context.Context, tx *sql.Tx) error) error {
	if fn == nil {
		return errors.New("lock: RunDB called with a nil fn")
	}
	if err := key.Validate(); err != nil {
		return err
	}
	begin := func(ctx context.Context) (*sqlTx, error) { return o.beginDB(ctx, db, key) }
	return txn.Run(ctx, o.Retry.policy(), key.String(), key.ID(), begin, func(ctx context.Context, tx *sqlTx) error {
		return fn(ctx, tx.tx)
	})
}

// beginDB begins one attempt of RunDB, on a connection of its own so that
// it can ask the driver about it.
func (o Options) beginDB(ctx context.Context, db *sql.DB, key Key) (*sqlTx, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	s := o.settings()
	err = conn.Raw(func(dc any) error {
		if c, ok := dc.(interface{ Conn() *pgx.Conn }); ok {
			s, err = s.Probe(ctx, c.Conn())
			return err
		}
		return nil
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &sqlTx{conn: conn, tx: tx, key: key, lockSQL: s.ReadWriteSQL() + s.SetSQL() + "; " + txn.AcquireSQL(literalID(key), key.String())}, nil
}

// sqlTx is RunDB's transaction for txn.Run.
type sqlTx struct {
	conn    *sql.Conn
	tx      *sql.Tx
	key     Key
	lockSQL string // the settings and the lock, one round trip
}

func (t *sqlTx) Lock(ctx context.Context) error {
	if _, err := t.tx.ExecContext(ctx, t.lockSQL); err != nil {
		return fmt.Errorf("lock: acquire %s: %w", t.key, txn.Classify(ctx, err))
	}
	return nil
}

// FnDone reports a transaction that fn ended itself (COMMIT or ROLLBACK run
// through tx), which pgx's stdlib driver can tell: its connection is out of
// any transaction, or was when the server last said (a connection lost
// after fn's COMMIT: fn's work may be committed, and Retry must not run it
// again). Other drivers can't, and database/sql's own Commit then fails
// with an error of the driver's.
func (t *sqlTx) FnDone(fnErr error) error {
	ended := false
	_ = t.conn.Raw(func(dc any) error {
		if c, ok := dc.(interface{ Conn() *pgx.Conn }); ok {
			pc := c.Conn().PgConn()
			// TxStatus is the status of the server's last ReadyForQuery,
			// kept when the connection closes.
			ended = !pc.IsBusy() && pc.TxStatus() == 'I'
		}
		return nil
	})
	switch {
	case !ended:
		return fnErr
	case fnErr != nil:
		return fmt.Errorf("%w (and %w)", fnErr, txn.ErrTxEnded)
	}
	return txn.ErrTxEnded
}

// Closed asks the driver whether the connection is closed.
func (t *sqlTx) Closed() bool {
	closed := false
	err := t.conn.Raw(func(dc any) error {
		switch c := dc.(type) {
		case interface{ Conn() *pgx.Conn }:
			closed = c.Conn().IsClosed()
		case driver.Validator:
			closed = !c.IsValid()
		}
		return nil
	})
	return closed || err != nil
}

// Commit sends CheckSQL, then COMMIT: database/sql can't put both in one
// round trip, so RunDB's commit costs two. A transaction fn began after
// ending RunDB's ("COMMIT; BEGIN" in one statement) is rolled back, never
// committed.
func (t *sqlTx) Commit(ctx context.Context) error {
	if _, err := t.tx.ExecContext(ctx, txn.CheckSQL); err != nil {
		_ = t.tx.Rollback()
		if txn.EndedByFn(err) {
			return txn.CommitNotSent(ErrTxEnded)
		}
		return txn.CommitNotSent(txn.BeforeCommit(err, t.Closed()))
	}
	err := t.tx.Commit()
	if errors.Is(err, sql.ErrTxDone) || (err != nil && err == ctx.Err()) {
		// database/sql refused before sending COMMIT: ctx ended and it
		// rolled back (or is rolling back) by itself.
		return txn.CommitNotSent(err)
	}
	return err
}

func (t *sqlTx) Rollback(context.Context) { _ = t.tx.Rollback() }
func (t *sqlTx) Release()                 { _ = t.conn.Close() }
