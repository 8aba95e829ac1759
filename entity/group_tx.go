package entity

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// memberTx is the pgx.Tx a member's fn gets: a txn.Managed whose first
// statement first opens the member's savepoint.
//
// Its gate is held for reading for the length of every call that uses the
// connection, and for writing by shut, once fn returned: a goroutine fn
// left behind then gets pgx.ErrTxClosed and never touches the connection
// the group goes on using. Results fn left open (Rows, a Row, a batch)
// are closed by shut, and the member fails with lock.ErrRowsOpen, as a call of
// its own would.
type memberTx[K, V any] struct {
	g     *group[K, V]
	m     *txn.Managed
	name  string
	plain bool // the leader's: no savepoint

	gate     sync.RWMutex
	isShut   bool           // fn returned, or was cut off: see shut
	open     map[any]func() // results fn has not finished reading, and how to close each
	leftOpen bool           // shut closed one of them

	// fn is where the member's fn is (an fnState), changed once: to
	// fnReturned by the member, or to fnCutOff by the leader (see await).
	fn atomic.Int32

	mu     sync.Mutex
	closed bool // fn returned
	used   bool // fn ran a statement through tx
	done   bool
	err    error
	begins int // savepoints fn began directly on tx: subtransactions too
	// lastSQL is when fn last began a statement through tx.
	lastSQL time.Time
	// idleSince is when fn began, or last ended a call through tx.
	idleSince time.Time
	// base is the row as fn's first statement found it, last as fn's last
	// statement left it, nil when that statement went without a read of the
	// row (see Exec); opaque: fn took a way to run statements (Begin, Conn,
	// LargeObjects) whose end the member can't see. Unless last equals base
	// and nothing is opaque, the row is read back after the member.
	base, last *V
	opaque     bool
	// snap: the settings before fn's first statement that may change one
	// (see noteSettings); nil until then.
	snap *settingsSnap
}

// enter reports whether fn may still use t and, if so, holds the gate for
// reading: the caller releases it when its call returns.
func (t *memberTx[K, V]) enter() bool {
	t.gate.RLock()
	if t.isShut {
		t.gate.RUnlock()
		return false
	}
	return true
}

// closedErr is what a call through t returns once fn may not use it.
func (t *memberTx[K, V]) closedErr() error {
	if t.fnState() == fnCutOff {
		return fmt.Errorf("%w: %w", txn.ErrIdleTimeout, pgx.ErrTxClosed)
	}
	return pgx.ErrTxClosed
}

// exit ends a call that entered t.
func (t *memberTx[K, V]) exit() {
	t.mu.Lock()
	t.idleSince = time.Now()
	t.mu.Unlock()
	t.gate.RUnlock()
}

// fnState is where a member's fn is.
type fnState int32

const (
	fnRunning  fnState = iota
	fnReturned         // the member's goroutine goes on with its turn
	fnCutOff           // idle for IdleTimeout: the leader took the turn back
)

func (t *memberTx[K, V]) fnState() fnState { return fnState(t.fn.Load()) }

// leave moves fn from fnRunning to to, unless it has moved already.
func (t *memberTx[K, V]) leave(to fnState) bool {
	return t.fn.CompareAndSwap(int32(fnRunning), int32(to))
}

// returned records that fn returned (or ended its goroutine), unless the
// leader cut it off first: then the member touches nothing of the group.
func (t *memberTx[K, V]) returned() bool { return t.leave(fnReturned) }

// shut closes t to fn for good, once fn returned: it waits for calls in
// progress (from goroutines fn left behind) and closes the results fn left
// open, so that the connection is the group's again. It reports whether
// there were any.
func (t *memberTx[K, V]) shut() (leftOpen bool) {
	t.gate.Lock()
	defer t.gate.Unlock()
	return t.shutLocked()
}

// shutLocked is shut, with the gate held.
func (t *memberTx[K, V]) shutLocked() (leftOpen bool) {
	if !t.isShut {
		t.isShut = true
		for _, close := range t.open {
			close()
			t.leftOpen = true
		}
		t.open = nil
	}
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return t.leftOpen
}

// track records r, a result fn reads after the call that returned it, until
// it is done (untrack).
func (t *memberTx[K, V]) track(r any, close func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = make(map[any]func())
	}
	t.open[r] = close
}

// untrack forgets r.
func (t *memberTx[K, V]) untrack(r any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, r)
}

// rowUnchanged reports whether fn's statements are known to have left the
// row as they found it.
func (t *memberTx[K, V]) rowUnchanged() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.opaque && t.base != nil && t.last != nil && reflect.DeepEqual(t.base, t.last)
}

// follows reports whether a statement of fn's with these args can go in one
// pipeline with what the group sends around it: the savepoint before it, a
// read of the row after it. Not a statement without arguments, which pgx
// runs in the simple protocol, where one string may hold several (COMMIT;
// BEGIN among them); not one with pgx's options as its first argument;
// not under the simple protocol, whose batch is one string. Nor when ctx is
// done: the savepoint is then opened without it, and the statement fails
// alone, as it would without the option. Nor for the leader, which sends
// what a call without the option sends (a lone caller is one): the row is
// read back after it if it ran SQL.
//
// And not a statement that might fail before the pipeline runs, outside the
// savepoint, failing the whole transaction: in the cache modes pgx prepares
// or describes a statement it has not seen in a round trip of its own (a
// statement PostgreSQL refuses to parse aborts the transaction), and an
// argument it can't encode closes the connection. So there a member's
// statement goes in the pipeline only if a member prepared it on the
// connection before (see memberTx.prepare), once its arguments are known to
// encode. In exec mode the
// statement is parsed in the pipeline, after the savepoint, and pgx sends
// nothing when it can't encode an argument (see notSent). In describe_exec
// mode pgx describes every statement first: none goes in the pipeline.
func (t *memberTx[K, V]) follows(ctx context.Context, sql string, args []any) bool {
	switch {
	case ctx.Err() != nil:
		return false
	case t.cached(args):
		sd := preparedOn(t.g.conn).get(sql)
		b := batch{conn: t.g.conn}
		// On its own, a statement whose arguments don't encode fails as it
		// would without the option.
		return sd != nil && b.builder().Build(t.g.conn.TypeMap(), sd, args) == nil
	}
	return !t.plain && plainArgs(args) && t.g.conn.Config().DefaultQueryExecMode == pgx.QueryExecModeExec
}

// cached reports whether a member's statement with these args goes
// through pgx's statement or description cache: what the member prepares
// itself (see follows).
func (t *memberTx[K, V]) cached(args []any) bool {
	if t.plain || !plainArgs(args) {
		return false
	}
	mode := t.g.conn.Config().DefaultQueryExecMode
	return mode == pgx.QueryExecModeCacheStatement || mode == pgx.QueryExecModeCacheDescribe
}

// plainArgs reports whether args are a statement's arguments only: at
// least one, and not led by one of pgx's options (QueryExecMode,
// QueryResultFormats, QueryResultFormatsByOID, a QueryRewriter).
func plainArgs(args []any) bool {
	if len(args) == 0 {
		return false
	}
	switch args[0].(type) {
	case pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID, pgx.QueryRewriter:
		return false
	}
	return true
}

// prepare prepares sql, a member's statement that goes on its own, after
// the savepoint, in the cache modes (inside the savepoint, so that an error
// of PostgreSQL's stays the member's), unless the connection has
// maxPrepared of them: later members' pipelines run it prepared (see
// follows).
func (t *memberTx[K, V]) prepare(ctx context.Context, sql string, args []any) error {
	if !t.cached(args) {
		return nil
	}
	ps := preparedOn(t.g.conn)
	if ps.get(sql) != nil || ps.isNamed(sql) {
		return nil
	}
	// Named by its own text: pgx runs a statement by the name it was
	// prepared under, and looks up the text given as a name first. If pgx
	// forgets it (fn ran pgx's DeallocateAll), a pipeline that sends the
	// text goes through pgx's cache, as the statement would without the
	// option, rather than sending an unknown name as SQL.
	name := sql
	if ps.takeStale(sql) {
		// pgx still holds the statement that failed under this name, and
		// its Prepare would return it as it is (so would its Exec): drop
		// it first, also when no more may be prepared.
		if err := t.g.conn.Deallocate(ctx, name); err != nil {
			return err
		}
	}
	if ps.full() {
		return nil
	}
	sd, err := t.m.Prepare(ctx, name, sql)
	if err != nil {
		return err
	}
	ps.add(sql, sd)
	return nil
}

// pipeline sends fn's statement sql in one round trip with what goes before
// it (the savepoint, on fn's first statement; see prefix) and a read of the
// row after it. It returns the results positioned at fn's statement: the
// caller reads that result, then calls t.after. ok is false when fn
// returned already, or the savepoint failed to open: then the caller runs
// the statement through t.m, which fails as it would anyway.
func (t *memberTx[K, V]) pipeline(ctx context.Context, sql string, args []any) (br pgx.BatchResults, ok bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, false, nil
	}
	t.used = true
	t.lastSQL = time.Now()
	b := &pgx.Batch{}
	n := 0
	if !t.done { // follows: never the leader's
		t.done = true
		n = t.g.prefix(b, t)
	}
	if t.err != nil {
		return nil, false, t.err
	}
	b.Queue(sql, args...) // in the cache modes pgx finds it prepared under its text
	readSQL, readArgs := t.g.read()
	b.Queue(readSQL, readArgs...)
	br = t.m.SendBatch(ctx, b)
	if n > 0 {
		if err := t.g.opened(br, n, t); err != nil {
			br.Close()
			if err == errNotSent {
				// Nothing ran: the statement goes on its own, after the
				// savepoint in a round trip of its own, and fails as it
				// would without the option.
				t.done = false
				return nil, false, errNotSent
			}
			t.err = err
			return nil, false, err
		}
	}
	return br, true, nil
}

// after reads the row after fn's statement and ends the round trip. err is
// what fn's statement returned; after returns it, or the read's error.
func (t *memberTx[K, V]) after(br pgx.BatchResults, err error) error {
	var last *V
	if err == nil {
		var scanErr error
		if last, scanErr = t.g.r.table.Scan(br.QueryRow(), false); scanErr != nil {
			// The row is read back before the next member. Its absence
			// after fn's statement (fn deleted it, perhaps to insert it
			// again) is no error of the statement's.
			last = nil
			if !errors.Is(scanErr, pgx.ErrNoRows) {
				err = fmt.Errorf("entity: with %s: read the row back after fn's statement: %w", t.g.lk, scanErr)
			}
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	t.mu.Lock()
	t.last = last
	t.mu.Unlock()
	return err
}

func (t *memberTx[K, V]) opened() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done && t.err == nil
}

// start opens the savepoint once, in a round trip of its own, unless the
// transaction is closed to fn, for a statement that goes without a read of
// the row after it; opaque: for good, on a way the member can't follow.
func (t *memberTx[K, V]) start(ctx context.Context, opaque bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil // fn returned: the call itself fails with pgx.ErrTxClosed
	}
	t.used = true
	t.lastSQL = time.Now()
	t.last = nil
	t.opaque = t.opaque || opaque
	if t.plain {
		return nil
	}
	if !t.done {
		t.done = true
		t.err = t.g.open(context.WithoutCancel(ctx), t)
	}
	return t.err
}

// Begin opens a savepoint nested in the member's.
func (t *memberTx[K, V]) Begin(ctx context.Context) (pgx.Tx, error) {
	if !t.enter() {
		return nil, t.closedErr()
	}
	defer t.exit()
	if err := t.start(ctx, true); err != nil {
		return nil, err
	}
	return t.begin(ctx, t.m.Begin)
}

// begin begins a savepoint of fn's with begin, counts it (a subtransaction
// too) and returns it as a spTx.
func (t *memberTx[K, V]) begin(ctx context.Context, begin func(context.Context) (pgx.Tx, error)) (pgx.Tx, error) {
	sp, err := begin(ctx)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.begins++
	t.mu.Unlock()
	return &spTx[K, V]{Tx: sp, t: t}, nil
}

// spTx is a savepoint fn began on its member's tx (or in one of those):
// statements that may change a setting are seen (noteSettings) as through
// tx itself, so that the settings are set back once fn returned.
type spTx[K, V any] struct {
	pgx.Tx
	t *memberTx[K, V]
}

// Begin opens a savepoint nested in s.
func (s *spTx[K, V]) Begin(ctx context.Context) (pgx.Tx, error) {
	return s.t.begin(ctx, s.Tx.Begin)
}

// note reads the settings before the statements sqls, if they may change
// one (see noteSettings).
func (s *spTx[K, V]) note(ctx context.Context, sqls []string, args []any) error {
	if !s.t.enter() {
		return nil // the call itself fails with pgx.ErrTxClosed
	}
	defer s.t.exit()
	return s.t.noteSettings(ctx, sqls, args)
}

func (s *spTx[K, V]) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := s.note(ctx, []string{sql}, args); err != nil {
		return pgconn.CommandTag{}, err
	}
	return s.Tx.Exec(ctx, sql, args...)
}

func (s *spTx[K, V]) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := s.note(ctx, []string{sql}, args); err != nil {
		return nil, err
	}
	return s.Tx.Query(ctx, sql, args...)
}

func (s *spTx[K, V]) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := s.note(ctx, []string{sql}, args); err != nil {
		return errRow{err}
	}
	return s.Tx.QueryRow(ctx, sql, args...)
}

func (s *spTx[K, V]) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	sqls := make([]string, len(b.QueuedQueries))
	var args []any
	for i, q := range b.QueuedQueries {
		sqls[i] = q.SQL
		args = append(args, q.Arguments...)
	}
	if err := s.note(ctx, sqls, args); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return s.Tx.SendBatch(ctx, b)
}

// Commit refuses: the group's leader ends the transaction.
func (t *memberTx[K, V]) Commit(context.Context) error { return lock.ErrManaged }

// Rollback refuses: the group's leader ends the transaction.
func (t *memberTx[K, V]) Rollback(context.Context) error { return lock.ErrManaged }

// CopyFrom runs COPY FROM in the member's savepoint.
func (t *memberTx[K, V]) CopyFrom(ctx context.Context, tn pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if !t.enter() {
		return 0, t.closedErr()
	}
	defer t.exit()
	if err := t.start(ctx, false); err != nil {
		return 0, err
	}
	return t.m.CopyFrom(ctx, tn, cols, src)
}

// SendBatch sends a batch in the member's savepoint.
func (t *memberTx[K, V]) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if !t.enter() {
		return pgx.FailedBatchResults(b, t.closedErr())
	}
	defer t.exit()
	sqls := make([]string, len(b.QueuedQueries))
	var args []any
	for i, q := range b.QueuedQueries {
		sqls[i] = q.SQL
		args = append(args, q.Arguments...)
	}
	if err := t.noteSettings(ctx, sqls, args); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	if err := t.start(ctx, false); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	br := &memberBatch[K, V]{t: t, br: t.m.SendBatch(ctx, b)}
	t.track(br, func() { br.br.Close() })
	return br
}

// LargeObjects returns the large object API, in the member's savepoint.
func (t *memberTx[K, V]) LargeObjects() pgx.LargeObjects {
	if !t.enter() {
		return pgx.LargeObjects{}
	}
	defer t.exit()
	if err := t.start(context.Background(), true); err != nil {
		return pgx.LargeObjects{}
	}
	return t.m.LargeObjects()
}

// Prepare prepares a statement on the connection.
func (t *memberTx[K, V]) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if !t.enter() {
		return nil, t.closedErr()
	}
	defer t.exit()
	// Inside the member's savepoint: a statement PostgreSQL refuses to
	// parse fails this member alone.
	if err := t.start(ctx, false); err != nil {
		return nil, err
	}
	sd, err := t.m.Prepare(ctx, name, sql)
	if err == nil && name != sql {
		// fn runs it by name: never prepare that name as SQL (see prepare).
		preparedOn(t.g.conn).named(name)
	}
	return sd, err
}

// Exec runs a statement in the member's savepoint, in one round trip with
// the savepoint and a read of the row after it, when it can (see follows).
func (t *memberTx[K, V]) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if !t.enter() {
		return pgconn.CommandTag{}, t.closedErr()
	}
	defer t.exit()
	if err := t.noteSettings(ctx, []string{sql}, args); err != nil {
		return pgconn.CommandTag{}, err
	}
	if t.follows(ctx, sql, args) {
		br, ok, err := t.pipeline(ctx, sql, args)
		switch {
		case err == errNotSent:
		case err != nil:
			return pgconn.CommandTag{}, err
		case ok:
			tag, err := br.Exec()
			preparedOn(t.g.conn).forget(sql, err)
			return tag, t.after(br, err)
		default:
			return t.m.Exec(ctx, sql, args...) // fn returned: pgx.ErrTxClosed
		}
	}
	if err := t.start(ctx, false); err != nil {
		return pgconn.CommandTag{}, err
	}
	if err := t.prepare(ctx, sql, args); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.m.Exec(ctx, sql, args...)
}

// Query runs a query in the member's savepoint.
func (t *memberTx[K, V]) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !t.enter() {
		return nil, t.closedErr()
	}
	defer t.exit()
	if err := t.noteSettings(ctx, []string{sql}, args); err != nil {
		return nil, err
	}
	if err := t.start(ctx, false); err != nil {
		return nil, err
	}
	rows, err := t.m.Query(ctx, sql, args...)
	if err != nil {
		return rows, err
	}
	r := &memberRows[K, V]{t: t, rows: rows}
	t.track(r, rows.Close)
	return r, nil
}

// QueryRow runs a query in the member's savepoint, in one round trip with
// the savepoint and a read of the row after it, when it can (see follows).
// The round trip ends when the Row is scanned.
func (t *memberTx[K, V]) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !t.enter() {
		return errRow{t.closedErr()}
	}
	defer t.exit()
	if err := t.noteSettings(ctx, []string{sql}, args); err != nil {
		return errRow{err}
	}
	if t.follows(ctx, sql, args) {
		br, ok, err := t.pipeline(ctx, sql, args)
		switch {
		case err == errNotSent:
		case err != nil:
			return errRow{err}
		case ok:
			r := &pipelinedRow[K, V]{t: t, br: br, sql: sql}
			t.track(r, func() { br.Close() })
			return r
		default:
			return t.m.QueryRow(ctx, sql, args...) // fn returned: pgx.ErrTxClosed
		}
	}
	if err := t.start(ctx, false); err != nil {
		return errRow{err}
	}
	if err := t.prepare(ctx, sql, args); err != nil {
		return errRow{err}
	}
	// Query, not QueryRow, so that the result is one shut can close.
	rows, err := t.m.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	r := &memberRow[K, V]{t: t, rows: rows}
	t.track(r, rows.Close)
	return r
}

// Conn returns the connection, with the member's savepoint open, so that
// statements run on it directly are the member's too.
func (t *memberTx[K, V]) Conn() *pgx.Conn {
	if !t.enter() {
		return nil
	}
	defer t.exit()
	if err := t.start(context.Background(), true); err != nil {
		return nil
	}
	return t.m.Conn()
}
