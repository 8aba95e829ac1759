package payment

import (
	"errors"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// Errors matched with errors.Is. Errors from the lock ([lock.ErrLockTimeout],
// [lock.ErrDeadlock], [lock.ErrReentrant]) and from ctx ([context.Canceled],
// [context.DeadlineExceeded]) pass through With wrapped, and a
// *pgconn.PgError stays reachable with errors.As.
var (
	// ErrInvalidKey: the key can't name a payment; see [Key.Validate].
	ErrInvalidKey = errors.New("payment: invalid key")
	// ErrUnknownService: no services row has the key's service_id.
	ErrUnknownService = errors.New("payment: unknown service")
	// ErrKeyChanged: fn changed ID, ServiceID, LineItemID or CreatedAt.
	ErrKeyChanged = errors.New("payment: fn changed the payment's identity")
	// ErrInvalidPayment: fn left a value the table can't store (Data that
	// is not JSON, text that is not UTF-8).
	ErrInvalidPayment = errors.New("payment: invalid payment")
	// ErrNotFound: [Repository.Get] found no payment for the key.
	ErrNotFound = errors.New("payment: not found")
)

// Re-exported for callers of this package alone.
var (
	ErrReentrant   = lock.ErrReentrant
	ErrLockTimeout = lock.ErrLockTimeout
	ErrDeadlock    = lock.ErrDeadlock
	// ErrTxAborted: a statement fn ran in tx failed and fn returned nil; the
	// transaction can't commit, so With rolled it back.
	ErrTxAborted = entity.ErrTxAborted
	// ErrTxEnded: fn ended the transaction itself (COMMIT or ROLLBACK in
	// SQL); what it committed stays committed, With saved nothing. See
	// [lock.ErrTxEnded].
	ErrTxEnded = entity.ErrTxEnded
	// ErrRowsOpen: fn returned nil with a result still open; nothing was
	// committed. See [lock.ErrRowsOpen].
	ErrRowsOpen = entity.ErrRowsOpen
	// ErrCommitUnknown: the connection failed after COMMIT was sent; the
	// call may or may not have committed. See [lock.ErrCommitUnknown].
	ErrCommitUnknown = lock.ErrCommitUnknown
)
