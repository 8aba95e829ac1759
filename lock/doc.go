// Package lock serializes work on one logical entity across processes with
// PostgreSQL transaction-scoped advisory locks, even before the entity's row
// exists.
//
// A Key names the entity: NewKey("payments", "7", "li_123"). Run begins a
// transaction, takes the key's lock, runs your function and commits; every
// other caller that names the same key, in any process connected to the same
// server, waits its turn. RunDB does the same on a *sql.DB. Acquire,
// TryAcquire and AcquireAll take locks inside a transaction you manage.
//
// After the key's layout, the sections hold the contract of Run and RunDB —
// the transaction, what fn may do, errors, cancellation, nested calls,
// retries, round trips — which
// [github.com/paylock/paylock/entity.Repository.With] shares.
//
// # Key layout
//
// A key's lock id is one bigint: the xxhash64 of the key's encoding, in which
// the namespace and each part are written as a uvarint length followed by
// their bytes. Length prefixes make the encoding unambiguous: ("a|b", "c") and
// ("a", "b|c") differ, and so do ("a") and ("a", ""). The encoding and the hash
// are a wire format shared by every process and every version; golden tests
// pin them.
//
// Programs in other languages compute the same id in SQL with
// paylock_key_id(namespace text, VARIADIC parts text[]) RETURNS bigint, which
// payment.Migrate and `paylock migrate` install (plain PL/pgSQL, immutable,
// parallel safe): SELECT pg_advisory_xact_lock(paylock_key_id('payments',
// '7', 'li_123')) waits for the same lock as Run with NewKey("payments", "7",
// "li_123"). The golden keys in the repository's testdata/keys.json are
// checked against Go, the SQL function, Ruby and Python; docs/INTEROP.md
// describes the statements and the comment a non-Go caller sends.
//
// One bigint rather than two int4 (namespace, key) spends all 64 bits on the
// whole key. With two int4 the key would get 32 bits and a few tens of
// thousands of live keys would already share ids; the namespace's visibility
// in pg_locks is instead provided by the SQL comment described below.
//
// # Collisions
//
// Two different keys share an id with probability about 2^-64; among n keys
// locked at the same moment the chance that any two collide is about
// n²/2^65 (10,000 concurrent keys: 3·10^-12). A collision costs a needless
// wait — the two keys serialize as if they were one — never a wrong result:
// rows are still found by their real key columns and guarded by their unique
// index. The same holds for another program's bigint advisory locks.
//
// # The transaction
//
// Run and RunDB begin a READ COMMITTED, READ WRITE transaction whatever the
// session's defaults (on a hot standby, which refuses READ WRITE, without the
// access mode; RunDB tells a standby through pgx's stdlib driver only), apply
// the Options' limits to it, take the lock, run fn and commit. READ COMMITTED
// makes each statement after the lock wait see what the previous holder
// committed.
//
// # What fn may do
//
// fn may run any statement on tx and begin savepoints with tx.Begin (see
// "Savepoints" for a lock taken in one). If fn returns an error, the
// transaction is rolled back and the error returned (see "Errors"); if fn
// panics, it is rolled back and the panic continues. Either way the lock ends
// with the transaction. Beyond that:
//
//   - fn must not commit or roll back tx: those calls return [ErrManaged].
//   - fn must not end the transaction with COMMIT or ROLLBACK in SQL (even
//     followed by a BEGIN): then nothing more is committed and the call
//     returns [ErrTxEnded] (fn's own error, if it returned one, then matches
//     ErrTxEnded too), and what fn committed stays committed.
//   - fn must close every result it reads (Rows, Row, BatchResults): if one
//     is still open when fn returns nil, the connection is closed, nothing is
//     committed and the call returns [ErrRowsOpen].
//   - tx and the savepoints from tx.Begin fail with pgx.ErrTxClosed once fn
//     has returned (a statement that a goroutine of fn's is running through
//     them then is waited for), large objects from tx.LargeObjects once the
//     call has ended the transaction. tx.Conn returns nil once fn has
//     returned; a *pgx.Conn taken from it earlier escapes all this and must
//     not be kept.
//
// RunDB's fn gets a *sql.Tx instead, whose Commit and Rollback can't be
// refused: see "database/sql".
//
// # Errors
//
// fn's own error comes back unchanged, unless the connection was lost
// meanwhile: then it is wrapped, so that Retry can tell, and errors.Is and
// errors.As still find it. Every other error wraps its cause and says what
// was being done; the exported errors match with errors.Is, and the
// server's *pgconn.PgError stays reachable with errors.As. The lock wait
// fails with [ErrLockTimeout] or [ErrDeadlock], a holder idle too long with
// [ErrIdleTimeout], a nested call with [ErrReentrant] ("Nested calls"), a
// misuse of tx with [ErrManaged], [ErrTxEnded] or [ErrRowsOpen] ("What fn
// may do"), and a connection lost after COMMIT was sent with
// [ErrCommitUnknown] ("Retries and unknown outcomes"). Once ctx is done the
// error matches ctx.Err().
//
// # Cancellation and timeouts
//
// ctx governs the begin, the lock wait, fn (it is passed on) and the commit:
// once it is done, nothing more is committed and the error matches
// ctx.Err(). Every wait honours ctx. When ctx is done while waiting, the call returns
// promptly with an error matching ctx.Err(); pgx closes the waiting
// connection (a pool discards it, so it is never handed out mid-wait), and the
// transaction sets client_connection_check_interval so the server drops the
// abandoned wait within a second. Options bounds the wait (LockTimeout, which
// fails with ErrLockTimeout) and the hold (IdleTimeout, StatementTimeout).
//
// client_connection_check_interval is set only where the server accepts it:
// PostgreSQL 14 and later, on a platform that can tell that a socket closed
// (Linux; from 15, macOS and the BSDs too; not Windows). Run, RunDB (through
// pgx's stdlib driver) and entity's With ask each connection once, on its
// first use, and remember. Run with a Beginner other than *pgxpool.Pool,
// *pgxpool.Conn or *pgx.Conn, RunDB with another driver, and servers that
// refuse it leave the server's setting: there an abandoned wait lasts until
// the lock is granted or LockTimeout or StatementTimeout ends it, and the
// waiter's connection is gone either way. Setting it for a role or database
// (ALTER ROLE ... SET) does the same job for every session.
//
// # Nested calls
//
// A Run from inside fn for the key its enclosing call holds (or an
// [github.com/paylock/paylock/entity.Repository.With] for it), given fn's
// ctx, fails with [ErrReentrant] instead of waiting for itself. Given
// another ctx (context.Background(), say) it can't be told from a caller on
// another goroutine, and it waits for the lock its own caller holds: until
// LockTimeout, if set (it fails with ErrLockTimeout); otherwise until the
// server ends the outer transaction, idle for IdleTimeout
// ([DefaultIdleTimeout] unless set). Then the outer's lock is released, the
// inner call runs and commits, and the outer commits nothing and returns
// the server's error (a *pgconn.PgError with SQLSTATE 25P03), which Retry
// may run again. With neither timeout it waits until its own ctx is done.
// Pass fn's ctx on.
//
// # Retries and unknown outcomes
//
// Options.Retry runs the whole transaction again, fn included, after a
// failure that left nothing committed: a serialization failure, a deadlock,
// or a connection lost before COMMIT was sent (a restart, a reset, a
// terminated or timed-out backend). It never retries ErrCommitUnknown, the
// error for a connection that failed after COMMIT was sent: then the
// transaction may or may not have committed. Make fn safe to run again by
// writing an operation id in the same transaction and skipping work whose id
// is already there; after ErrCommitUnknown, run again and look.
//
// A statement that fails inside the transaction aborts it, and PostgreSQL
// releases its locks at that moment, before the client rolls back: nothing
// can commit afterwards, so the next waiter may proceed.
//
// # Round trips
//
// Run makes three round trips besides fn's: BEGIN with the settings, the
// lock, and COMMIT, sent with the check that the transaction is still Run's
// (see "What fn may do"). A connection's first Run makes one more, before
// BEGIN, to ask whether the server accepts client_connection_check_interval,
// and pgxpool pings a connection idle for over a second before handing it
// out. RunDB makes four (see "database/sql"). Repository.With in package
// entity makes two for more work: see that package's doc.
//
// # database/sql
//
// RunDB, AcquireTx and TryAcquireTx serve callers that hold a *sql.DB rather
// than a pgx pool (sqlx, sqlc on database/sql, GORM underneath), with any
// PostgreSQL driver. RunDB begins on a connection of its own, so that it can
// ask the driver about it, and has Run's contract with these differences:
//
//   - Its round trips are database/sql's BEGIN, the settings with the lock,
//     the check that fn did not end the transaction, and COMMIT:
//     database/sql can't put the check in COMMIT's round trip, as Run does.
//   - fn must not commit or roll back tx: database/sql offers no way to
//     refuse it, and committing early would release the lock early. If fn
//     ends the transaction itself (tx.Commit, or COMMIT or ROLLBACK in SQL,
//     even followed by a BEGIN), RunDB commits nothing more and returns
//     ErrTxEnded; a transaction fn began after ending RunDB's is rolled back,
//     never committed.
//   - Whether the connection was lost is asked of the driver: pgx's stdlib
//     driver tells exactly; another driver, if it implements
//     driver.Validator. With a driver that does neither, an error inside the
//     transaction is never taken for a lost connection, so it is not
//     retried. client_connection_check_interval is set through pgx's stdlib
//     driver only.
//   - The server's errors are classified from pgx's *pgconn.PgError (SQLSTATE
//     and unlocalized severity). Another driver's error type is not read:
//     then ErrLockTimeout and ErrDeadlock do not match (the driver's error,
//     with its SQLSTATE, is returned as it is), a serialization failure or
//     deadlock is not retried, a COMMIT the server refused (a deferred
//     constraint) fails with ErrCommitUnknown rather than as a definite
//     failure, and an error on BEGIN counts as a lost connection, retried
//     under Options.Retry. Use pgx's stdlib driver for the contract of Run.
//
// Their statements carry the lock id as a literal, so that the key's
// comment can name it, and take no parameters; they all go through
// ExecContext, which drivers (pgx's stdlib, lib/pq) then run with the simple
// protocol: nothing is prepared per key. (pgx's stdlib prepares and caches a
// QueryContext statement even without parameters, so TryAcquireTx reads its
// answer from the row count, not from a row.)
//
// # Savepoints
//
// ROLLBACK TO SAVEPOINT releases the advisory locks taken after that
// savepoint, as it undoes everything else done since; locks taken before it
// stay. RELEASE SAVEPOINT keeps them until the outer transaction ends. So a
// lock taken in a savepoint (tx.Begin inside fn, Acquire on that) protects
// only until that savepoint is rolled back: take locks in the outer
// transaction, before any savepoint that may be rolled back.
//
// # Finding a lock in pg_locks
//
// PostgreSQL shows a bigint advisory lock with its high 32 bits in classid,
// its low 32 bits in objid and objsubid = 1 (Key.ClassID, Key.ObjID). This
// joins them back:
//
//	SELECT l.pid, l.granted, a.application_name, a.query
//	FROM pg_locks l JOIN pg_stat_activity a USING (pid)
//	WHERE l.locktype = 'advisory' AND l.objsubid = 1
//	  AND (l.classid::bigint << 32 | l.objid::bigint) = $1; -- Key.ID()
//
// Every lock statement carries a sqlcommenter-style comment,
// /*paylock_key='payments/7/li_123'*/ (Key.String, escaped so that no input
// can leave the comment), so pg_stat_activity.query names the key of every
// waiting backend; `paylock locks` and `paylock key` use both.
package lock
