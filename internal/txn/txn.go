// Package txn holds the transaction machinery that lock's Run and entity's
// Repository.With share: the lock statements (locksql.go), the BEGIN
// statement with its per-transaction settings, the pgx.Tx handed to fn, the
// context marker that detects a nested call for a key already held, and the
// cleanup rollback. Run drives lock's attempts; entity drives its own
// pipelines (docs/DESIGN.md, "One engine, two orchestrations").
package txn

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// Standby: the server is a hot standby (in_hot_standby, which
	// PostgreSQL 14 and later report), where a transaction can't be READ
	// WRITE and BEGIN READ WRITE fails (0A000): BeginSQL leaves the access
	// mode out there, as before paylock began READ WRITE, so that a Run
	// whose fn only reads (the lock is the standby's own) still works. See
	// Settings.Probe.
	Standby bool
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

// SetSQL returns one statement that applies s to the current transaction
// and marks it as paylock's (see CheckSQL).
//
// client_connection_check_interval (s.ConnCheck) makes a backend that waits
// for a lock notice within a second that its client went away (a cancelled
// caller whose connection pgx closed), so it leaves the lock queue instead
// of waiting for its turn only to find nobody there.
func (s Settings) SetSQL() string {
	sets := []string{"set_config('" + heldSetting + "', 'on', true)"}
	if s.ConnCheck {
		sets = append(sets, "set_config('"+connCheckSetting+"', '"+connCheckMillis+"', true)")
	}
	// lock_timeout always: a zero LockTimeout means no limit but ctx, not
	// whatever lock_timeout the database or role was given.
	sets = append(sets, fmt.Sprintf("set_config('lock_timeout', '%d', true)", millis(s.LockTimeout)))
	for _, set := range []struct {
		name string
		d    time.Duration
	}{
		{"idle_in_transaction_session_timeout", s.IdleTimeout},
		{"statement_timeout", s.StatementTimeout},
	} {
		if set.d > 0 {
			sets = append(sets, fmt.Sprintf("set_config('%s', '%d', true)", set.name, millis(set.d)))
		}
	}
	return "SELECT " + strings.Join(sets, ", ")
}

// millis is d in the whole milliseconds PostgreSQL's timeouts take: 0 for
// none, at least 1 for any positive d.
func millis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return max(d.Milliseconds(), 1)
}

// heldSetting is the transaction-local setting SetSQL turns on; it reverts
// when the transaction ends, also in a transaction fn began after ending
// paylock's.
const heldSetting = "paylock.held"

// endedMarker is the text of the error CheckSQL raises.
const endedMarker = "paylock: fn ended the transaction"

// CheckSQL fails, with an error that EndedByFn recognizes, unless it runs in
// the transaction SetSQL marked. Sent in the round trip of COMMIT, just
// before it, it stops the commit of a transaction that fn began after ending
// paylock's in a way the client can't see: "COMMIT; BEGIN" in one message,
// or in a batch, leaves the connection in a transaction again, but not in
// the one that holds the lock. (The cast raises the error; its operand is
// not constant, so the planner does not evaluate it early.)
const CheckSQL = "SELECT ('" + endedMarker + "' || coalesce(current_setting('" + heldSetting + "', true), ''))::int" +
	" WHERE current_setting('" + heldSetting + "', true) IS DISTINCT FROM 'on'"

// EndedByFn reports whether err is CheckSQL's error: the transaction about
// to commit is not the one that holds the lock.
func EndedByFn(err error) bool {
	if err == nil {
		return false // errors.As would allocate its target all the same
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "22P02" && strings.Contains(pgErr.Message, endedMarker)
}

// BeginSQL is the statement that begins a READ COMMITTED transaction with s
// applied, for the simple protocol: one message, one round trip. READ
// COMMITTED whatever default_transaction_isolation says: each statement after
// the lock wait then sees what the previous holder committed.
func (s Settings) BeginSQL() string {
	if s.Standby {
		return sqlBeginStandby + "; " + s.SetSQL()
	}
	return SQLBegin + "; " + s.SetSQL()
}

// sqlBeginStandby is SQLBegin for a hot standby, where READ WRITE is refused.
const sqlBeginStandby = "BEGIN ISOLATION LEVEL READ COMMITTED"

// ReadWriteSQL is what RunDB sends first in its transaction (SetReadWrite),
// with a separator, or nothing on a hot standby (see Settings.Standby).
func (s Settings) ReadWriteSQL() string {
	if s.Standby {
		return ""
	}
	return SetReadWrite + "; "
}

// SQLBegin begins the transaction: READ COMMITTED (see BeginSQL) and READ
// WRITE whatever default_transaction_read_only says, so that an fn that
// ran SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY on a pooled
// connection (or a database or role given that default) does not make the
// later calls on it fail at their first write: the key's row is created
// and written in every call.
const SQLBegin = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"

// SetReadWrite is what RunDB sends first in its transaction, which
// database/sql begins without an access mode (see SQLBegin).
const SetReadWrite = "SET TRANSACTION READ WRITE"

type heldKey struct{}

// heldCtx is the ctx WithHeld returns: one allocation where
// context.WithValue of a slice takes three (With makes one per call).
type heldCtx struct {
	context.Context
	ids []int64 // the parent's held ids, then the new ones
	one [1]int64
}

func (c *heldCtx) Value(key any) any {
	if key == (heldKey{}) {
		return c
	}
	return c.Context.Value(key)
}

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
	c := &heldCtx{Context: ctx}
	if parent := heldIDs(ctx); len(parent) == 0 && len(ids) == 1 {
		c.one[0] = ids[0]
		c.ids = c.one[:]
	} else {
		c.ids = append(append([]int64(nil), parent...), ids...)
	}
	return c
}

func heldIDs(ctx context.Context) []int64 {
	if c, ok := ctx.Value(heldKey{}).(*heldCtx); ok {
		return c.ids
	}
	return nil
}

// cleanupTimeout bounds a cleanup that runs after a failure: a rollback, an
// unlock.
const cleanupTimeout = 5 * time.Second

// CleanupContext returns a context for cleaning up after a failure even when
// ctx is already done: it keeps ctx's values, not its cancellation, and ends
// after a short timeout.
func CleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// Rollback ends a transaction that failed or must not commit, on pc, even
// when ctx is already done (see CleanupContext). If ROLLBACK fails, the
// connection, its state unknown, is closed, so that a pool destroys it
// rather than hand it out.
//
// tx is the pgx transaction object over pc, if the transaction has one:
// then ROLLBACK goes through it, which marks it closed, so that what fn kept
// of it (large objects) fails with pgx.ErrTxClosed, and pgx closes the
// connection if it fails. With tx nil, ROLLBACK goes on pc, unless pc is
// closed or out of any transaction.
func Rollback(ctx context.Context, pc *pgconn.PgConn, tx pgx.Tx) {
	ctx, cancel := CleanupContext(ctx)
	defer cancel()
	if tx != nil {
		_ = tx.Rollback(ctx)
		return
	}
	if pc.IsClosed() || pc.TxStatus() == 'I' {
		return
	}
	if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		pc.Close(ctx)
	}
}
