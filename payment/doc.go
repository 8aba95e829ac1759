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
// # Citus
//
// On a Citus coordinator Migrate creates services as a reference table and
// payments distributed by service_id ([CitusSchema]: the primary key is
// (service_id, id)); the unique index is on every shard. On a worker it
// refuses with [ErrCitusWorker]. Every node can then run With: use
// [NewDistributedRepository] ([Distributed] tells), the advisory strategy
// on the coordinator and RowLock on a worker (entity.CheckEngine says
// which), since a worker's advisory locks are its own. Callers on
// different nodes still serialize on the shard's row lock. docs/SCALING.md
// has the figures.
package payment
