// Package schema is the machinery behind payment.Migrate: the session-level
// lock MigrateKey, the schema transaction, and the concurrent build of the
// unique index on payments, which `paylock dedupe` shares (BuildUniqueIndex,
// UniqueIndexState) so that it never races Migrate. The payment package
// documents the behaviour and exports the errors.
package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/english"
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// UniqueIndex is the name of the UNIQUE index on payments (service_id,
// line_item_id); payment.UniqueIndex.
const UniqueIndex = "payments_service_id_line_item_id_key"

// MigrateKey is the advisory lock Migrate holds from start to end, at
// session level on a connection of its own, so concurrent Migrate calls run
// one after another.
var MigrateKey = lock.NewKey("paylock.migrate")

// ErrIndexBuildInProgress is payment.ErrIndexBuildInProgress.
var ErrIndexBuildInProgress = errors.New("payment: migrate: another session is building an index on payments")

// LockTimeout is payment.MigrateLockTimeout: how long the schema
// transaction waits for a table lock.
const LockTimeout = 3 * time.Second

const createIndexSQL = "CREATE UNIQUE INDEX %s" + UniqueIndex + " ON payments (service_id, line_item_id)"

// Migrate is payment.Migrate: it applies schemaSQL (payment.Schema()) and
// then makes sure UniqueIndex exists and is valid; see payment.Migrate. On a
// Citus coordinator it applies citusSQL (payment.CitusSchema()) before
// schemaSQL and distributes the tables; on a Citus worker it refuses with an
// error matching ErrCitusWorker.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schemaSQL, citusSQL string) (err error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("payment: migrate: acquire a connection: %w", txn.Classify(ctx, err))
	}
	conn := pc.Conn()
	node, err := refuseWorker(ctx, conn)
	if err != nil {
		pc.Release()
		return err
	}
	if node == CitusCoordinator {
		schemaSQL = citusSQL + ";\n" + schemaSQL
	}
	pid, err := lockMigrate(ctx, conn)
	if err != nil {
		pc.Release() // a connection that failed mid-query is closed, and destroyed
		return err
	}
	defer func() {
		if rerr := releaseMigrate(ctx, pc, pid); err == nil {
			err = rerr
		}
	}()
	created, err := applySchema(ctx, conn, pid, schemaSQL, node == CitusCoordinator)
	if err != nil || created {
		return err
	}
	return ensureIndex(ctx, conn, pid, &IndexBuild{})
}

// IndexBuild is what BuildUniqueIndex did.
type IndexBuild struct {
	AlreadyValid    bool          // UniqueIndex was valid from the start: nothing done
	DroppedInvalid  int           // INVALID indexes dropped (left by failed builds, this call's included)
	Builds          int           // CREATE UNIQUE INDEX CONCURRENTLY statements run
	DuplicateErrors int           // builds that failed on a duplicate inserted meanwhile
	BuildDuration   time.Duration // time spent in those statements
}

// BuildUniqueIndex is steps 2 to 5 of payment.Migrate on an existing payments table,
// under the same advisory lock MigrateKey and with the same rules: it waits
// for another session's build rather than drop it, returns a
// *DuplicatesError (writing nothing) if payments holds duplicates, and
// otherwise replaces an INVALID UniqueIndex and builds it concurrently. It is
// for tools that prepare payments for the index, such as `paylock dedupe`,
// so that they never race Migrate or each other. It does not apply Schema.
func BuildUniqueIndex(ctx context.Context, pool *pgxpool.Pool) (b IndexBuild, err error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return b, fmt.Errorf("payment: build index: acquire a connection: %w", txn.Classify(ctx, err))
	}
	if _, err := refuseWorker(ctx, pc.Conn()); err != nil {
		pc.Release()
		return b, err
	}
	pid, err := lockMigrate(ctx, pc.Conn())
	if err != nil {
		pc.Release()
		return b, err
	}
	defer func() {
		if rerr := releaseMigrate(ctx, pc, pid); err == nil {
			err = rerr
		}
	}()
	err = ensureIndex(ctx, pc.Conn(), pid, &b)
	return b, err
}

// ErrSessionChanged is payment.ErrSessionChanged.
var ErrSessionChanged = errors.New("payment: migrate: server session changed between statements")

// sameSession returns an error matching ErrSessionChanged unless got, the
// pg_backend_pid() a statement returned, is pid, the session holding
// MigrateKey.
func sameSession(pid, got uint32) error {
	if got == pid {
		return nil
	}
	return fmt.Errorf("%w: a statement ran in server process %d, and %s may stay held by process %d until its connection closes (a pooler in transaction mode? Migrate needs a direct connection)",
		ErrSessionChanged, got, MigrateKey, pid)
}

// lockMigrate takes the session-level advisory lock MigrateKey on conn,
// trying again after a pause while another session holds it. It doesn't wait
// in pg_advisory_lock: a statement waiting there is a transaction that a
// CREATE INDEX CONCURRENTLY run by the holder would wait for in turn, and the
// server would break that deadlock by failing one of them.
//
// It returns the pid of the server process that holds the lock: every later
// statement checks that it runs there too (see ErrSessionChanged).
func lockMigrate(ctx context.Context, conn *pgx.Conn) (pid uint32, err error) {
	sql := txn.LockSQL("pg_try_advisory_lock($1), pg_backend_pid()", MigrateKey.String())
	for pause := 5 * time.Millisecond; ; pause = min(2*pause, time.Second) {
		var ok bool
		if err := conn.QueryRow(ctx, sql, pgx.QueryExecModeExec, MigrateKey.ID()).Scan(&ok, &pid); err != nil {
			return 0, fmt.Errorf("payment: migrate: acquire %s: %w", MigrateKey, txn.Classify(ctx, err))
		}
		if ok {
			return pid, nil
		}
		if err := sleep(ctx, pause); err != nil {
			return 0, fmt.Errorf("payment: migrate: wait for %s: %w", MigrateKey, err)
		}
	}
}

// sleep pauses for d and returns nil, or returns ctx.Err() as soon as ctx is
// done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// releaseMigrate unlocks MigrateKey, restores lock_timeout and returns the
// connection to the pool; if that fails it closes the connection instead,
// which ends the session and its lock. In a session other than pid's it
// touches neither (the lock there may be another Migrate's) and returns an
// error matching ErrSessionChanged.
func releaseMigrate(ctx context.Context, pc *pgxpool.Conn, pid uint32) error {
	defer pc.Release()
	conn := pc.Conn()
	if conn.IsClosed() {
		return nil
	}
	ctx, cancel := txn.CleanupContext(ctx)
	defer cancel()
	var got uint32
	err := conn.QueryRow(ctx, `SELECT pg_backend_pid(),
		CASE WHEN pg_backend_pid() = $2 THEN pg_advisory_unlock($1) END,
		CASE WHEN pg_backend_pid() = $2 THEN set_config('lock_timeout', reset_val, false) END
		FROM pg_settings WHERE name = 'lock_timeout'`, pgx.QueryExecModeExec, MigrateKey.ID(), pid).Scan(&got, nil, nil)
	if err != nil {
		conn.Close(ctx)
		return nil
	}
	return sameSession(pid, got)
}

// applySchema runs schemaSQL in a transaction under a bounded lock_timeout and,
// if that transaction created payments, the unique index as well; with
// citus, it then distributes the tables (see distribute).
func applySchema(ctx context.Context, conn *pgx.Conn, pid uint32, schemaSQL string, citus bool) (created bool, err error) {
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var got uint32
		err := tx.QueryRow(ctx, "SELECT set_config('lock_timeout', $1, true), pg_backend_pid()",
			fmt.Sprint(LockTimeout.Milliseconds())).Scan(nil, &got)
		if err != nil {
			return err
		}
		if err := sameSession(pid, got); err != nil {
			return err
		}
		var existed bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass('payments') IS NOT NULL").Scan(&existed); err != nil {
			return err
		}
		if citus {
			// One connection per worker for the whole transaction: the
			// DDL below and create_distributed_table's shards then run on
			// the connections that already hold this transaction's locks.
			if _, err := tx.Exec(ctx, "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, schemaSQL); err != nil {
			return err
		}
		if !existed {
			created = true
			if _, err := tx.Exec(ctx, fmt.Sprintf(createIndexSQL, "")); err != nil {
				return err
			}
		}
		if citus {
			return distribute(ctx, tx, existed)
		}
		return nil
	})
	if errors.Is(err, ErrSessionChanged) || errors.Is(err, ErrNotDistributed) {
		return false, err
	}
	if err != nil {
		return false, fmt.Errorf("payment: migrate: apply schema: %w", txn.Classify(ctx, err))
	}
	return created, nil
}

// ensureIndex is steps 2 to 5 of Migrate, on the connection holding
// MigrateKey, recording what it does in b.
func ensureIndex(ctx context.Context, conn *pgx.Conn, pid uint32, b *IndexBuild) error {
	// waiting: Migrate found another session's build in progress and waits
	// for it; a ctx that ends meanwhile, in a pause or in a query, ends
	// that wait.
	waiting := false
	waited := func(err error) error {
		if waiting && ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ErrIndexBuildInProgress, err)
		}
		return err
	}
	for pause, first := 5*time.Millisecond, true; ; first = false {
		// Concurrent builds and drops don't block writers; their waits
		// (for older transactions) must not be cut short by a
		// lock_timeout. Only in MigrateKey's session: elsewhere the
		// setting would stay behind.
		var got uint32
		err := conn.QueryRow(ctx, `SELECT pg_backend_pid(),
			CASE WHEN pg_backend_pid() = $1 THEN set_config('lock_timeout', '0', false) END`, pid).Scan(&got, nil)
		if err != nil {
			return waited(fmt.Errorf("payment: migrate: %w", txn.Classify(ctx, err)))
		}
		if err := sameSession(pid, got); err != nil {
			return err
		}
		st, err := indexState(ctx, conn)
		if err != nil {
			return waited(err)
		}
		if st.Valid {
			b.AlreadyValid = first
			return nil
		}
		if st.Building {
			waiting = true
			if err := sleep(ctx, pause); err != nil {
				return fmt.Errorf("%w: %w", ErrIndexBuildInProgress, err)
			}
			pause = min(2*pause, time.Second)
			continue
		}
		if dup, err := findDuplicates(ctx, conn, 5); err != nil {
			return err
		} else if dup.Groups > 0 {
			return dup
		}
		if st.Exists {
			if err := dropInvalidIndex(ctx, conn); err != nil {
				return err
			}
			b.DroppedInvalid++
		}
		start := time.Now()
		b.Builds++
		_, err = conn.Exec(ctx, fmt.Sprintf(createIndexSQL, "CONCURRENTLY "))
		b.BuildDuration += time.Since(start)
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "42P07": // duplicate_table
			// Another session (not a Migrate) started a build of its own
			// since indexState looked: wait for it. Unless the name is
			// taken by something that is not an index on payments.
			if st, serr := indexState(ctx, conn); serr != nil || !st.Exists {
				return fmt.Errorf("payment: migrate: create unique index: %w", err)
			}
			continue
		case errors.As(err, &pgErr) && pgErr.Code == "23505": // unique_violation
			// A writer that doesn't take the lock inserted a duplicate
			// meanwhile. The failed build left an INVALID index that still
			// slows writes down.
			b.DuplicateErrors++
			if err := dropInvalidIndex(ctx, conn); err != nil {
				return err
			}
			b.DroppedInvalid++
			if dup, derr := findDuplicates(ctx, conn, 5); derr == nil && dup.Groups > 0 {
				return dup
			}
			return fmt.Errorf("payment: migrate: create unique index: %w", err)
		case err != nil:
			err = fmt.Errorf("payment: migrate: create unique index: %w", txn.Classify(ctx, err))
			// The server ended the build (statement_timeout, a cancel, a
			// deadlock) and left an INVALID index that writers still
			// maintain. It is this build's: MigrateKey is held, and a
			// build of another session's would have failed it with
			// 42P07. Drop it while the session lives.
			// (Unless, since, another session started a build of its own.)
			if ctx.Err() != nil || conn.IsClosed() {
				return err
			}
			if st, serr := indexState(ctx, conn); serr != nil || !st.Exists || st.Valid || st.Building {
				return err
			}
			if derr := dropInvalidIndex(ctx, conn); derr != nil {
				return fmt.Errorf("%w; and then: %w", err, derr)
			}
			b.DroppedInvalid++
			return err
		}
		if st, err = indexState(ctx, conn); err != nil {
			return err
		}
		if !st.Valid {
			return fmt.Errorf("payment: migrate: index %s is not valid after its build", UniqueIndex)
		}
		return nil
	}
}

func dropInvalidIndex(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+UniqueIndex); err != nil {
		return fmt.Errorf("payment: migrate: drop invalid index %s: %w", UniqueIndex, txn.Classify(ctx, err))
	}
	return nil
}

// IndexState is the state of UniqueIndex on payments, as UniqueIndexState
// found it.
type IndexState struct {
	Exists bool // UniqueIndex exists on payments
	// Valid: and is valid: it enforces uniqueness. On a Citus coordinator
	// with payments distributed, the shards' copies must all be valid too.
	Valid bool
	// Building: another session is running CREATE INDEX CONCURRENTLY or
	// REINDEX CONCURRENTLY on payments. Such a build shows in
	// pg_stat_progress_create_index and holds the table's SHARE UPDATE
	// EXCLUSIVE lock at session level for its whole run, so an INVALID
	// index may still be on its way to valid: it must not be dropped. An
	// INVALID index while nothing builds was left by a failed build.
	// (pg_locks shows the lock's table to every role; the progress view
	// hides relid from other roles.)
	Building bool
}

// UniqueIndexState reports the state of UniqueIndex on payments: the one
// test Migrate, BuildUniqueIndex and `paylock dedupe` use to tell a build in
// progress from a failed one.
func UniqueIndexState(ctx context.Context, q Querier) (IndexState, error) {
	rows, err := q.Query(ctx, `
		SELECT i.indisvalid, EXISTS (
			SELECT 1 FROM pg_stat_progress_create_index p JOIN pg_locks l ON l.pid = p.pid
			WHERE p.pid <> pg_backend_pid() AND p.datid = l.database
			  AND l.locktype = 'relation' AND l.relation = i.indrelid
			  AND l.mode = 'ShareUpdateExclusiveLock' AND l.granted
			  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
		FROM pg_index i
		WHERE i.indexrelid = to_regclass($1) AND i.indrelid = to_regclass('payments')`, UniqueIndex)
	if err != nil {
		return IndexState{}, fmt.Errorf("payment: inspect index: %w", txn.Classify(ctx, err))
	}
	st, err := pgx.CollectExactlyOneRow(rows, func(r pgx.CollectableRow) (IndexState, error) {
		st := IndexState{Exists: true}
		return st, r.Scan(&st.Valid, &st.Building)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return IndexState{}, nil
	}
	if err == nil && st.Valid {
		// On Citus, the coordinator's index stands for its shards'.
		st.Valid, err = shardsValid(ctx, q)
	}
	if err != nil {
		return IndexState{}, fmt.Errorf("payment: inspect index: %w", txn.Classify(ctx, err))
	}
	return st, nil
}

// indexState is UniqueIndexState on Migrate's connection.
func indexState(ctx context.Context, conn *pgx.Conn) (IndexState, error) {
	return UniqueIndexState(ctx, conn)
}

// ErrDuplicates is payment.ErrDuplicates, matched by a *DuplicatesError.
var ErrDuplicates = errors.New("payment: payments holds duplicate (service_id, line_item_id) rows")

// DuplicatesError describes the duplicates that keep Migrate from creating
// the unique index; payment.Migrate returns it as a *payment.DuplicatesError.
type DuplicatesError struct {
	Groups int   // keys with more than one row
	Extra  int   // rows beyond the first of each such key
	Worst  []Key // the keys with the most rows, most first
	Counts []int // rows per key in Worst
}

// Querier runs queries: a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Key is a payment's key, as payment.Key holds it.
type Key struct {
	ServiceID  int64
	LineItemID string
}

// findDuplicates counts duplicate groups in payments and lists the worst
// ones, up to limit.
func findDuplicates(ctx context.Context, q Querier, limit int) (*DuplicatesError, error) {
	rows, err := q.Query(ctx, `
		SELECT service_id, line_item_id, n, count(*) OVER (), sum(n - 1) OVER ()
		FROM (SELECT service_id, line_item_id, count(*) AS n FROM payments
		      GROUP BY service_id, line_item_id HAVING count(*) > 1) d
		ORDER BY n DESC, service_id, line_item_id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("payment: find duplicates: %w", err)
	}
	d := &DuplicatesError{}
	var k Key
	var n int
	_, err = pgx.ForEachRow(rows, []any{&k.ServiceID, &k.LineItemID, &n, &d.Groups, &d.Extra}, func() error {
		d.Worst, d.Counts = append(d.Worst, k), append(d.Counts, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("payment: find duplicates: %w", err)
	}
	return d, nil
}

func (e *DuplicatesError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %s %s %s", ErrDuplicates, english.Count(e.Groups, "key", "keys"), english.Has(e.Groups),
		english.Count(e.Extra, "extra row", "extra rows"))
	for i, k := range e.Worst {
		sep := ", worst: "
		if i > 0 {
			sep = ", "
		}
		fmt.Fprintf(&b, "%s(%d, %q) x%d", sep, k.ServiceID, k.LineItemID, e.Counts[i])
	}
	b.WriteString("; run `paylock dedupe` to merge them, then migrate again")
	return b.String()
}

// Is reports whether target is ErrDuplicates.
func (e *DuplicatesError) Is(target error) bool { return target == ErrDuplicates }
