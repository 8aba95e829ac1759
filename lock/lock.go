package lock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/english"
	"github.com/paylock/paylock/internal/txn"
)

// Errors matched with errors.Is. The *pgconn.PgError behind ErrLockTimeout
// and ErrDeadlock stays reachable with errors.As.
var (
	// ErrLockTimeout: the wait exceeded Options.LockTimeout (SQLSTATE 55P03).
	ErrLockTimeout = txn.ErrLockTimeout
	// ErrDeadlock: PostgreSQL broke a deadlock by failing this transaction
	// (SQLSTATE 40P01). Retrying the whole transaction is safe.
	ErrDeadlock = txn.ErrDeadlock
	// ErrIdleTimeout: the transaction sat idle (fn ran no statement) for
	// longer than Options.IdleTimeout, so the server ended it (SQLSTATE
	// 25P03, reachable with errors.As) and nothing of it was committed.
	// Retrying is safe, with an fn that does not stall.
	ErrIdleTimeout = txn.ErrIdleTimeout
	// ErrReentrant: Run (or [github.com/paylock/paylock/entity.Repository.With])
	// was called, from inside fn, for a key that the enclosing call already
	// holds. A second transaction would wait for the first forever, so it is
	// refused; use fn's tx instead.
	ErrReentrant = txn.ErrReentrant
	// ErrManaged: fn called Commit or Rollback on the tx that Run manages.
	ErrManaged = txn.ErrManaged
	// ErrTxEnded: fn ended the transaction itself, with COMMIT or ROLLBACK
	// in SQL. What it committed stays committed; the lock was released when
	// it did; nothing was committed after that.
	ErrTxEnded = txn.ErrTxEnded
	// ErrInTransaction: Run was given a *pgx.Conn or *pgxpool.Conn that its
	// caller had already begun a transaction on. PostgreSQL only warns about
	// a second BEGIN, so Run's COMMIT would end the caller's transaction; it
	// refuses instead, before running anything. Take the lock in that
	// transaction with Acquire.
	ErrInTransaction = errors.New("lock: Run given a connection already in a transaction")
	// ErrRowsOpen: fn returned while a result it started on tx was still
	// open (Rows not closed, a Row not scanned, BatchResults not closed), so
	// COMMIT could not be sent. Nothing was committed; the connection, which
	// was left mid-result, was closed.
	ErrRowsOpen = txn.ErrRowsOpen
)

// Beginner starts a transaction. *pgxpool.Pool, *pgxpool.Conn and *pgx.Conn
// satisfy it.
type Beginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// DefaultIdleTimeout is the idle_in_transaction_session_timeout Run applies
// when Options.IdleTimeout is zero.
const DefaultIdleTimeout = time.Minute

// Options bound how long Run waits for and holds a lock. The zero value is
// ready to use: wait as long as ctx allows, no statement timeout beyond the
// server's, and DefaultIdleTimeout.
type Options struct {
	// LockTimeout bounds the wait for the lock (SET LOCAL lock_timeout).
	// Past it Run fails with ErrLockTimeout. Zero: no limit but ctx, whatever
	// lock_timeout the database or role sets (Run sets it to 0 for the
	// transaction).
	// [github.com/paylock/paylock/entity.Repository.With] also bounds with
	// it the wait in its Repository's in-process queue, so a call waits at
	// most about twice LockTimeout in all.
	LockTimeout time.Duration
	// IdleTimeout bounds how long the transaction may sit idle between
	// statements while it holds the lock (SET LOCAL
	// idle_in_transaction_session_timeout): a hung or partitioned holder is
	// disconnected by the server and the next waiter proceeds. Zero means
	// DefaultIdleTimeout; negative leaves the server's setting.
	IdleTimeout time.Duration
	// StatementTimeout bounds each statement, including the lock wait (SET
	// LOCAL statement_timeout). Zero leaves the server's setting.
	StatementTimeout time.Duration
	// Retry runs the transaction again after a failure that left nothing
	// committed; see [Retry]. The zero value makes one attempt.
	Retry Retry
}

// settings returns the per-transaction settings o stands for.
func (o Options) settings() txn.Settings {
	return txn.NewSettings(o.LockTimeout, o.IdleTimeout, o.StatementTimeout)
}

// Acquire takes the transaction-scoped advisory lock for key in tx
// (pg_advisory_xact_lock) and blocks until it is granted or ctx is done. The
// lock is held until tx ends; taking it again in the same tx returns at once.
//
// When ctx is done first, Acquire returns promptly with an error matching
// ctx.Err(). pgx then closes the connection (a pool discards it rather than
// hand it out mid-wait) and tx is unusable: roll it back.
func Acquire(ctx context.Context, tx pgx.Tx, key Key) error {
	if err := key.Validate(); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, txn.AcquireSQL("$1", key.String()), pgx.QueryExecModeExec, key.ID())
	if err != nil {
		return fmt.Errorf("lock: acquire %s: %w", key, txn.Classify(ctx, err))
	}
	return nil
}

// TryAcquire takes the lock for key in tx if it is free
// (pg_try_advisory_xact_lock) and reports whether it did. It never waits for
// another holder.
func TryAcquire(ctx context.Context, tx pgx.Tx, key Key) (bool, error) {
	if err := key.Validate(); err != nil {
		return false, err
	}
	var ok bool
	err := tx.QueryRow(ctx, txn.TryAcquireSQL("$1", key.String()), pgx.QueryExecModeExec, key.ID()).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("lock: try acquire %s: %w", key, txn.Classify(ctx, err))
	}
	return ok, nil
}

// AcquireAll takes the locks for all keys in tx, in one statement, in
// ascending order of ID whatever order they are given in, so two callers
// naming the same keys in different orders cannot deadlock each other.
// Duplicate keys are taken once. It blocks like Acquire.
func AcquireAll(ctx context.Context, tx pgx.Tx, keys ...Key) error {
	ids := make([]int64, 0, len(keys))
	for _, k := range keys {
		if err := k.Validate(); err != nil {
			return err
		}
		ids = append(ids, k.ID())
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	// AcquireAllSQL takes the locks in the array's order: ascending.
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.String()
	}
	if _, err := tx.Exec(ctx, txn.AcquireAllSQL(names...), pgx.QueryExecModeExec, ids); err != nil {
		return fmt.Errorf("lock: acquire %s: %w", english.Count(len(ids), "key", "keys"), txn.Classify(ctx, err))
	}
	return nil
}

// Run runs fn in a transaction that holds the lock for key, with the zero
// Options. See [Options.Run].
func Run(ctx context.Context, db Beginner, key Key, fn func(ctx context.Context, tx pgx.Tx) error) error {
	return Options{}.Run(ctx, db, key, fn)
}

// Run begins a READ COMMITTED transaction on db, takes the lock for key,
// blocking until it is granted, runs fn and commits. If fn returns an error, Run rolls back and
// returns it; if fn panics, Run rolls back and panics again; either way the
// lock ends with the transaction. The package doc holds the contract: what
// fn may do with tx, the errors, what ctx governs (the begin, the lock wait,
// fn and the commit), nested calls, retries under o.Retry (see [Retry]) and
// the unknown outcome of a lost COMMIT ([ErrCommitUnknown]).
//
// Run is safe for concurrent use. Given a connection its caller has already
// begun a transaction on, it fails with [ErrInTransaction].
func (o Options) Run(ctx context.Context, db Beginner, key Key, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if fn == nil {
		return errors.New("lock: Run called with a nil fn")
	}
	if err := key.Validate(); err != nil {
		return err
	}
	if inTransaction(db) {
		return fmt.Errorf("lock: run %s: %w", key, ErrInTransaction)
	}
	begin := func(ctx context.Context) (*pgxTx, error) { return o.begin(ctx, db, key) }
	return txn.Run(ctx, o.Retry.policy(), key.String(), key.ID(), begin, func(ctx context.Context, tx *pgxTx) error {
		return fn(ctx, tx.m)
	})
}

// begin begins one attempt of Run on db. When db gives its connection up
// front (a pool, a pool's connection, a connection), the settings include
// client_connection_check_interval if that server accepts it (see
// txn.Settings.Probe); another Beginner's BEGIN leaves it as the server has it.
func (o Options) begin(ctx context.Context, db Beginner, key Key) (*pgxTx, error) {
	t := &pgxTx{key: key}
	conn := (*pgx.Conn)(nil)
	switch db := db.(type) {
	case *pgxpool.Pool:
		pc, err := db.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		t.release, conn = pc.Release, pc.Conn()
	case *pgxpool.Conn:
		conn = db.Conn()
	case *pgx.Conn:
		conn = db
	}
	s := o.settings()
	if conn != nil {
		var err error
		if s, err = s.Probe(ctx, conn); err != nil {
			t.Release()
			return nil, err
		}
		db = conn
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{BeginQuery: s.BeginSQL(), CommitQuery: txn.CheckSQL + "; COMMIT"})
	if err != nil {
		t.Release()
		return nil, err
	}
	t.tx, t.m = tx, txn.NewManaged(tx.Conn(), tx)
	return t, nil
}

// inTransaction reports whether db is a connection in a transaction (or a
// failed one) that its caller began: BEGIN on it would only warn.
func inTransaction(db Beginner) bool {
	var conn *pgx.Conn
	switch db := db.(type) {
	case *pgxpool.Conn:
		conn = db.Conn()
	case *pgx.Conn:
		conn = db
	default:
		return false
	}
	s := conn.PgConn().TxStatus()
	return s == 'T' || s == 'E'
}

// pgxTx is Run's transaction for txn.Run.
type pgxTx struct {
	key     Key
	tx      pgx.Tx
	m       *txn.Managed // what fn gets
	release func()       // gives a pool's connection back, if Run took one
}

func (t *pgxTx) Lock(ctx context.Context) error { return Acquire(ctx, t.tx, t.key) }

func (t *pgxTx) FnDone(fnErr error) error {
	if fnErr != nil {
		return t.m.FnError(fnErr)
	}
	return t.m.Finish()
}

func (t *pgxTx) Closed() bool { return t.tx.Conn().IsClosed() }

// Commit sends CheckSQL and COMMIT in one round trip (the tx's CommitQuery),
// so that a transaction fn began after ending Run's is not committed. A
// failed transaction is rolled back instead, as COMMIT would do.
func (t *pgxTx) Commit(ctx context.Context) error {
	t.m.Close()
	if t.tx.Conn().PgConn().TxStatus() == 'E' {
		txn.Rollback(ctx, t.tx.Conn().PgConn(), t.tx)
		return pgx.ErrTxCommitRollback
	}
	err := t.tx.Commit(ctx)
	if txn.EndedByFn(err) {
		return txn.CommitNotSent(ErrTxEnded)
	}
	return err
}

func (t *pgxTx) Rollback(ctx context.Context) {
	t.m.Close()
	txn.Rollback(ctx, t.tx.Conn().PgConn(), t.tx)
}

func (t *pgxTx) Release() {
	if t.release != nil {
		t.release()
	}
}
