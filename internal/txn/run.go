package txn

import (
	"context"
	"fmt"
)

// Tx is one attempt's transaction as Run drives it, whichever client library
// runs it: lock.Run (pgx) and lock.RunDB (database/sql) each adapt theirs, so
// that retries, the classification of failures, ctx and reentry are handled
// in one place and can't drift apart.
type Tx interface {
	// Lock takes the attempt's lock (and applies what BEGIN did not).
	Lock(ctx context.Context) error
	// FnDone ends fn's use of the transaction once fn returned fnErr, and
	// returns what to report: for a non-nil fnErr, fnErr (also matching
	// ErrTxEnded if fn ended the transaction itself); for nil, why the
	// transaction can't be committed (ErrRowsOpen, ErrTxEnded) or nil.
	FnDone(fnErr error) error
	// Closed reports whether the connection is known to be closed.
	Closed() bool
	// Commit ends fn's use of the transaction and sends COMMIT.
	Commit(ctx context.Context) error
	// Rollback ends fn's use of the transaction and rolls it back, even when
	// ctx is done; it is called after a failure, never after Commit.
	Rollback(ctx context.Context)
	// Release gives the connection back; it is called last, always.
	Release()
}

// Run runs fn in a transaction that holds the lock id (the key whose String
// is name), under r: each attempt begins (begin), takes the lock (Tx.Lock),
// calls fn and commits. A failure before COMMIT was sent rolls back and is
// marked by BeginFailed or BeforeCommit, one of COMMIT by AfterCommit, so r
// retries only what left nothing committed and a lost COMMIT matches
// ErrCommitUnknown. fn's own error comes back unchanged unless the
// connection was lost meanwhile. A panic in fn rolls back and continues. A
// call from inside fn for the same id fails with ErrReentrant. ctx governs
// every step; once it is done nothing more is committed.
func Run[T Tx](ctx context.Context, r Retry, name string, id int64, begin func(context.Context) (T, error), fn func(context.Context, T) error) error {
	return r.Do(ctx, func() error { return attempt(ctx, name, id, begin, fn) })
}

// attempt is one attempt of Run.
func attempt[T Tx](ctx context.Context, name string, id int64, begin func(context.Context) (T, error), fn func(context.Context, T) error) error {
	if Held(ctx, id) {
		return fmt.Errorf("lock: run %s: %w", name, ErrReentrant)
	}
	tx, err := begin(ctx)
	if err != nil {
		return BeginFailed(fmt.Errorf("lock: run %s: begin: %w", name, Classify(ctx, err)))
	}
	defer tx.Release()
	committing := false
	defer func() {
		if !committing {
			tx.Rollback(ctx) // a failure or a panic, which continues after this
		}
	}()
	if err := tx.Lock(ctx); err != nil {
		return BeforeCommit(err, tx.Closed())
	}
	if err := fn(WithHeld(ctx, id), tx); err != nil {
		return BeforeCommit(tx.FnDone(err), tx.Closed())
	}
	if err := tx.FnDone(nil); err != nil {
		return fmt.Errorf("lock: run %s: %w", name, err)
	}
	if err := ReadyToCommit(ctx, tx.Closed()); err != nil {
		return fmt.Errorf("lock: run %s: %w", name, err)
	}
	committing = true
	if err := tx.Commit(ctx); err != nil {
		return AfterCommit(fmt.Errorf("lock: run %s: commit: %w", name, Classify(ctx, err)))
	}
	return nil
}
