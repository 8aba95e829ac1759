package lock

import (
	"context"
	"time"

	"github.com/paylock/paylock/internal/txn"
)

// ErrCommitUnknown: the connection failed (or ctx ended the wait) after
// COMMIT was sent and before PostgreSQL's answer arrived, so the transaction
// may or may not have committed. Run never retries it. To learn the outcome,
// run again and look: make fn idempotent by recording an operation id in the
// same transaction (a column, a ledger row with a unique constraint) and
// skipping the work when the id is already there. errors.Is also matches the
// underlying cause (a network error, context.DeadlineExceeded).
var ErrCommitUnknown = txn.ErrCommitUnknown

// Retry makes Run and RunDB run the whole transaction again — begin, lock,
// fn, commit — after a failure that left nothing committed:
//
//   - a serialization failure (SQLSTATE 40001) or a deadlock (40P01),
//     whether from the lock (the error then matches ErrDeadlock) or from a
//     statement of fn's (fn's error is returned unchanged: errors.As finds
//     the *pgconn.PgError);
//   - a connection exception the server reports before COMMIT (SQLSTATE
//     class 08: a Citus coordinator that could not reach a worker); at
//     COMMIT it is ErrCommitUnknown;
//   - the connection lost before COMMIT was sent: a dial that failed, a
//     server restart or pg_terminate_backend, a network reset, the server
//     ending an idle transaction (IdleTimeout). PostgreSQL commits nothing
//     without a COMMIT, so the attempt is known to have rolled back.
//
// It never retries ErrCommitUnknown, ErrTxEnded (fn ran COMMIT itself, so
// its work may be committed, whatever failed after it), ErrLockTimeout, a
// statement timeout, an error fn returns for its own reasons, or anything
// once ctx is done.
//
// fn is therefore called once per attempt, each time in a new transaction
// that sees the current committed state: it must be safe to run again. Its
// statements on tx are rolled back with a failed attempt; side effects
// outside the database (a message sent, a file written) are not, so either
// keep them out of fn or make them idempotent.
//
// A lost connection is worth retrying only when Run's db is a pool (or
// RunDB's *sql.DB), which hands the next attempt a new connection; a single
// *pgx.Conn stays closed.
//
// The zero value does not retry.
type Retry struct {
	// Attempts is the number of attempts in all; 0 and 1 mean one.
	Attempts int
	// Backoff is the longest wait before the second attempt; each wait is
	// random in [half, all] of the current backoff, which doubles after
	// each attempt. Zero means 50ms.
	Backoff time.Duration
	// MaxBackoff caps the backoff. Zero means 2s.
	MaxBackoff time.Duration
}

// Do calls attempt under r: again, after a backoff, as long as it fails with
// an error Retry allows and attempts remain. It returns the last error; when
// more than one attempt was made the error says how many. The waits honour
// ctx. Do is what [Options.Run] and
// [github.com/paylock/paylock/entity.Repository.With] use; it is exported for
// callers who run their own transactions with [Acquire].
func (r Retry) Do(ctx context.Context, attempt func() error) error {
	return r.policy().Do(ctx, attempt)
}

func (r Retry) policy() txn.Retry {
	return txn.Retry{Attempts: r.Attempts, Backoff: r.Backoff, MaxBackoff: r.MaxBackoff}
}
