// Package txn holds the transaction machinery that lock.Run and
// payment.Repository.With share: the BEGIN statement with its per-transaction
// settings, the pgx.Tx handed to fn, the context marker that detects a nested
// call for a key already held, and the cleanup rollback.
package txn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Settings are the per-transaction limits applied with set_config(..., true),
// the function form of SET LOCAL.
type Settings struct {
	LockTimeout      time.Duration
	IdleTimeout      time.Duration
	StatementTimeout time.Duration
	// ConnCheck sets client_connection_check_interval too. Set it only for a
	// server that accepts it: see Settings.Probe.
	ConnCheck bool
}

// DefaultIdleTimeout is the idle-in-transaction limit when none is given.
const DefaultIdleTimeout = time.Minute

// NewSettings applies the documented defaults of lock.Options: a zero idle
// timeout means DefaultIdleTimeout, a negative one the server's setting.
func NewSettings(lockTimeout, idleTimeout, statementTimeout time.Duration) Settings {
	switch {
	case idleTimeout == 0:
		idleTimeout = DefaultIdleTimeout
	case idleTimeout < 0:
		idleTimeout = 0
	}
	return Settings{LockTimeout: lockTimeout, IdleTimeout: idleTimeout, StatementTimeout: statementTimeout}
}

// SetSQL returns one statement that applies s to the current transaction.
// With nothing to apply it is a bare SELECT, so that callers that pipeline
// it need not count statements.
//
// client_connection_check_interval (s.ConnCheck) makes a backend that waits
// for a lock notice within a second that its client went away (a cancelled
// caller whose connection pgx closed), so it leaves the lock queue instead
// of waiting for its turn only to find nobody there.
func (s Settings) SetSQL() string {
	var sets []string
	if s.ConnCheck {
		sets = append(sets, "set_config('"+connCheckSetting+"', '"+connCheckMillis+"', true)")
	}
	for _, set := range []struct {
		name string
		d    time.Duration
	}{
		{"lock_timeout", s.LockTimeout},
		{"idle_in_transaction_session_timeout", s.IdleTimeout},
		{"statement_timeout", s.StatementTimeout},
	} {
		if set.d > 0 {
			sets = append(sets, fmt.Sprintf("set_config('%s', '%d', true)", set.name, max(set.d.Milliseconds(), 1)))
		}
	}
	if len(sets) == 0 {
		return "SELECT"
	}
	return "SELECT " + strings.Join(sets, ", ")
}

// BeginSQL is the statement that begins a READ COMMITTED transaction with s
// applied, for the simple protocol: one message, one round trip. READ
// COMMITTED whatever default_transaction_isolation says: each statement after
// the lock wait then sees what the previous holder committed.
func (s Settings) BeginSQL() string { return SQLBegin + "; " + s.SetSQL() }

// SQLBegin begins the transaction.
const SQLBegin = "BEGIN ISOLATION LEVEL READ COMMITTED"

// LockSQL returns "SELECT expr" followed by a sqlcommenter-style comment that
// names keys (lock.Key.String values, which escape everything but
// [A-Za-z0-9_.~-], so no key can end the comment or the quoted value).
// pg_stat_activity shows it for a waiting backend; `paylock locks` reads it.
func LockSQL(expr string, keys ...string) string {
	return "SELECT " + expr + " /*paylock_key='" + strings.Join(keys, ",") + "'*/"
}

type heldKey struct{}

// Held reports whether ctx was passed to fn by a call that holds the lock id.
func Held(ctx context.Context, id int64) bool {
	for _, h := range heldIDs(ctx) {
		if h == id {
			return true
		}
	}
	return false
}

// WithHeld returns a ctx recording that its caller holds the lock ids.
func WithHeld(ctx context.Context, ids ...int64) context.Context {
	held := append(append([]int64(nil), heldIDs(ctx)...), ids...)
	return context.WithValue(ctx, heldKey{}, held)
}

func heldIDs(ctx context.Context) []int64 {
	ids, _ := ctx.Value(heldKey{}).([]int64)
	return ids
}

// Rollback rolls back tx even when ctx is already cancelled, bounded by a
// short timeout; pgx closes the connection if that fails.
func Rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// ErrManaged is what Commit and Rollback on a Managed transaction return.
var ErrManaged = errors.New("lock: the transaction is managed by paylock: return nil from fn to commit, an error to roll back")

// Managed is the pgx.Tx handed to fn. Its statements run on the connection
// that holds the transaction. It refuses Commit and Rollback (ErrManaged): the
// caller ends the transaction. After Close every method returns
// pgx.ErrTxClosed, so a fn that leaks tx can't run statements on a
// connection that is back in the pool.
//
// A real pgx transaction object is needed only for savepoints (Begin) and
// LargeObjects; when the transaction was begun without pgx's BeginTx it is
// made on first use, at the cost of one round trip.
type Managed struct {
	conn   *pgx.Conn
	mu     sync.Mutex
	closed bool
	tx     pgx.Tx
}

// NewManaged returns the Managed transaction running on conn. tx may be nil
// when conn's transaction was begun by other means.
func NewManaged(conn *pgx.Conn, tx pgx.Tx) *Managed { return &Managed{conn: conn, tx: tx} }

// Close makes every later call fail with pgx.ErrTxClosed.
func (m *Managed) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

func (m *Managed) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// realTx returns a pgx transaction object for m's connection.
func (m *Managed) realTx(ctx context.Context) (pgx.Tx, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, pgx.ErrTxClosed
	}
	if m.tx == nil {
		// The connection is already in the transaction: this statement does
		// nothing but give pgx its transaction object.
		tx, err := m.conn.BeginTx(ctx, pgx.TxOptions{BeginQuery: "SELECT NULL"})
		if err != nil {
			return nil, err
		}
		m.tx = tx
	}
	return m.tx, nil
}

// Begin starts a pseudo nested transaction (a savepoint).
func (m *Managed) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := m.realTx(ctx)
	if err != nil {
		return nil, err
	}
	return tx.Begin(ctx)
}

// LargeObjects returns the large object API of the transaction.
func (m *Managed) LargeObjects() pgx.LargeObjects {
	tx, err := m.realTx(context.Background())
	if err != nil {
		return pgx.LargeObjects{}
	}
	return tx.LargeObjects()
}

// Conn returns the connection the transaction runs on.
func (m *Managed) Conn() *pgx.Conn { return m.conn }

// Commit refuses: see Managed.
func (m *Managed) Commit(context.Context) error { return ErrManaged }

// Rollback refuses: see Managed.
func (m *Managed) Rollback(context.Context) error { return ErrManaged }

// CopyFrom runs COPY FROM in the transaction.
func (m *Managed) CopyFrom(ctx context.Context, t pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if m.isClosed() {
		return 0, pgx.ErrTxClosed
	}
	return m.conn.CopyFrom(ctx, t, cols, src)
}

// SendBatch sends a batch in the transaction.
func (m *Managed) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if m.isClosed() {
		return closedBatch{}
	}
	return m.conn.SendBatch(ctx, b)
}

// Prepare prepares a statement on the transaction's connection.
func (m *Managed) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if m.isClosed() {
		return nil, pgx.ErrTxClosed
	}
	return m.conn.Prepare(ctx, name, sql)
}

// Exec runs a statement in the transaction.
func (m *Managed) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if m.isClosed() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return m.conn.Exec(ctx, sql, args...)
}

// Query runs a query in the transaction.
func (m *Managed) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if m.isClosed() {
		return nil, pgx.ErrTxClosed
	}
	return m.conn.Query(ctx, sql, args...)
}

// QueryRow runs a query in the transaction.
func (m *Managed) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if m.isClosed() {
		return closedRow{}
	}
	return m.conn.QueryRow(ctx, sql, args...)
}

type closedRow struct{}

func (closedRow) Scan(...any) error { return pgx.ErrTxClosed }

type closedBatch struct{}

func (closedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, pgx.ErrTxClosed }
func (closedBatch) Query() (pgx.Rows, error)         { return nil, pgx.ErrTxClosed }
func (closedBatch) QueryRow() pgx.Row                { return closedRow{} }
func (closedBatch) Close() error                     { return pgx.ErrTxClosed }
func (closedBatch) Tx() pgx.Tx                       { return nil }
