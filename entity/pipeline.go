package entity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// The wire side of With: the two round trips (lockAndLoad, save), the
// pipelines they send (batch), the prepared statements they use
// (statementName, savedSQL) and the reading of their results (resultRow).

// lockAndLoad sends BEGIN, the settings, the lock, Ensure and Find in one
// round trip and scans the row twice: the copy for fn and the one Save
// compares it with. prepared lists the Save statements prepared on conn.
func (r *Repository[K, V]) lockAndLoad(ctx context.Context, conn *pgx.Conn, k K, lk lock.Key, ev *Event) (before, v *V, prepared []string, err error) {
	ensureSQL, ensureArgs := r.table.Ensure(k)
	findSQL, findArgs := r.table.Find(k)
	if r.prepare {
		// Building the first pipeline prepares its statements, before it is
		// sent; prepare now, before taking the lock, those of the second
		// one too: a no-op (pgx's cache) but on a connection's first use.
		if _, err := conn.Prepare(ctx, statementName("COMMIT"), "COMMIT"); err != nil {
			return nil, nil, nil, txn.Classify(ctx, err)
		}
		for _, sql := range r.saves.list() {
			if _, err := conn.Prepare(ctx, statementName(sql), sql); err != nil {
				if conn.IsClosed() || ctx.Err() != nil {
					return nil, nil, nil, txn.Classify(ctx, err)
				}
				// The server refuses a statement that once worked (its
				// column was dropped, say): this call may not need it, and
				// one that does sends it unnamed and learns why it fails.
				r.saves.remove(sql)
				continue
			}
			prepared = append(prepared, sql)
		}
	}
	settings, err := r.settings.Probe(ctx, conn) // client_connection_check_interval if accepted
	if err != nil {
		return nil, nil, nil, txn.Classify(ctx, err)
	}
	b := batch{ctx: ctx, conn: conn, prepare: r.prepare}
	b.add(txn.SQLBegin)
	b.add(settings.SetSQL())
	if r.strategy == Advisory {
		// statement_timestamp() is when the lock statement started and
		// clock_timestamp(), evaluated after the lock, when it was granted.
		// Unnamed, never prepared: its comment names the key.
		b.addUnnamed(txn.LockSQL("clock_timestamp() - statement_timestamp() FROM pg_advisory_xact_lock($1::bigint)", lk.String()), lk.ID())
	}
	b.add(ensureSQL, ensureArgs...)
	b.add(findSQL, findArgs...)
	if b.err != nil {
		return nil, nil, nil, b.err
	}
	sent := time.Now()
	results, err := conn.PgConn().ExecBatch(ctx, &b.Batch).ReadAll()
	returned := time.Now()
	ev.RoundTrip = returned.Sub(sent)
	// The statement that serializes callers: the advisory lock, or with
	// RowLock the last one, Find, whose row lock is what callers wait for.
	locker := b.n - 1
	if r.strategy == Advisory {
		locker = 2
	}
	if len(results) <= locker || results[locker].Err != nil {
		// Never granted (a lock timeout, ctx done, the connection lost):
		// the client waited for the whole round trip.
		ev.Wait = ev.RoundTrip
		if err == nil {
			err = fmt.Errorf("%d results for %d statements", len(results), b.n)
		}
		return nil, nil, nil, txn.Classify(ctx, err)
	}
	ev.Granted = returned
	if r.strategy == Advisory {
		var wait pgtype.Interval
		if err := scanRow(conn.TypeMap(), results[2], &wait); err != nil {
			return nil, nil, nil, fmt.Errorf("read lock wait: %w", err)
		}
		ev.Wait = time.Duration(wait.Microseconds) * time.Microsecond
	}
	if err != nil {
		return nil, nil, nil, txn.Classify(ctx, err)
	}
	if len(results) != b.n {
		return nil, nil, nil, fmt.Errorf("%d results for %d statements", len(results), b.n)
	}
	ensured, found := results[len(results)-2], results[len(results)-1]
	if len(found.Rows) == 0 {
		return nil, nil, nil, ErrNotFound
	}
	ev.Created = ensured.CommandTag.RowsAffected() == 1
	row := &resultRow{m: conn.TypeMap(), res: found}
	if before, err = r.table.Scan(row, ev.Created); err != nil {
		return nil, nil, nil, err
	}
	if v, err = r.table.Scan(row, ev.Created); err != nil {
		return nil, nil, nil, err
	}
	return before, v, prepared, nil
}

// save sends txn.CheckSQL, release (a RELEASE SAVEPOINT), if any, sql, if
// any, and COMMIT in one round trip, with the lock held:
// so it prepares nothing. prepared lists the Save statements lockAndLoad
// prepared on conn (COMMIT always is); any other goes unnamed, and joins
// r.saves, for later calls to prepare first, once it has worked.
func (r *Repository[K, V]) save(ctx context.Context, conn *pgx.Conn, release, sql string, args []any, prepared []string) error {
	b := batch{ctx: ctx, conn: conn, prepare: r.prepare}
	// Fails unless this is still the transaction that holds the lock: fn
	// may have ended it and begun another in one message ("COMMIT; BEGIN"),
	// which the connection's status can't tell.
	b.addUnnamed(txn.CheckSQL)
	if release != "" {
		b.addUnnamed(release)
	}
	known := slices.Contains(prepared, sql)
	switch {
	case sql == "":
	case known:
		b.add(sql, args...) // in pgx's record of conn's statements: no round trip
	default:
		b.addUnnamed(sql, args...)
	}
	b.add("COMMIT")
	if b.err != nil {
		return txn.BeforeCommit(b.err, conn.IsClosed())
	}
	results, err := conn.PgConn().ExecBatch(ctx, &b.Batch).ReadAll()
	if txn.EndedByFn(err) {
		return ErrTxEnded // nothing after fn's COMMIT ran: the batch stopped at the check
	}
	if err != nil && !committed(results) {
		return txn.AfterCommit(txn.Classify(ctx, err))
	}
	if tag := results[len(results)-1].CommandTag; tag.String() != "COMMIT" {
		return fmt.Errorf("commit ended in %s", tag)
	}
	if r.prepare && sql != "" && !known {
		r.saves.add(sql)
	}
	return nil
}

// committed reports whether results hold COMMIT's completion: an error after
// it (a FATAL as the server shuts down) can't undo the commit.
func committed(results []*pgconn.Result) bool {
	n := len(results)
	return n > 0 && results[n-1].Err == nil && results[n-1].CommandTag.String() == "COMMIT"
}

// batch builds a pgconn.Batch. With prepare set, statements go as named
// prepared statements, prepared on the connection before the lock is taken
// (one round trip each, once per connection) and cached by pgx; otherwise,
// and always for the lock statement, as unnamed statements with text
// parameters whose types the server infers, which is what a pooler without
// prepared-statement support needs (pgx's exec and simple-protocol modes).
type batch struct {
	pgconn.Batch
	ctx     context.Context
	conn    *pgx.Conn
	prepare bool
	eqb     pgx.ExtendedQueryBuilder
	n       int
	err     error
}

func (b *batch) add(sql string, args ...any) {
	if !b.prepare {
		b.addUnnamed(sql, args...)
		return
	}
	if b.err != nil {
		return
	}
	sd, err := b.conn.Prepare(b.ctx, statementName(sql), sql)
	if err != nil {
		b.err = err
		return
	}
	if b.err = b.eqb.Build(b.conn.TypeMap(), sd, args); b.err != nil {
		return
	}
	b.ExecStatement(sd, b.eqb.ParamValues, b.eqb.ParamFormats, b.eqb.ResultFormats)
	b.n++
}

func (b *batch) addUnnamed(sql string, args ...any) {
	if b.err != nil {
		return
	}
	if b.err = b.eqb.Build(b.conn.TypeMap(), nil, args); b.err != nil {
		return
	}
	b.ExecParams(sql, b.eqb.ParamValues, nil, b.eqb.ParamFormats, b.eqb.ResultFormats)
	b.n++
}

// statementName names a prepared statement after its text.
func statementName(sql string) string {
	return "paylock_" + strconv.FormatUint(xxhash.Sum64String(sql), 36)
}

// resultRow is a pgx.Row over the first row of a pgconn result.
type resultRow struct {
	m   *pgtype.Map
	res *pgconn.Result
}

func (r *resultRow) Scan(dest ...any) error { return scanRow(r.m, r.res, dest...) }

func scanRow(m *pgtype.Map, res *pgconn.Result, dest ...any) error {
	if len(res.Rows) == 0 {
		return pgx.ErrNoRows
	}
	values := res.Rows[0]
	if len(dest) != len(values) {
		return fmt.Errorf("scan: %d destinations for %d columns", len(dest), len(values))
	}
	for i, fd := range res.FieldDescriptions {
		if err := m.Scan(fd.DataTypeOID, fd.Format, values[i], dest[i]); err != nil {
			return fmt.Errorf("scan column %s: %w", fd.Name, err)
		}
	}
	return nil
}

// stalePlan reports whether err is PostgreSQL refusing a prepared statement
// whose result type changed under it (SQLSTATE 0A000, "cached plan must not
// change result type").
func stalePlan(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && txn.StalePlan(pgErr) // SQLSTATE and routine, not the translated message
}

// maxSaveStatements bounds how many distinct Save statements a Repository
// prepares; others run as unnamed statements.
const maxSaveStatements = 16

// savedSQL is the set of statements Table.Save returned that then ran and
// committed, which With prepares on each connection before it takes the
// lock. A statement joins only once it worked, and leaves when the server
// refuses to prepare it, so that one broken Save statement costs only the
// calls that use it.
type savedSQL struct {
	mu   sync.RWMutex
	sqls []string // never changed in place: list hands it out
}

func (s *savedSQL) add(sql string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sqls) < maxSaveStatements && !slices.Contains(s.sqls, sql) {
		s.sqls = append(slices.Clip(s.sqls), sql)
	}
}

func (s *savedSQL) remove(sql string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.sqls, sql); i >= 0 {
		s.sqls = slices.Delete(slices.Clone(s.sqls), i, i+1)
	}
}

func (s *savedSQL) list() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sqls
}
