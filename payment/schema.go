package payment

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/schema"
)

//go:embed schema.sql
var schemaSQL string

//go:embed schema_citus.sql
var citusSchemaSQL string

// Schema returns the SQL that creates the services and payments tables;
// Migrate applies it and then the unique index named UniqueIndex.
func Schema() string { return schemaSQL }

// CitusSchema returns the SQL that creates the services and payments tables
// on a Citus coordinator, where Migrate applies it before [Schema] and then
// distributes the tables. It differs from Schema's tables only where Citus
// requires it: payments' primary key is (service_id, id), and id a
// bigserial.
func CitusSchema() string { return citusSchemaSQL }

// SchemaScript returns the whole schema Migrate creates on a single server
// (not Citus) as one idempotent SQL script, for a team without Go: [Schema],
// then [UniqueIndex] built CONCURRENTLY, with checks that stop the script
// where Migrate would stop (duplicates, an INVALID index). Run it with
// psql -v ON_ERROR_STOP=1 -f, not in a transaction. `paylock migrate
// --print-sql` prints it.
func SchemaScript() string { return schema.Script(schemaSQL) }

// UniqueIndex is the name of the UNIQUE index on payments (service_id,
// line_item_id): the safety net under the advisory lock.
const UniqueIndex = "payments_service_id_line_item_id_key"

// ErrIndexBuildInProgress: Migrate's ctx ended while another session was
// still building an index on payments (CREATE INDEX CONCURRENTLY, such as
// `paylock dedupe`'s, or REINDEX CONCURRENTLY), which Migrate waits for
// rather than disturb. The error also matches ctx.Err(). Migrate again later.
var ErrIndexBuildInProgress = schema.ErrIndexBuildInProgress

// MigrateLockTimeout bounds how long Migrate's schema transaction waits for
// a table lock (SET LOCAL lock_timeout): while a lock request waits, later
// readers and writers of that table queue behind it. Past it Migrate gives
// up, with an error matching [lock.ErrLockTimeout], and changes nothing.
const MigrateLockTimeout = 3 * time.Second

// Migrate creates the schema if it is missing: the services and payments
// tables, paylock_key_id and [UniqueIndex]. It is safe to run again, from
// several processes at once, and while pollers read and write payments: no
// lock it requests makes them queue for longer than [MigrateLockTimeout]. It
// blocks until done; ctx governs every step, the waits included.
//
// It needs a real session: behind pgbouncer in transaction pooling mode,
// give it a direct connection ([ErrSessionChanged]). Besides ctx's and the
// server's errors, it fails with [lock.ErrLockTimeout], [ErrIndexBuildInProgress],
// a *[DuplicatesError] (run `paylock dedupe` first), and on Citus with
// [ErrCitusWorker] or [ErrNotDistributed]. The package doc, "Schema", gives
// its steps, and "Citus" what differs there.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	err := schema.Migrate(ctx, pool, schemaSQL, citusSchemaSQL)
	var dup *schema.DuplicatesError
	if errors.As(err, &dup) {
		return newDuplicatesError(dup)
	}
	return err
}

// ErrSessionChanged: the statements Migrate (or `paylock dedupe`) sent on its
// connection did not all run in one server session, as behind a pooler in
// transaction pooling mode such as pgbouncer's. The session-level lock
// Migrate holds may then stay held by the server process named in the error,
// on a pooled server connection, until that connection closes: later
// Migrate calls wait for it. Give Migrate a direct connection.
var ErrSessionChanged = schema.ErrSessionChanged

// ErrCitusWorker: Migrate (or `paylock dedupe`) ran on a Citus worker node.
// The coordinator owns the schema of distributed tables; the error names
// it. Nothing was changed.
var ErrCitusWorker = schema.ErrCitusWorker

// ErrNotDistributed: on a Citus coordinator, payments exists as a local
// table (made by Migrate before the extension was there): its single-server
// schema can't be distributed as it is. Nothing was changed; docs/SCALING.md
// says how to move its rows.
var ErrNotDistributed = schema.ErrNotDistributed

// Distributed reports whether payments is a table Citus distributes, as
// seen from the node q reaches (the coordinator or a worker): then use
// [NewDistributedRepository]. It makes two queries.
func Distributed(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	d, err := schema.Distributed(ctx, pool)
	if err != nil {
		return false, fmt.Errorf("payment: distributed: %w", err)
	}
	return d, nil
}

// ErrDuplicates is matched by a *DuplicatesError.
var ErrDuplicates = schema.ErrDuplicates

// DuplicatesError describes the duplicates that keep Migrate from creating
// the unique index.
type DuplicatesError struct {
	Groups int   // keys with more than one row
	Extra  int   // rows beyond the first of each such key
	Worst  []Key // the keys with the most rows, most first
	Counts []int // rows per key in Worst
}

func newDuplicatesError(d *schema.DuplicatesError) *DuplicatesError {
	e := &DuplicatesError{Groups: d.Groups, Extra: d.Extra, Counts: d.Counts}
	for _, k := range d.Worst {
		e.Worst = append(e.Worst, Key(k))
	}
	return e
}

// Error names the groups of duplicates, the extra rows and the worst keys.
func (e *DuplicatesError) Error() string {
	d := &schema.DuplicatesError{Groups: e.Groups, Extra: e.Extra, Counts: e.Counts}
	for _, k := range e.Worst {
		d.Worst = append(d.Worst, schema.Key(k))
	}
	return d.Error()
}

// Is reports whether target is ErrDuplicates.
func (e *DuplicatesError) Is(target error) bool { return target == ErrDuplicates }
