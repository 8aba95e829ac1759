package txn

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Errors about what fn did with the transaction it was given; lock and
// entity export them.
var (
	// ErrManaged is what Commit and Rollback on a Managed transaction return.
	ErrManaged = errors.New("lock: transaction managed by paylock: return from fn to end it")
	// ErrTxEnded: fn ended the transaction itself with COMMIT or ROLLBACK in
	// SQL. The connection was idle when fn returned, or in a transaction fn
	// began afterwards, which CheckSQL refuses to commit.
	ErrTxEnded = errors.New("lock: fn ended the transaction itself (COMMIT or ROLLBACK in SQL)")
	// ErrRowsOpen: fn returned while a result it started on tx was still
	// being read (Rows not closed, a Row not scanned, BatchResults not
	// closed). COMMIT was never sent.
	ErrRowsOpen = errors.New("lock: fn returned with a query result still open: nothing committed")
)

// Managed is the pgx.Tx handed to fn. Its statements run on the connection
// that holds the transaction. It refuses Commit and Rollback (ErrManaged):
// the caller ends the transaction.
//
// Once Close returns, nothing reached through m runs SQL: every method of m
// and of the savepoints Begin returned fails with pgx.ErrTxClosed, Conn
// returns nil, and LargeObjects returns the zero value. A statement running
// through m when Close is called (from a goroutine fn left behind) finishes
// first: Close waits for it. The large objects of LargeObjects run on a pgx
// transaction object: the caller's, which dies when the caller ends it, or
// one m made, which End closes. A *pgx.Conn taken from Conn while fn ran is
// the raw connection and nothing can stop it: it must not be kept.
type Managed struct {
	conn *pgx.Conn

	// mu is held for reading for the length of every call that uses conn,
	// and for writing by Close.
	mu     sync.RWMutex
	closed bool

	txMu  sync.Mutex
	tx    pgx.Tx // a pgx transaction object for LargeObjects; nil until needed
	ownTx bool   // tx was made by m, and End closes it

	savepoints atomic.Int64
	// ended: a statement fn ran through Exec left the connection idle, out
	// of the transaction, even if a later one began another.
	ended atomic.Bool
}

// NewManaged returns the Managed transaction running on conn. tx is the pgx
// transaction the caller began, which it ends itself; nil when conn's
// transaction was begun by other means (then LargeObjects makes a pgx
// transaction object, at the cost of a round trip, and End closes it with
// another).
func NewManaged(conn *pgx.Conn, tx pgx.Tx) *Managed { return &Managed{conn: conn, tx: tx} }

// enter reports whether m is open and, if it is, holds m.mu for reading: the
// caller releases it when its call returns.
func (m *Managed) enter() bool {
	m.mu.RLock()
	if m.closed {
		m.mu.RUnlock()
		return false
	}
	return true
}

// Close makes every later call through m fail; see Managed. It waits for a
// call in progress.
func (m *Managed) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

// Finish closes m and reports whether the transaction fn returned from can be
// committed: ErrRowsOpen when fn left a result open (the connection is busy,
// so COMMIT can't even be sent), ErrTxEnded when fn ended the transaction
// itself (the connection is idle, or was after a statement of fn's: a BEGIN
// that followed would not hold the lock; also when the connection closed
// since, as what fn committed stays committed). Otherwise nil, also when the
// connection is closed or the transaction failed: the caller's own checks
// see those.
func (m *Managed) Finish() error {
	m.Close()
	pc := m.conn.PgConn()
	switch {
	case pc.IsClosed() && m.ended.Load():
		return ErrTxEnded
	case pc.IsClosed():
		return nil
	case pc.IsBusy():
		return ErrRowsOpen
	case pc.TxStatus() == 'I', m.ended.Load():
		return ErrTxEnded
	}
	return nil
}

// FnError closes m and returns fnErr, the error fn returned, as the caller
// reports it: unchanged, unless fn ended the transaction itself, so that
// something may have been committed: then it also matches ErrTxEnded.
func (m *Managed) FnError(fnErr error) error {
	if err := m.Finish(); errors.Is(err, ErrTxEnded) {
		return fmt.Errorf("%w (and %w)", fnErr, err)
	}
	return fnErr
}

// End closes m and, if m made a pgx transaction object (for LargeObjects),
// closes that too, so that large objects fn kept fail with pgx.ErrTxClosed:
// on a connection still in the transaction by rolling it back (pgx closes the
// connection if that fails), otherwise with a round trip that does nothing
// (pgx marks its object closed only after a statement). Call it once the
// transaction is committed or must be rolled back, before the connection goes
// back to the pool. ctx may be done.
func (m *Managed) End(ctx context.Context) {
	m.Close()
	m.txMu.Lock()
	defer m.txMu.Unlock()
	if !m.ownTx {
		return
	}
	m.ownTx = false
	if pc := m.conn.PgConn(); !pc.IsClosed() && pc.TxStatus() != 'I' {
		Rollback(ctx, pc, m.tx)
		return
	}
	ctx, cancel := CleanupContext(ctx)
	defer cancel()
	_ = m.tx.Commit(ctx) // CommitQuery: SELECT NULL
}

// LargeObjects returns the large object API of the transaction, or, once m
// is closed, the zero LargeObjects, whose methods must not be called.
func (m *Managed) LargeObjects() pgx.LargeObjects {
	if !m.enter() {
		return pgx.LargeObjects{}
	}
	defer m.mu.RUnlock()
	m.txMu.Lock()
	defer m.txMu.Unlock()
	if m.tx == nil {
		// The connection is already in the transaction: these statements do
		// nothing but give pgx a transaction object, and then mark it closed.
		tx, err := m.conn.BeginTx(context.Background(), pgx.TxOptions{BeginQuery: "SELECT NULL", CommitQuery: "SELECT NULL"})
		if err != nil {
			return pgx.LargeObjects{}
		}
		m.tx, m.ownTx = tx, true
	}
	return m.tx.LargeObjects()
}

// Begin starts a pseudo nested transaction: a savepoint, which Commit
// releases and Rollback rolls back to. It dies with m.
func (m *Managed) Begin(ctx context.Context) (pgx.Tx, error) {
	if !m.enter() {
		return nil, pgx.ErrTxClosed
	}
	defer m.mu.RUnlock()
	name := "paylock_sp_" + strconv.FormatInt(m.savepoints.Add(1), 10)
	if _, err := m.conn.Exec(ctx, "SAVEPOINT "+name); err != nil {
		return nil, err
	}
	return &savepoint{m: m, name: name}, nil
}

// Conn returns the connection the transaction runs on while m is open, nil
// once it is closed. Statements run on it directly escape m: don't keep it.
func (m *Managed) Conn() *pgx.Conn {
	if !m.enter() {
		return nil
	}
	defer m.mu.RUnlock()
	return m.conn
}

// Commit refuses: see Managed.
func (m *Managed) Commit(context.Context) error { return ErrManaged }

// Rollback refuses: see Managed.
func (m *Managed) Rollback(context.Context) error { return ErrManaged }

// CopyFrom runs COPY FROM in the transaction.
func (m *Managed) CopyFrom(ctx context.Context, t pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if !m.enter() {
		return 0, pgx.ErrTxClosed
	}
	defer m.mu.RUnlock()
	return m.conn.CopyFrom(ctx, t, cols, src)
}

// SendBatch sends a batch in the transaction.
func (m *Managed) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if !m.enter() {
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	defer m.mu.RUnlock()
	return m.conn.SendBatch(ctx, b)
}

// Prepare prepares a statement on the transaction's connection.
func (m *Managed) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if !m.enter() {
		return nil, pgx.ErrTxClosed
	}
	defer m.mu.RUnlock()
	return m.conn.Prepare(ctx, name, sql)
}

// Exec runs a statement in the transaction.
func (m *Managed) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if !m.enter() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	defer m.mu.RUnlock()
	tag, err := m.conn.Exec(ctx, sql, args...)
	if m.conn.PgConn().TxStatus() == 'I' {
		m.ended.Store(true) // COMMIT or ROLLBACK; a BEGIN after it would not hold the lock
	}
	return tag, err
}

// Query runs a query in the transaction. Once m is closed it returns
// pgx.ErrTxClosed and Rows that hold it.
func (m *Managed) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !m.enter() {
		return closedRows{}, pgx.ErrTxClosed
	}
	defer m.mu.RUnlock()
	return m.conn.Query(ctx, sql, args...)
}

// QueryRow runs a query in the transaction.
func (m *Managed) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !m.enter() {
		return closedRow{}
	}
	defer m.mu.RUnlock()
	return m.conn.QueryRow(ctx, sql, args...)
}

// savepoint is the pgx.Tx Managed.Begin returns. Like pgx's own, it is not
// safe for concurrent use; unlike pgx's, it dies with its Managed.
type savepoint struct {
	m      *Managed
	name   string
	closed atomic.Bool
}

func (sp *savepoint) Begin(ctx context.Context) (pgx.Tx, error) {
	if sp.closed.Load() {
		return nil, pgx.ErrTxClosed
	}
	return sp.m.Begin(ctx)
}

func (sp *savepoint) Commit(ctx context.Context) error {
	if sp.closed.Swap(true) {
		return pgx.ErrTxClosed
	}
	_, err := sp.m.Exec(ctx, "RELEASE SAVEPOINT "+sp.name)
	return err
}

func (sp *savepoint) Rollback(ctx context.Context) error {
	if sp.closed.Swap(true) {
		return pgx.ErrTxClosed
	}
	_, err := sp.m.Exec(ctx, "ROLLBACK TO SAVEPOINT "+sp.name)
	return err
}

func (sp *savepoint) CopyFrom(ctx context.Context, t pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if sp.closed.Load() {
		return 0, pgx.ErrTxClosed
	}
	return sp.m.CopyFrom(ctx, t, cols, src)
}

func (sp *savepoint) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if sp.closed.Load() {
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	return sp.m.SendBatch(ctx, b)
}

func (sp *savepoint) LargeObjects() pgx.LargeObjects { return sp.m.LargeObjects() }

func (sp *savepoint) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if sp.closed.Load() {
		return nil, pgx.ErrTxClosed
	}
	return sp.m.Prepare(ctx, name, sql)
}

func (sp *savepoint) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if sp.closed.Load() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return sp.m.Exec(ctx, sql, args...)
}

func (sp *savepoint) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if sp.closed.Load() {
		return closedRows{}, pgx.ErrTxClosed
	}
	return sp.m.Query(ctx, sql, args...)
}

func (sp *savepoint) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if sp.closed.Load() {
		return closedRow{}
	}
	return sp.m.QueryRow(ctx, sql, args...)
}

func (sp *savepoint) Conn() *pgx.Conn { return sp.m.Conn() }

type closedRow struct{}

func (closedRow) Scan(...any) error { return pgx.ErrTxClosed }

// closedRows is what Query returns on a closed transaction, so that a caller
// who checks rows.Err() rather than Query's error still sees it.
type closedRows struct{}

func (closedRows) Close()                                       {}
func (closedRows) Err() error                                   { return pgx.ErrTxClosed }
func (closedRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (closedRows) FieldDescriptions() []pgconn.FieldDescription { return nil }
func (closedRows) Next() bool                                   { return false }
func (closedRows) Scan(...any) error                            { return pgx.ErrTxClosed }
func (closedRows) Values() ([]any, error)                       { return nil, pgx.ErrTxClosed }
func (closedRows) RawValues() [][]byte                          { return nil }
func (closedRows) Conn() *pgx.Conn                              { return nil }
func (closedRows) TypeMap() *pgtype.Map                         { return nil }
