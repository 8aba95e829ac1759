// Package lock serializes work on one logical entity across processes with
// PostgreSQL transaction-scoped advisory locks, even before the entity's row
// exists.
//
// A Key names the entity: NewKey("payments", "7", "li_123"). Run begins a
// transaction, takes the key's lock, runs your function and commits; every
// other caller that names the same key, in any process connected to the same
// server, waits its turn. Acquire, TryAcquire and AcquireAll take locks inside
// a transaction you manage.
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
// # Cancellation and timeouts
//
// Every wait honours ctx. When ctx is done while waiting, the call returns
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
