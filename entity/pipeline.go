package entity

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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
// (statementName, stmtNames, savedSQL) and the reading of their results
// (valuesRow).

// lockAndLoad sends BEGIN, the settings, the lock, Ensure and Find in one
// round trip and scans the row twice: the copy for fn and the one Save
// compares it with. prepared lists the Save statements prepared on conn.
//
// The lock statement: a caller alone with its key in r (alone),
// whose statements are prepared, first tries the lock with a prepared
// statement (txn.TrySQL) that fails when another session holds it or waits
// for it; only then, in a second round trip that rolls that transaction
// back first, does it wait with the statement whose comment names the key
// (txn.WaitSQL), unnamed, parsed in every call: pg_stat_activity shows a
// waiter's statement, and `paylock locks` reads the key from it. A caller
// with others of its key in r, which will likely wait, sends
// that one at once.
func (r *Repository[K, V]) lockAndLoad(ctx context.Context, conn *pgx.Conn, k K, lk lock.Key, ev *Event, alone bool) (before, v *V, prepared []string, err error) {
	ensureSQL, ensureArgs := r.table.Ensure(k)
	findSQL, findArgs := r.table.Find(k)
	if r.prepare {
		// Building the first pipeline prepares its statements, before it is
		// sent; prepare now, before taking the lock, those of the second
		// one too: a no-op (pgx's cache) but on a connection's first use.
		for _, sql := range [...]string{txn.CheckSQL, "COMMIT", txn.TrySQL, "ROLLBACK"} { // ROLLBACK: after a failed try
			if _, err := conn.Prepare(ctx, r.names.get(sql), sql); err != nil {
				return nil, nil, nil, txn.Classify(ctx, err)
			}
		}
		for _, sql := range r.saves.list() {
			if _, err := conn.Prepare(ctx, r.names.get(sql), sql); err != nil {
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
	try := alone && r.prepare && r.strategy == Advisory
	if alone {
		// The others of the key in r wait (waitInQueue, before they take
		// a connection) until this caller holds the lock or has sent its
		// wait for it, so that a failed try doesn't let the next one get
		// ahead at the server.
		defer r.queue.Settle(lk.ID())
		if !try {
			r.queue.Settle(lk.ID())
		}
	}
	sent := func() {}
	for rollback := false; ; rollback = true {
		before, v, err = r.load(ctx, conn, ensureSQL, ensureArgs, findSQL, findArgs, lk, ev, settings.ConnCheck, try, rollback, sent)
		if !try || !errors.Is(err, errLockBusy) {
			return before, v, prepared, err
		}
		try = false
		sent = func() { r.queue.Settle(lk.ID()) }
	}
}

// errLockBusy: txn.TrySQL found the lock taken or awaited.
var errLockBusy = errors.New("entity: the lock is taken")

// failedDivision reports whether err is the division by zero (SQLSTATE
// 22012) with which txn.TrySQL fails when the lock is taken.
func failedDivision(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "22012"
}

// load is one round trip of lockAndLoad: ROLLBACK first (rollback, after a
// try that failed), BEGIN, the settings, the lock (tried, if try), Ensure
// and Find.
func (r *Repository[K, V]) load(ctx context.Context, conn *pgx.Conn, ensureSQL string, ensureArgs []any, findSQL string, findArgs []any,
	lk lock.Key, ev *Event, connCheck, try, rollback bool, sent func()) (before, v *V, err error) {
	b := batch{ctx: ctx, conn: conn, prepare: r.prepare, names: &r.names}
	if rollback {
		b.add("ROLLBACK")
	}
	b.add(txn.SQLBegin)
	b.add(r.setSQL[b2i(connCheck)])
	locker := -1
	if r.strategy == Advisory {
		locker = b.n
		if try {
			b.add(txn.TrySQL, lk.ID())
		} else {
			// It returns how long it waited. Unnamed, never prepared: its
			// comment names the key.
			b.addLock(txn.WaitSQL("$1::bigint", lk.String()), lk.ID())
		}
	}
	b.add(ensureSQL, ensureArgs...)
	b.add(findSQL, findArgs...)
	if b.err != nil {
		return nil, nil, b.err
	}
	// The statement that serializes callers: the advisory lock, or with
	// RowLock the last one, Find, whose row lock is what callers wait for.
	ensure, find := b.n-2, b.n-1
	if locker < 0 {
		locker = find
	}
	// The results are read as they arrive, not copied (ReadAll would copy
	// every row): the lock's wait and the row are scanned from pgconn's
	// buffer, which a row's values are valid in until the next row is read.
	var (
		rows, done int   // rows of Find, results read without error
		failed     error // the first statement's error
		wait       pgtype.Interval
		waitErr    error
		scanErr    error
		created    bool // Ensure inserted the row
	)
	start := time.Now()
	mrr := conn.PgConn().ExecBatch(ctx, &b.Batch) // written when it returns
	sent()
	for i := 0; mrr.NextResult(); i++ {
		rr := mrr.ResultReader()
		for rr.NextRow() {
			switch {
			case i == locker && r.strategy == Advisory && !try: // the try's 1 says nothing
				waitErr = scanValues(conn, rr.FieldDescriptions(), rr.Values(), &wait)
			case i == find && rows == 0:
				row := valuesRow{conn: conn, fds: rr.FieldDescriptions(), values: rr.Values()}
				if before, scanErr = r.table.Scan(row, created); scanErr == nil {
					v, scanErr = r.table.Scan(row, created)
				}
			}
			if i == find {
				rows++
			}
		}
		tag, err := rr.Close()
		if err != nil {
			if failed == nil {
				failed = err
			}
			continue
		}
		done++
		if i == ensure {
			created = tag.RowsAffected() == 1
		}
	}
	err = mrr.Close()
	returned := time.Now()
	ev.RoundTrip = returned.Sub(start)
	if err == nil {
		err = failed
	}
	if try && done == locker && failedDivision(err) {
		return nil, nil, errLockBusy
	}
	if done <= locker {
		// Never granted (a lock timeout, ctx done, the connection lost):
		// the client waited for the whole round trip.
		ev.Wait = ev.RoundTrip
		if err == nil {
			err = fmt.Errorf("%d results for %d statements", done, b.n)
		}
		return nil, nil, txn.Classify(ctx, err)
	}
	ev.Granted = returned
	if r.strategy == Advisory {
		if waitErr != nil {
			return nil, nil, fmt.Errorf("read lock wait: %w", waitErr)
		}
		ev.Wait = time.Duration(wait.Microseconds) * time.Microsecond
	}
	if err != nil {
		return nil, nil, txn.Classify(ctx, err)
	}
	if done != b.n {
		return nil, nil, fmt.Errorf("%d results for %d statements", done, b.n)
	}
	if rows == 0 {
		return nil, nil, ErrNotFound
	}
	if scanErr != nil {
		return nil, nil, scanErr
	}
	ev.Created = created
	return before, v, nil
}

// save sends txn.CheckSQL, release (a RELEASE SAVEPOINT), if any, sql, if
// any, and COMMIT in one round trip, with the lock held:
// so it prepares nothing. prepared lists the Save statements lockAndLoad
// prepared on conn (COMMIT and CheckSQL always are); any other goes unnamed, and joins
// r.saves, for later calls to prepare first, once it has worked.
func (r *Repository[K, V]) save(ctx context.Context, conn *pgx.Conn, release, sql string, args []any, prepared []string) error {
	b := batch{ctx: ctx, conn: conn, prepare: r.prepare, names: &r.names}
	// Fails unless this is still the transaction that holds the lock: fn
	// may have ended it and begun another in one message ("COMMIT; BEGIN"),
	// which the connection's status can't tell.
	b.add(txn.CheckSQL)
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
	// Read without copying: only the last result's tag and error matter.
	var (
		n    int
		last pgconn.CommandTag
		lerr error
	)
	mrr := conn.PgConn().ExecBatch(ctx, &b.Batch)
	for ; mrr.NextResult(); n++ {
		last, lerr = mrr.ResultReader().Close()
	}
	err := mrr.Close()
	if txn.EndedByFn(err) {
		return txn.ErrTxEnded // nothing after fn's COMMIT ran: the batch stopped at the check
	}
	if err != nil && !committed(n, last, lerr) {
		failed := n // the statement whose error ended the reading, counted from 0
		if lerr != nil {
			failed = n - 1
		}
		if failed < b.n-1 && txn.ServerError(err) {
			// A statement before COMMIT failed with an ERROR of the
			// server's: the pipeline stopped there and COMMIT never ran,
			// whatever the error's class (08: a Citus worker out of reach).
			return txn.BeforeCommit(txn.Classify(ctx, err), conn.IsClosed())
		}
		return txn.AfterCommit(txn.Classify(ctx, err))
	}
	if last.String() != "COMMIT" {
		return fmt.Errorf("commit ended in %s", last)
	}
	if r.prepare && sql != "" && !known {
		r.saves.add(sql)
	}
	return nil
}

// committed reports whether the last of n results read, tag and err, is
// COMMIT's completion: an error after it (a FATAL as the server shuts down)
// can't undo the commit.
func committed(n int, tag pgconn.CommandTag, err error) bool {
	return n > 0 && err == nil && tag.String() == "COMMIT"
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
	names   *stmtNames
	eqb     *pgx.ExtendedQueryBuilder // the connection's: see eqbOf
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
	sd, err := b.conn.Prepare(b.ctx, b.names.get(sql), sql)
	if err != nil {
		b.err = err
		return
	}
	if b.err = b.builder().Build(b.conn.TypeMap(), sd, args); b.err != nil {
		return
	}
	b.ExecStatement(sd, b.eqb.ParamValues, b.eqb.ParamFormats, b.eqb.ResultFormats)
	b.n++
}

func (b *batch) addUnnamed(sql string, args ...any) {
	if b.err != nil {
		return
	}
	if b.err = b.builder().Build(b.conn.TypeMap(), nil, args); b.err != nil {
		return
	}
	b.ExecParams(sql, b.eqb.ParamValues, nil, b.eqb.ParamFormats, b.eqb.ResultFormats)
	b.n++
}

// binaryResults asks for every column in binary.
var binaryResults = []int16{pgx.BinaryFormatCode}

// addLock adds the lock statement, unnamed, with its one column (an
// interval) in binary, which scans without parsing.
func (b *batch) addLock(sql string, id int64) {
	if b.err != nil {
		return
	}
	if b.err = b.builder().Build(b.conn.TypeMap(), nil, []any{id}); b.err != nil {
		return
	}
	b.ExecParams(sql, b.eqb.ParamValues, nil, b.eqb.ParamFormats, binaryResults)
	b.n++
}

// builder returns the connection's query builder, kept in
// pgconn.PgConn.CustomData so that its buffers serve every call on the
// connection (only its holder uses it): pgconn copies the parameters into
// the batch's message as each statement is added.
func (b *batch) builder() *pgx.ExtendedQueryBuilder {
	if b.eqb == nil {
		data := b.conn.PgConn().CustomData()
		b.eqb, _ = data[eqbKey].(*pgx.ExtendedQueryBuilder)
		if b.eqb == nil {
			b.eqb = new(pgx.ExtendedQueryBuilder)
			data[eqbKey] = b.eqb
		}
	}
	return b.eqb
}

const eqbKey = "paylock.query_builder"

// statementName names a prepared statement after its text.
func statementName(sql string) string {
	return "paylock_" + strconv.FormatUint(xxhash.Sum64String(sql), 36)
}

// valuesRow is a pgx.Row over a row's values as pgconn read them, valid
// until the next row is read.
type valuesRow struct {
	conn   *pgx.Conn
	fds    []pgconn.FieldDescription
	values [][]byte
}

func (r valuesRow) Scan(dest ...any) error { return scanValues(r.conn, r.fds, r.values, dest...) }

func scanValues(conn *pgx.Conn, fds []pgconn.FieldDescription, values [][]byte, dest ...any) error {
	if len(dest) != len(values) {
		return fmt.Errorf("scan: %d destinations for %d columns", len(dest), len(values))
	}
	plans := scanPlansOf(conn)
	for i, fd := range fds {
		if err := plans.scan(conn.TypeMap(), fd.DataTypeOID, fd.Format, values[i], dest[i]); err != nil {
			return fmt.Errorf("scan column %s: %w", fd.Name, err)
		}
	}
	return nil
}

// scanPlans caches on a connection the pgtype scan plans of With's reads:
// pgtype.Map.Scan plans every value afresh, which was a tenth of With's
// allocations. A plan is kept per column type, format and Go type, as pgx's
// own Rows keep theirs for the rows of one query. Register types on a
// connection before its first With (in the pool's AfterConnect), as pgx
// expects anyway: a plan made earlier is not remade.
type scanPlans struct{ plans []scanPlan }

type scanPlan struct {
	oid    uint32
	format int16
	typ    reflect.Type
	plan   pgtype.ScanPlan
}

// scanPlansKey is where a connection's scanPlans are kept, in
// pgconn.PgConn.CustomData: only the holder of the connection uses them.
const scanPlansKey = "paylock.scan_plans"

// maxScanPlans bounds a connection's scanPlans; others are planned each time.
const maxScanPlans = 64

func scanPlansOf(conn *pgx.Conn) *scanPlans {
	data := conn.PgConn().CustomData()
	sp, _ := data[scanPlansKey].(*scanPlans)
	if sp == nil {
		sp = &scanPlans{}
		data[scanPlansKey] = sp
	}
	return sp
}

func (sp *scanPlans) scan(m *pgtype.Map, oid uint32, format int16, src []byte, dst any) error {
	if dst == nil {
		return nil // as pgtype.Map.Scan: the column is skipped
	}
	if _, ok := dst.(*pgtype.DriverBytes); ok && src != nil {
		// DriverBytes keeps what it scans: src is pgconn's read buffer,
		// which fn's next statement overwrites (pgx refuses DriverBytes in
		// QueryRow for this reason); give it a copy of its own.
		src = bytes.Clone(src)
	}
	typ := reflect.TypeOf(dst)
	for i := range sp.plans {
		if p := &sp.plans[i]; p.oid == oid && p.format == format && p.typ == typ {
			err := p.plan.Scan(src, dst)
			if errors.Is(err, pgtype.ErrScanTargetTypeChanged) { // as pgx's Rows: plan again
				p.plan = m.PlanScan(oid, format, dst)
				err = p.plan.Scan(src, dst)
			}
			return err
		}
	}
	plan := m.PlanScan(oid, format, dst)
	if len(sp.plans) < maxScanPlans {
		sp.plans = append(sp.plans, scanPlan{oid: oid, format: format, typ: typ, plan: plan})
	}
	return plan.Scan(src, dst)
}

// stmtNames caches statementName: With looks up each of its statements on
// every call. It keeps at most maxStatementNames texts (a Table that puts
// values in its SQL would otherwise grow it forever); others are hashed
// each time.
type stmtNames struct {
	m sync.Map // sql -> name
	n atomic.Int32
}

const maxStatementNames = 64

func (c *stmtNames) get(sql string) string {
	if name, ok := c.m.Load(sql); ok {
		return name.(string)
	}
	name := statementName(sql)
	if c.n.Add(1) <= maxStatementNames {
		c.m.Store(sql, name)
	}
	return name
}

// stalePlan reports whether err is PostgreSQL refusing a prepared statement
// whose result type changed under it (SQLSTATE 0A000, "cached plan must not
// change result type").
func stalePlan(err error) bool {
	if err == nil {
		return false // errors.As would allocate its target all the same
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && txn.StalePlan(pgErr) // SQLSTATE and routine, not the translated message
}

// missingStatement reports whether err is PostgreSQL not knowing a
// prepared statement pgx believes prepared on the connection (SQLSTATE
// 26000): user code ran DEALLOCATE ALL or DISCARD ALL on it.
func missingStatement(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "26000"
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

// b2i is 1 for true, 0 for false.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
