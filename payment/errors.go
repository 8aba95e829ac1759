package payment

import "errors"

// Errors matched with errors.Is: the table's own. Each sentinel has one
// name, in the package it comes from: the lock's and the transaction's
// ([lock.ErrLockTimeout], [lock.ErrDeadlock], [lock.ErrIdleTimeout],
// [lock.ErrReentrant], [lock.ErrManaged], [lock.ErrTxEnded],
// [lock.ErrRowsOpen], [lock.ErrCommitUnknown]) are lock's,
// [entity.ErrTxAborted] and [entity.ErrGroupRolledBack] entity's. They and
// ctx's ([context.Canceled], [context.DeadlineExceeded]) pass through With
// wrapped, and a *pgconn.PgError stays reachable with errors.As.
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
