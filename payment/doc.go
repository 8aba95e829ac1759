// Package payment keeps one row per payment however many pollers receive it
// at the same moment, and serializes their updates.
//
// A payment is identified by Key: its line_item_id, unique within its
// service. Pollers that used to "find, else insert" call With instead:
//
//	err := repo.With(ctx, payment.Key{ServiceID: 7, LineItemID: "li_123"},
//		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
//			p.AmountCents = event.Amount // the old update code
//			p.Status = event.Status
//			return nil
//		})
//
// If the payment exists, fn gets it; if not, exactly one caller creates it
// (p.IsNew reports true to that caller alone) and every other caller waits
// its turn and gets that same row, with every change committed before it.
//
// # How
//
// [Repository.With] takes a transaction-scoped advisory lock on the key (see
// package [github.com/paylock/paylock/lock]) before it reads anything, so
// callers for one payment run one after another even before its row exists;
// callers for different payments don't wait for each other. The transaction runs at READ COMMITTED, and the row is read by a
// statement that starts after the lock is granted, so it sees the previous
// holder's commit. The UNIQUE index on (service_id, line_item_id) is the safety
// net: the row is created with INSERT ... ON CONFLICT DO NOTHING, so even a
// writer that doesn't take the lock (old code during a rollout) can't make a
// duplicate or make With fail — With waits for that insert and uses its row.
//
// # Round trips
//
// With makes two round trips on a warm connection when fn does no I/O of its
// own: BEGIN, the lock, the insert-if-missing and the read go as one
// pipeline; the update (only if fn changed something) goes with COMMIT. It
// makes three when another session holds or awaits the key and no other
// caller of the same Repository has it: With first tries the lock with a
// prepared statement, and only when that fails waits for it with the
// statement that names the key to `paylock locks`. A connection's first
// calls also prepare With's statements, and pgxpool pings a connection idle
// for over a second; both happen before the lock. The lock is held for about
// one round trip plus fn. docs/DESIGN.md, "Round trips", has the details.
//
// # Errors
//
// Invalid keys (ErrInvalidKey) are refused before any SQL runs; an unknown
// service fails with ErrUnknownService and writes nothing. Lock errors
// (lock.ErrLockTimeout, lock.ErrDeadlock, lock.ErrReentrant) and ctx errors
// pass through wrapped, so errors.Is matches them and errors.As still finds a
// *pgconn.PgError.
//
// # Schema
//
// Migrate creates the services and payments tables and the unique index; on a
// live table it builds the index concurrently, without blocking writers, and
// waits for a build already in progress rather than drop it. On a table that
// already holds duplicates it stops with a DuplicatesError; `paylock dedupe`
// merges them while pollers keep running.
//
// Migrate takes a connection of its own from the pool and holds the
// session-level advisory lock lock.NewKey("paylock.migrate") on it until it
// returns, so concurrent Migrate calls run one after another (waiting
// Migrates poll pg_try_advisory_lock rather than sit in a transaction the
// running build would wait for). It needs a real session: behind pgbouncer
// in transaction pooling mode, give it a direct connection (there, once its
// statements land in different server sessions, it stops with an error
// matching [ErrSessionChanged]). Then, on that connection:
//
//  1. It applies [Schema] in a transaction with lock_timeout set to
//     [MigrateLockTimeout]; past it, Migrate fails with an error matching
//     [lock.ErrLockTimeout] and changes nothing. If that transaction created
//     payments, it also creates [UniqueIndex] in it, with a plain CREATE UNIQUE
//     INDEX (no other session can see the new table before the commit, so
//     nobody waits), and Migrate is done.
//  2. If UniqueIndex exists and is valid, it is done.
//  3. While another session builds an index on payments (CREATE INDEX
//     CONCURRENTLY, as `paylock dedupe` runs it, or REINDEX CONCURRENTLY: it
//     shows in pg_stat_progress_create_index and holds the table's SHARE
//     UPDATE EXCLUSIVE lock), an INVALID UniqueIndex may still be on its way
//     to valid: Migrate waits, polling and holding no table lock, and never
//     drops it. If ctx ends first, the error matches both
//     [ErrIndexBuildInProgress] and ctx.Err(). Once the build is over, Migrate
//     starts again from step 2.
//  4. If payments holds duplicates it touches no row and no index (step 1
//     has installed what was missing of Schema, paylock_key_id included)
//     and returns a *[DuplicatesError] (matching [ErrDuplicates]) that names
//     them: run `paylock dedupe` first.
//  5. Otherwise it drops an INVALID UniqueIndex left by a failed or killed
//     build with DROP INDEX CONCURRENTLY and builds UniqueIndex with CREATE
//     UNIQUE INDEX CONCURRENTLY, outside any transaction, as dedupe does:
//     readers and writers carry on meanwhile. For these two statements the
//     session's lock_timeout is lifted (their waits block no writer, and the
//     build must wait for every older transaction, however long it runs); a
//     statement_timeout still applies. If a writer that doesn't take the
//     advisory lock inserts a duplicate during the build, Migrate drops the
//     INVALID index it leaves and returns the *DuplicatesError. If the
//     server ends the build otherwise (statement_timeout, a cancel, a
//     deadlock), Migrate drops the INVALID index it leaves too and returns
//     the server's error.
//
// `paylock dedupe` builds the index with the same code, under the same
// lock: a Migrate started during it waits for that lock first.
//
// If ctx ends during the build, pgx sends the server a cancel request as it
// closes the connection: the build stops and leaves an INVALID index, which
// the next Migrate drops and rebuilds. If the process dies instead, the server
// usually finishes the build and the next Migrate, waiting for the lock
// until that session ends, finds the index valid.
//
// # Citus
//
// On a Citus coordinator (the citus extension in the database, local group
// 0) Migrate's step 1 (see "Schema") applies [CitusSchema] before Schema and,
// in the same transaction, makes services a reference table and payments a
// table distributed by service_id (the primary key is (service_id, id)); the
// unique index is then on every shard, and "valid" in steps 2 to 5 means
// valid on every shard placement. A payments table that exists there as a
// local table fails with [ErrNotDistributed]. On a worker Migrate changes
// nothing and fails with [ErrCitusWorker], naming the coordinator.
//
// Every node can then run With: use [NewDistributedRepository] ([Distributed]
// tells), the advisory strategy on the coordinator and RowLock on a worker
// (entity.CheckEngine says which), since a worker's advisory locks are its
// own. Callers on different nodes still serialize on the shard's row lock.
// docs/SCALING.md has the figures.
package payment
