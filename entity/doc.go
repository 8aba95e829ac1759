// Package entity is the find-or-create-then-update layer under
// [github.com/paylock/paylock/payment.Repository], for any table keyed by a
// logical key.
//
// You describe the table — how a key becomes a lock key, and the SQL that
// ensures, finds and saves a row — by implementing [Table]. [New] gives a
// Repository whose [Repository.With] supplies the rest: callers for one key
// run one after another in any number of processes, the row is created
// exactly once (by the caller whose Ensure affects a row), each caller sees
// the previous one's commit, an error or panic in fn writes nothing, and a
// writer that doesn't take the lock can't make a duplicate as long as the
// table has its unique index. The examples directory holds a second entity,
// invoices keyed by (account_id, external_ref), in a few dozen lines.
//
// The sections below are With's contract. It holds for every With built on
// entity: payment's ([github.com/paylock/paylock/payment.Repository.With])
// documents only what it adds. Where it is [lock.Run]'s, they say so and
// link to package [lock] for the rest.
//
// # What fn may do
//
// With runs fn in a READ COMMITTED, READ WRITE transaction, whatever the
// session's defaults, as lock.Run does. fn gets the row as the previous
// caller committed it; With saves what fn changed ([Table].Save) and
// commits. fn may use tx for its own statements, which commit or roll back
// with the entity, under the rules for lock.Run's fn (package [lock], "What
// fn may do"): no Commit or Rollback on tx ([lock.ErrManaged]); no COMMIT or
// ROLLBACK in SQL ([lock.ErrTxEnded]: With then saves nothing); every result
// closed ([lock.ErrRowsOpen]); and tx, its savepoints and tx.Conn are not to be
// used once fn has returned (large objects from tx.LargeObjects fail once
// With has returned).
//
// If fn returns an error, With rolls back and returns that error; if fn
// panics, With rolls back and panics again. Either way nothing is written
// (unless fn ended the transaction itself) and the lock is released. If a
// statement of fn's failed and fn returned nil, With rolls back and returns
// [ErrTxAborted].
//
// # Errors
//
// As for lock.Run (package [lock], "Errors"): fn's own error comes back
// unchanged unless the connection was lost meanwhile, and every other error
// wraps its cause, so that errors.Is matches the exported errors of lock and
// entity and errors.As finds the server's *pgconn.PgError. [Table]'s methods
// say how their errors come back; a Table that implements [ErrorClassifier]
// adds its own sentinels to the errors from SQL.
//
// # Waiting and cancellation
//
// With blocks until the key is free. Calls of one Repository for the same
// key first wait their turn in process, in arrival order and without a pool
// connection, so that one key holds at most two of the pool's connections
// (the holder and the next in line); then they wait at PostgreSQL. [lock.Options].LockTimeout
// ([WithLockOptions]), if set, bounds each of the two waits
// ([lock.ErrLockTimeout]). ctx governs both waits, fn (it is passed on) and
// the commit: once ctx is done nothing more is committed and the error
// matches ctx.Err().
//
// A With for the same key from inside fn is a nested call, as in package
// [lock], "Nested calls": given fn's ctx it fails with [lock.ErrReentrant];
// given another, it waits for the lock its own caller holds (with
// LockTimeout set, it fails with lock.ErrLockTimeout, and fn gets that
// error). Pass fn's ctx on.
//
// # Round trips
//
// With makes two round trips when fn does none: BEGIN,
// the lock, Ensure and Find go together as one pipeline; Save, if anything
// changed, goes with COMMIT. It makes three when no other caller of the
// Repository has the key but another session does: the lock is tried
// first, then waited for. With pgx's default statement cache the constant
// statements run prepared: a connection's first calls make more round trips,
// before the lock, to prepare them (once per connection); the lock is never
// held across a prepare. Behind a pooler without prepared-statement support
// (exec or simple-protocol mode) they go unnamed. fn's use of
// tx.LargeObjects costs up to two more round trips. docs/DESIGN.md, "Round
// trips", has the details.
//
// # Retries and unknown outcomes
//
// When the connection fails after COMMIT was sent, the outcome is unknown and
// the error matches [lock.ErrCommitUnknown]; it is never retried. The
// [lock.Retry] of [WithLockOptions] may run the whole call, fn included,
// again after a failure that left nothing committed (fn's error then comes
// back wrapped if the connection was lost meanwhile; errors.Is and errors.As
// still find it).
//
// # Group commit
//
// With [WithGroupCommit], callers of one key queued behind its transaction
// run together in one transaction; its contract says what changes. No call
// waits past its ctx: a call, the leader's included, whose ctx ends after
// its fn returned, before the group's outcome, gets lock.ErrCommitUnknown
// with ctx's error (the group may yet commit its part). A member whose fn
// runs no statement through tx (and holds no result of one open) for
// IdleTimeout is cut off, as the server would end a call of its own: it
// fails with lock.ErrIdleTimeout and the group goes on without it.
//
// To keep the contract, a member's row is written, and read back, in its
// own savepoint once its fn returned, before the next member's turn (one
// round trip when fn changed its value or its SQL changed the row; none
// otherwise). At most 64 members with a savepoint share a
// transaction, and a leader stops taking callers once it has held the key
// about max times as long as its own call took (max as given to
// WithGroupCommit). See docs/DESIGN.md, "Group commit", for the round
// trips, the bounds and when not to use it.
//
// # Strategies
//
// [Advisory] (the default) serializes on a transaction-scoped advisory lock.
// [RowLock] serializes on the unique index and on Find's row lock instead,
// for engines whose advisory locks are absent, no-ops or node-local;
// [CheckEngine] refuses Advisory on those.
//
// # Observability
//
// [WithHooks] reports every call — lock wait (measured by the server), hold
// time, outcome, whether the row was created — to a function and optionally
// to a log/slog logger. Nothing is logged by default. Package
// entity/otelentity turns the same events into OpenTelemetry spans and
// histograms.
package entity
