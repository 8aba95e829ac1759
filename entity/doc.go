// Package entity is the find-or-create-then-update layer under
// [github.com/paylock/paylock/payment.Repository], for any table keyed by a
// logical key.
//
// You describe the table — how a key becomes a lock key, and the SQL that
// ensures, finds and saves a row — by implementing [Table]. [New] gives a
// Repository whose [Repository.With] supplies the rest: callers for one key run one after another in any
// number of processes, the row is created exactly once (by the caller whose
// Ensure affects a row), each caller sees the previous one's commit, an error
// or panic in fn writes nothing, and a writer that doesn't take the lock
// can't make a duplicate as long as the table has its unique index.
//
// A Repository makes two round trips per call: BEGIN, the lock, Ensure and
// Find go together as one pipeline, and Save goes with COMMIT (three when
// the key is held by another session and by no other caller of the
// Repository: the lock is tried first). With pgx's
// default statement cache the constant statements run prepared (prepared
// once per connection, before the lock is taken); behind a pooler without
// prepared-statement support (exec or simple-protocol mode) they go
// unnamed. The examples directory holds a second entity, invoices keyed by
// (account_id, external_ref), in a few dozen lines.
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
