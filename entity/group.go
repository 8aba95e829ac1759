package entity

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// Group commit: the callers of one key that wait behind the transaction in
// progress run in the next one, one after another, each fn on its caller's
// goroutine, and commit together. See WithGroupCommit.

// MaxGroupSQL is the most callers whose fn ran SQL (each in its own
// savepoint, a subtransaction; the savepoints fn begins on tx count too)
// that one group transaction takes: PostgreSQL
// keeps the ids of 64 subtransactions per backend in shared memory
// (PGPROC_MAX_CACHED_SUBXIDS); beyond that every snapshot taken anywhere in
// the cluster has to look further.
const MaxGroupSQL = 64

// ErrGroupRolledBack: fn returned nil, but another caller run in the same
// group transaction (see [WithGroupCommit]) broke that transaction, so it was
// rolled back before COMMIT: nothing of this call was committed, and
// lock.Retry may run it again. The error also says why.
var ErrGroupRolledBack = errors.New("entity: another call in the same group transaction broke it, so it was rolled back and nothing of this call was committed")

// Cloner is implemented by a Table whose rows [WithGroupCommit] may hand from
// one caller to the next within one transaction.
type Cloner[V any] interface {
	// Clone returns a deep copy of v, sharing nothing fn could change in
	// place (slices, maps, pointers) with it, as Scan would have returned it
	// with the given created.
	Clone(v *V, created bool) *V
}

// WithGroupCommit turns group commit on, with at most max callers per
// transaction: callers of one key in one Repository that wait behind the
// key's transaction in progress run in the next transaction together, in
// arrival order, and commit once. Each fn runs on its caller's goroutine with
// its caller's ctx and gets the row as the previous caller in the group left
// it; its statements run in a savepoint opened at its first statement, so
// that an error or a panic of fn's undoes only its own changes. A caller
// learns of success only once the shared COMMIT succeeded. A lone caller runs
// exactly as without the option. See docs/DESIGN.md for the contract and for
// when not to use it (fn doing slow I/O holds up every caller behind it).
//
// What changes for a caller: a caller whose ctx ends while it waits is
// dropped with ctx.Err(), but once its fn has returned its ctx can't undo
// its part, and it gets the group's outcome. If the write of the row or
// COMMIT fails, every member whose fn succeeded gets that error, matching the
// same sentinels as a call of its own; if another member broke the
// transaction, [ErrGroupRolledBack]. At most [MaxGroupSQL] members with SQL
// share a transaction, and a leader stops taking callers once it has held
// the key about max times as long as a single call would, or once one fn has
// run for IdleTimeout (the server has ended the transaction by then). A With
// for the same key from inside fn given another ctx than fn's waits in the
// queue behind its own group: until LockTimeout, if set, or until fn has run
// for IdleTimeout, when it runs as without the option. Pass fn's ctx on,
// and get [lock.ErrReentrant].
//
// A member's first statement through tx goes in one round trip with its
// savepoint and the write of the row as the members before it left it, and
// each statement with a read of the row after it. If fn's statements
// changed the row itself (an UPDATE of it, or a trigger), or the write
// before them did more than Save asked (a trigger), the row is written as
// fn left p and read back in one more round trip before the next member,
// so the change reaches it as it would reach the next call without the
// option. Columns that Save does not write from p (an updated_at the
// server sets) may lag in p within a group. A member's ctx covers its whole
// round trip: if it ends meanwhile, pgx closes the connection, and the
// others get [ErrGroupRolledBack].
//
// It needs a Table that implements [Cloner]; with any other Table, and with
// max below 2, it changes nothing.
func WithGroupCommit(max int) Option { return option(func(c *config) { c.group = max }) }

// groups is a Repository's group commit state: for each key, whether a
// leader is gathering callers for its transaction, and the callers queued.
type groups[K, V any] struct {
	max  int
	mu   sync.Mutex
	keys map[int64]*groupKey[K, V]
}

type groupKey[K, V any] struct {
	// leading: a caller leads the key's next transaction, which has not
	// stopped taking callers; later callers queue.
	leading bool
	queue   []*member[K, V]
}

// member is one caller in a group.
type member[K, V any] struct {
	ctx  context.Context // the caller's, as the hooks' Start returned it
	fn   func(ctx context.Context, tx pgx.Tx, v *V) error
	ev   *Event
	turn chan *group[K, V] // nil: lead; else run in that group
	done chan error        // the group's outcome, for a member whose fn succeeded
}

// arrive enqueues m for key, or makes it the leader when no leader is
// gathering and nobody waits: a lone caller leads at once.
func (gs *groups[K, V]) arrive(key int64, m *member[K, V]) (lead bool) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil {
		gk = &groupKey[K, V]{}
		gs.keys[key] = gk
	}
	if !gk.leading && len(gk.queue) == 0 {
		gk.leading = true
		return true
	}
	m.turn, m.done = make(chan *group[K, V], 1), make(chan error, 1) // a lone caller needs neither
	gk.queue = append(gk.queue, m)
	return false
}

// leave takes m out of key's queue if it is still there (reporting whether it
// was); otherwise a leader took it, and its turn is in m.turn.
func (gs *groups[K, V]) leave(key int64, m *member[K, V]) bool {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil {
		return false
	}
	for i, q := range gk.queue {
		if q == m {
			gk.queue = append(gk.queue[:i], gk.queue[i+1:]...)
			gs.forget(key, gk)
			return true
		}
	}
	return false
}

// pop takes the first queued caller of key, nil if none.
func (gs *groups[K, V]) pop(key int64) *member[K, V] {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil || len(gk.queue) == 0 {
		return nil
	}
	m := gk.queue[0]
	gk.queue[0] = nil
	gk.queue = gk.queue[1:]
	return m
}

// stopLeading ends the current leader's gathering: the first queued caller,
// if any, becomes the leader of the next transaction and goes to wait for the
// lock at PostgreSQL while this one commits (two connections per key, as
// with the key queue).
func (gs *groups[K, V]) stopLeading(key int64) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if len(gk.queue) == 0 {
		gk.leading = false
		gs.forget(key, gk)
		return
	}
	m := gk.queue[0]
	gk.queue[0] = nil
	gk.queue = gk.queue[1:]
	m.turn <- nil // buffered: never blocks
}

func (gs *groups[K, V]) forget(key int64, gk *groupKey[K, V]) {
	if !gk.leading && len(gk.queue) == 0 {
		delete(gs.keys, key)
	}
}

// group is one transaction shared by callers of one key. Its fields are used
// by one goroutine at a time: the leader's, then each member's in turn, which
// hand it over through member.turn and group.stepped.
type group[K, V any] struct {
	k       K
	r       *Repository[K, V]
	cloner  Cloner[V]
	lk      lock.Key
	conn    *pgx.Conn
	created bool
	before  *V // the row as read
	first   *V // the leader's copy
	cur     *V // the row as the last successful member left it
	written *V // the row as the transaction holds it
	n       int
	withSQL int
	ok      []*member[K, V] // members whose fn succeeded, in order
	broken  error           // why the transaction can't commit
	ended   bool            // a member's fn ended the transaction itself, or may have
	openSP  string          // the savepoint of the last member with SQL, not yet released
	stale   bool            // the last member ran SQL: reload before the next one
	txs     []*txn.Managed  // each member's tx, ended once the transaction is
	size    int             // callers whose fn ran, set before the outcome is sent
	stepped chan struct{}
	txs0    [1]*txn.Managed // txs and ok of a lone caller, without allocations
	ok0     [1]*member[K, V]
}

// withGroup is one attempt of With under group commit.
func (r *Repository[K, V]) withGroup(ctx context.Context, k K, fn func(ctx context.Context, tx pgx.Tx, v *V) error) (err error) {
	lk, err := r.lockKey(ctx, k, fn)
	if err != nil {
		return err
	}
	ev := &Event{Namespace: lk.Namespace(), Key: lk, Strategy: r.strategy, Start: time.Now()}
	var panicked any
	if !r.hooks.none() {
		if r.hooks.Start != nil {
			ctx = r.hooks.Start(ctx, lk.Namespace(), lk)
		}
		defer func() {
			p := panicked
			if p == nil {
				p = recover()
			}
			r.hooks.finish(ctx, ev, err, p)
			if p != nil {
				panic(p)
			}
		}()
	}
	m := &member[K, V]{ctx: ctx, fn: fn, ev: ev}
	gs := r.groups
	if !gs.arrive(lk.ID(), m) {
		g, err := r.waitTurn(ctx, lk, m)
		if err != nil {
			return fmt.Errorf("entity: with %s: wait in queue: %w", lk, txn.Classify(ctx, err))
		}
		if g != nil {
			var ok bool
			ok, panicked, err = g.step(m, false)
			if panicked != nil {
				if r.hooks.none() {
					panic(panicked)
				}
				return nil // the deferred hook re-raises it
			}
			if !ok {
				return err
			}
			return <-m.done
		}
	}
	err, panicked = r.lead(ctx, k, lk, m)
	if panicked != nil && r.hooks.none() {
		panic(panicked)
	}
	return err
}

// waitTurn waits until a leader takes m into its group (returned) or makes
// it the leader (nil), for at most LockTimeout when that is set. If ctx ends
// first, m leaves the queue.
func (r *Repository[K, V]) waitTurn(ctx context.Context, lk lock.Key, m *member[K, V]) (*group[K, V], error) {
	qctx := ctx
	if r.settings.LockTimeout > 0 {
		var cancel context.CancelFunc
		qctx, cancel = context.WithTimeoutCause(ctx, r.settings.LockTimeout, txn.ErrLockTimeout)
		defer cancel()
	}
	select {
	case g := <-m.turn:
		return g, nil
	case <-qctx.Done():
	}
	if !r.groups.leave(lk.ID(), m) {
		return <-m.turn, nil // taken meanwhile: its turn has come
	}
	if ctx.Err() == nil && errors.Is(context.Cause(qctx), txn.ErrLockTimeout) {
		return nil, fmt.Errorf("%w (%s in the in-process queue)", txn.ErrLockTimeout, r.settings.LockTimeout)
	}
	return nil, ctx.Err()
}

// lead runs the transaction m leads: the lock and the row, m's fn, then the
// fns of the callers queued behind it, then one write and one COMMIT.
//
//lint:ignore ST1008 the second result carries a panic of fn, raised again on its caller's goroutine; it is not a result in the usual sense
func (r *Repository[K, V]) lead(ctx context.Context, k K, lk lock.Key, m *member[K, V]) (err error, panicked any) {
	gs := r.groups
	var leading atomic.Bool
	leading.Store(true)
	stop := func() {
		if leading.Swap(false) {
			gs.stopLeading(lk.ID())
		}
	}
	defer stop()
	// watch stops the gathering if an fn runs for IdleTimeout: by then the
	// server has ended the transaction, idle that long, and the next caller,
	// which may be a With for this key from inside that fn given another
	// ctx, takes the lock as it would without group commit, rather than
	// wait in the queue behind its own caller for good.
	watch := func() (unwatch func() bool) {
		if idle := r.settings.IdleTimeout; idle > 0 {
			return time.AfterFunc(idle, stop).Stop
		}
		return func() bool { return false }
	}
	ev := m.ev
	// Leaders take a place in the key queue, as callers without the option
	// do, and give it back after their connection: the leader that
	// committed may not have released its connection yet when the next
	// one's successor wants one, and a key holds at most ConnsPerKey.
	release, alone, err := r.waitInQueue(ctx, lk.ID())
	if err != nil {
		return fmt.Errorf("entity: with %s: wait in queue: %w", lk, txn.Classify(ctx, err)), nil
	}
	defer release()
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return txn.BeginFailed(fmt.Errorf("entity: with %s: acquire connection: %w", lk, txn.Classify(ctx, err))), nil
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	defer func() {
		switch {
		case stalePlan(err) || missingStatement(err): // as in with
			pc.Close(context.WithoutCancel(ctx))
		case pc.TxStatus() != 'I':
			txn.Rollback(ctx, pc, nil)
		}
	}()
	before, v, prepared, err := r.lockAndLoad(ctx, conn.Conn(), k, lk, ev, alone)
	if err != nil {
		if missingStatement(err) {
			// Gone from the server (user code ran DEALLOCATE ALL or DISCARD
			// ALL on this connection): drop the connection now, so that the
			// error, before fn ran, with nothing committed, is one Retry
			// retries.
			pc.Close(context.WithoutCancel(ctx))
		}
		return txn.BeforeCommit(r.classify(fmt.Errorf("entity: with %s: %w", lk, err)), pc.IsClosed()), nil
	}
	g := &group[K, V]{
		k: k, r: r, cloner: r.table.(Cloner[V]), lk: lk, conn: conn.Conn(), created: ev.Created,
		before: before, first: v, cur: before, written: before,
	}
	g.txs, g.ok = g.txs0[:0], g.ok0[:0]
	// The leader's fn runs as in a call of its own, without a savepoint: if
	// it fails, the transaction rolls back and nobody else has joined it; the
	// first queued caller then leads the next one.
	unwatch := watch()
	ok, panicked, ownErr := g.step(m, true)
	unwatch()
	if !ok {
		g.broke(errors.New("the leader's fn failed"), false) // ownErr is nil after a panic
	}
	// The budget: about what the callers would hold the key for one by one,
	// judged by the leader's round trip and fn.
	budget := time.Duration(gs.max) * (time.Since(ev.Granted) + ev.RoundTrip - ev.Wait)
	for g.broken == nil && leading.Load() && g.n < gs.max && g.withSQL < MaxGroupSQL && time.Since(ev.Granted) < budget {
		next := gs.pop(lk.ID())
		if next == nil {
			break
		}
		if g.stale {
			g.stale = false
			if err := g.reload(context.WithoutCancel(ctx)); err != nil {
				g.broke(fmt.Errorf("read the row back after a call's statements: %w", err), false)
			}
		}
		if g.stepped == nil {
			g.stepped = make(chan struct{}, 1) // a lone caller needs none
		}
		next.turn <- g
		unwatch := watch()
		<-g.stepped
		unwatch()
	}
	stop()
	g.size = g.n
	var commitPanic any
	outcome := func() (err error) {
		defer func() {
			if commitPanic = recover(); commitPanic != nil {
				// Table.Save panicked, or an ErrorClassifier: the members
				// still get an outcome, the leader the panic.
				if pc.IsClosed() || pc.TxStatus() == 'I' {
					err = fmt.Errorf("entity: with %s: %w: the group's final write panicked: %v", lk, txn.ErrCommitUnknown, commitPanic)
				} else {
					err = fmt.Errorf("entity: with %s: %w (the group's final write panicked: %v)", lk, ErrGroupRolledBack, commitPanic)
				}
			}
		}()
		return g.commit(ctx, prepared)
	}()
	for _, m := range g.txs {
		// Only now: ending a tx whose fn used LargeObjects rolls back the
		// transaction unless it is over.
		m.End(ctx)
	}
	for _, o := range g.ok {
		if o != m {
			o.done <- outcome
		}
	}
	if !ok || panicked != nil {
		return ownErr, panicked
	}
	if commitPanic != nil {
		return nil, commitPanic
	}
	return outcome, nil
}

// commit writes the row and commits, unless no member succeeded or the
// transaction broke; it returns what every member whose fn succeeded gets.
func (g *group[K, V]) commit(ctx context.Context, prepared []string) error {
	lk, pc := g.lk, g.conn.PgConn()
	if len(g.ok) == 0 {
		return nil
	}
	if g.broken != nil {
		if g.ended {
			return fmt.Errorf("entity: with %s: %w: another call in the same group transaction ended it with SQL (or may have), committing what ran before it: %w",
				lk, txn.ErrCommitUnknown, g.broken)
		}
		return txn.BeforeCommit(fmt.Errorf("entity: with %s: %w (%v)", lk, ErrGroupRolledBack, g.broken), true)
	}
	if g.size > 1 {
		// Once a member's fn returned, its ctx can't undo its part; the
		// leader's alone, as in a call of its own, still can. But when every
		// member has a deadline, the wait for COMMIT's answer ends at the
		// last one (a stalled network: ErrCommitUnknown), rather than never.
		ctx = context.WithoutCancel(ctx)
		if last, ok := g.lastDeadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, last)
			defer cancel()
		}
	}
	if pc.TxStatus() != 'T' {
		return txn.BeforeCommit(fmt.Errorf("entity: with %s: %w", lk, ErrTxAborted), pc.IsClosed())
	}
	sql, args, err := g.r.table.Save(g.written, g.cur)
	if err != nil {
		return err
	}
	if err := txn.ReadyToCommit(ctx, pc.IsClosed()); err != nil {
		return fmt.Errorf("entity: with %s: %w", lk, err)
	}
	var release string
	if g.openSP != "" {
		// Fails if the last member with SQL rolled back past its savepoint
		// (to one an earlier member's fn left open), undoing what those
		// before it did: then nothing commits.
		release = "RELEASE SAVEPOINT " + g.openSP
	}
	if err := g.r.save(ctx, g.conn, release, sql, args, prepared); err != nil {
		if savepointGone(err) {
			return txn.BeforeCommit(fmt.Errorf("entity: with %s: %w (a call's fn rolled back past its savepoint: %w)", lk, ErrGroupRolledBack, err), true)
		}
		if errors.Is(err, ErrTxEnded) && g.size > 1 {
			// A member's fn ended the transaction and began another: what
			// ran before it is committed, what ran after it is not.
			return fmt.Errorf("entity: with %s: %w: a call in the same group transaction ended it with SQL, committing what ran before it: %w",
				lk, txn.ErrCommitUnknown, err)
		}
		return g.r.classify(fmt.Errorf("entity: with %s: %w", lk, err))
	}
	for _, o := range g.ok {
		o.ev.stage = stageDone
		o.ev.GroupSize = g.size
	}
	return nil
}

// lastDeadline returns the latest deadline of the ctxs of the members whose
// fn succeeded, if each has one.
func (g *group[K, V]) lastDeadline() (last time.Time, ok bool) {
	for _, o := range g.ok {
		d, ok := o.ctx.Deadline()
		if !ok {
			return time.Time{}, false
		}
		if d.After(last) {
			last = d
		}
	}
	return last, true
}

// step runs m's fn in g, on m's goroutine, and then hands g back to the
// leader (unless m is the leader). ok reports whether fn succeeded and its
// part stays in the transaction; otherwise err or panicked is what m's call
// ends with.
func (g *group[K, V]) step(m *member[K, V], leader bool) (ok bool, panicked any, err error) {
	if !leader {
		defer func() { g.stepped <- struct{}{} }()
		if err := m.ctx.Err(); err != nil {
			return false, nil, fmt.Errorf("entity: with %s: wait in queue: %w", g.lk, err) // dropped, fn not run
		}
		if g.broken != nil { // the reload before this turn failed: fn not run
			return false, nil, txn.BeforeCommit(fmt.Errorf("entity: with %s: %w (%v)", g.lk, ErrGroupRolledBack, g.broken), true)
		}
		m.ev.Granted, m.ev.Wait = time.Now(), time.Since(m.ev.Start)
	}
	g.n++
	m.ev.GroupSize = g.n
	var v *V
	switch {
	case leader:
		v = g.first
	case g.cur == g.before:
		v = g.cloner.Clone(g.before, g.created)
	default:
		v = g.cloner.Clone(g.cur, false)
	}
	tx := &memberTx[K, V]{g: g, m: txn.NewManaged(g.conn, nil), plain: leader}
	if !leader {
		tx.name = "paylock_group_" + strconv.Itoa(g.n)
	}
	g.txs = append(g.txs, tx.m) // the leader ends it once the transaction is
	defer tx.m.Close()
	m.ev.stage = stageFn
	fnErr := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				panicked = p
			}
		}()
		return m.fn(txn.WithHeld(m.ctx, g.lk.ID()), tx, v)
	}()
	tx.mu.Lock()
	tx.closed = true // no savepoint, no write of the row, from now on
	g.withSQL += tx.begins
	tx.mu.Unlock()
	pc := g.conn.PgConn()
	if panicked != nil || fnErr != nil {
		if panicked != nil {
			fnErr = fmt.Errorf("fn panicked: %v", panicked)
		}
		fnErr = tx.m.FnError(fnErr)
		if errors.Is(fnErr, ErrTxEnded) {
			g.broke(fnErr, true)
		} else {
			g.undo(m.ctx, tx, fnErr)
		}
		if panicked != nil {
			return false, panicked, nil
		}
		return false, nil, txn.BeforeCommit(fnErr, pc.IsClosed())
	}
	m.ev.stage = stageCommit
	if err := tx.m.Finish(); err != nil {
		err = fmt.Errorf("entity: with %s: %w", g.lk, err)
		g.broke(err, errors.Is(err, ErrTxEnded))
		return false, nil, err
	}
	if pc.TxStatus() == 'E' && tx.opened() {
		err := fmt.Errorf("entity: with %s: %w", g.lk, ErrTxAborted)
		g.undo(m.ctx, tx, err)
		return false, nil, err
	}
	if pc.TxStatus() != 'T' {
		err := txn.BeforeCommit(fmt.Errorf("entity: with %s: %w", g.lk, ErrTxAborted), pc.IsClosed())
		g.broke(err, false)
		return false, nil, err
	}
	var saveErr error
	func() {
		defer func() { panicked = recover() }()
		_, _, saveErr = g.r.table.Save(g.cur, v)
	}()
	if panicked != nil || saveErr != nil {
		cause := saveErr
		if panicked != nil {
			cause = fmt.Errorf("entity: Table.Save panicked: %v", panicked)
		}
		g.undo(m.ctx, tx, cause)
		return false, panicked, saveErr
	}
	tx.mu.Lock()
	used := tx.used
	tx.mu.Unlock()
	g.cur = v
	// fn's SQL may have changed the row itself (an UPDATE, a trigger): a
	// next member first gets the row written as fn left p and read back
	// (reload), as a call of its own would, unless the read sent with fn's
	// last statement found the row as its first found it; the final write
	// alone needs no read, so a lone caller sends what it sends without the
	// option.
	g.stale = used && !tx.rowUnchanged()
	g.ok = append(g.ok, m)
	return true, nil, nil
}

// reload writes what the last member's fn changed in p (g.cur, as Save
// sees it against the row as the transaction holds it) and reads the row
// back with Find, in one round trip, inside that member's savepoint. The
// result is both the row the transaction holds and the one the next member
// starts from. Find, not Read: fn may have deleted the row, and the key's
// row may now be another one (a duplicate on a table not yet deduplicated)
// that the transaction has not locked; Find locks it, as a call of its own
// would, before the group writes it.
func (g *group[K, V]) reload(ctx context.Context) error {
	b := &pgx.Batch{}
	sql, args, err := g.r.table.Save(g.written, g.cur)
	if err != nil {
		return err
	}
	if sql != "" {
		b.Queue(sql, args...)
	}
	findSQL, findArgs := g.r.table.Find(g.k)
	b.Queue(findSQL, findArgs...)
	br := g.conn.SendBatch(ctx, b)
	if sql != "" {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
	}
	fresh, err := g.r.table.Scan(br.QueryRow(), false)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	g.written, g.cur = fresh, fresh
	return nil
}

// undo rolls back to m's savepoint, if it opened one; if that fails, or the
// transaction failed outside any savepoint, g is broken.
func (g *group[K, V]) undo(ctx context.Context, tx *memberTx[K, V], cause error) {
	pc := g.conn.PgConn()
	if !tx.opened() {
		if pc.TxStatus() != 'T' {
			g.broke(cause, false)
		}
		return
	}
	ctx, cancel := txn.CleanupContext(ctx)
	defer cancel()
	sql := "ROLLBACK TO SAVEPOINT " + tx.name
	checked := pc.TxStatus() == 'T'
	if checked {
		// First make sure this is still the group's transaction: fn may
		// have ended it and begun another ("COMMIT; BEGIN").
		sql = txn.CheckSQL + "; " + sql
	}
	if _, err := pc.Exec(ctx, sql).ReadAll(); err != nil {
		// On a live connection the savepoint is gone: fn released it or
		// rolled back past it (nothing will commit), or ended the
		// transaction, committing what the members before it did.
		var pgErr *pgconn.PgError
		ended := txn.EndedByFn(err) || (!checked && errors.As(err, &pgErr) && !pc.IsClosed())
		g.broke(fmt.Errorf("roll back to savepoint: %w", err), ended)
	}
}

func (g *group[K, V]) broke(err error, ended bool) {
	if g.broken == nil {
		g.broken, g.ended = err, ended
	}
}

// open runs before the first statement of a member's fn, in a round trip of
// its own: see prefix.
func (g *group[K, V]) open(ctx context.Context, tx *memberTx[K, V]) error {
	b := &pgx.Batch{}
	n, err := g.prefix(b, tx)
	if err != nil {
		return err
	}
	br := tx.m.SendBatch(ctx, b)
	err = g.opened(br, n, tx)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = g.openFailed(cerr)
	}
	return err
}

// prefix queues on b what goes before the first statement of a member's fn:
// a check that this is still the transaction that holds the lock, the
// release of the previous member's savepoint, the write of the row as the
// previous members left it, if that changed, the member's savepoint and a
// read of the row as it then is. It returns how many statements it queued:
// the first n results of b are opened's to read.
func (g *group[K, V]) prefix(b *pgx.Batch, tx *memberTx[K, V]) (n int, err error) {
	// The check fails unless this is still the transaction that holds the
	// lock: a member before may have ended it and begun another ("COMMIT;
	// BEGIN"), committing what the members before it did.
	b.Queue(txn.CheckSQL)
	if g.openSP != "" {
		// The previous member with SQL is done: release its savepoint, so
		// that no later fn can roll back into what it did. That fails if it
		// rolled back past its savepoint itself, to one an earlier member's
		// fn left open, undoing what the members before it did.
		b.Queue("RELEASE SAVEPOINT " + g.openSP)
	}
	tx.wrote = nil
	if g.cur != g.written {
		sql, args, err := g.r.table.Save(g.written, g.cur)
		if err != nil {
			return 0, err
		}
		if sql != "" {
			b.Queue(sql, args...)
			tx.wrote = g.cur
		}
	}
	b.Queue("SAVEPOINT " + tx.name)
	readSQL, readArgs := g.read()
	b.Queue(readSQL, readArgs...) // the row fn starts from, as the transaction holds it
	return len(b.QueuedQueries), nil
}

// opened reads the n results prefix queued and records the member's
// savepoint as open.
func (g *group[K, V]) opened(br pgx.BatchResults, n int, tx *memberTx[K, V]) error {
	for i := range n - 1 {
		if _, err := br.Exec(); err != nil {
			if i == 0 && g.notSent(err) {
				return errNotSent
			}
			return g.openFailed(err)
		}
	}
	base, err := g.r.table.Scan(br.QueryRow(), false)
	if err != nil {
		return g.openFailed(err)
	}
	g.written = g.cur
	g.openSP = tx.name
	g.withSQL++
	tx.base = base
	if tx.wrote != nil {
		// The write may have done more than Save asked (a trigger): then
		// the row the member's p came from is not the row the transaction
		// holds, and the next member gets the row read back.
		if sql, _, err := g.r.table.Save(tx.wrote, base); err != nil || sql != "" {
			tx.dirty = true
		}
	}
	return nil
}

// read returns the statement that reads the row with a member's
// statements: the Table's Read if it has one (see Reader), else Find. What
// it finds only tells whether the row is still the one the transaction
// holds (locked) as the group left it; if not, reload reads it with Find.
func (g *group[K, V]) read() (string, []any) {
	if rd, ok := g.r.table.(Reader[K]); ok {
		return rd.Read(g.k)
	}
	return g.r.table.Find(g.k)
}

// errNotSent: pgx sent none of a pipeline (it failed to encode an argument).
var errNotSent = errors.New("entity: the pipeline was not sent")

// notSent reports whether err, the first result of a pipeline whose first
// statement takes no arguments and can't fail on the client, means that
// pgx sent none of it: no error of the server's, on a connection still
// open, idle and in the transaction.
func (g *group[K, V]) notSent(err error) bool {
	var pgErr *pgconn.PgError
	pc := g.conn.PgConn()
	return !errors.As(err, &pgErr) && !pc.IsClosed() && !pc.IsBusy() && pc.TxStatus() == 'T'
}

// openFailed breaks g with err, an error of the statements prefix queued.
func (g *group[K, V]) openFailed(err error) error {
	ended := txn.EndedByFn(err)
	err = fmt.Errorf("entity: with %s: write the row and open a savepoint for the next call in the group: %w", g.lk, err)
	if ended {
		err = fmt.Errorf("%w: %w", ErrTxEnded, err)
	}
	g.broke(err, ended)
	return err
}

// savepointGone reports whether err is PostgreSQL's answer to RELEASE or
// ROLLBACK TO a savepoint that does not exist (SQLSTATE 3B001).
func savepointGone(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "3B001"
}

// memberTx is the pgx.Tx a member's fn gets: a txn.Managed whose first
// statement first opens the member's savepoint.
type memberTx[K, V any] struct {
	g     *group[K, V]
	m     *txn.Managed
	name  string
	plain bool // the leader's: no savepoint

	mu     sync.Mutex
	closed bool // fn returned
	used   bool // fn ran a statement through tx
	done   bool
	err    error
	begins int // savepoints fn began directly on tx: subtransactions too
	// base is the row as fn's first statement found it, last as fn's last
	// statement left it, nil when that statement went without a read of the
	// row (see Exec); opaque: fn took a way to run statements (Begin, Conn,
	// LargeObjects) whose end the member can't see. Unless last equals base
	// and nothing is opaque, the row is read back before the next member.
	base, last *V
	opaque     bool
	// wrote is the row the member's savepoint was opened with a write of
	// (the previous members' p); dirty: the row read after that write
	// differs from it, as far as the Table's Save can tell.
	wrote *V
	dirty bool
}

// rowUnchanged reports whether fn's statements are known to have left the
// row as they found it.
func (t *memberTx[K, V]) rowUnchanged() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.opaque && !t.dirty && t.base != nil && t.last != nil && reflect.DeepEqual(t.base, t.last)
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
	if ps.get(sql) != nil {
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

// preparedSQL is the set of statements group members prepared on a
// connection, by their SQL, kept in its pgconn.PgConn.CustomData: at most
// maxPrepared.
type preparedSQL struct {
	mu sync.Mutex
	// sds: nil for a statement forgotten (see forget), to deallocate
	// before it is prepared again.
	sds map[string]*pgconn.StatementDescription
}

const (
	maxPrepared = 256
	preparedKey = "paylock.group.prepared"
)

func preparedOn(conn *pgx.Conn) *preparedSQL {
	data := conn.PgConn().CustomData()
	p, _ := data[preparedKey].(*preparedSQL)
	if p == nil {
		p = &preparedSQL{sds: make(map[string]*pgconn.StatementDescription)}
		data[preparedKey] = p
	}
	return p
}

func (p *preparedSQL) get(sql string) *pgconn.StatementDescription {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sds[sql]
}

func (p *preparedSQL) full() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sds) >= maxPrepared
}

func (p *preparedSQL) add(sql string, sd *pgconn.StatementDescription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sds[sql] = sd
}

// forget drops sql after err, if err says its prepared statement is gone or
// no longer fits the table: it goes through pgx's cache from then on.
func (p *preparedSQL) forget(sql string, err error) {
	if stalePlan(err) || missingStatement(err) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := p.sds[sql]; ok {
			p.sds[sql] = nil
		}
	}
}

// takeStale reports whether sql was forgotten, and clears that.
func (p *preparedSQL) takeStale(sql string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	sd, ok := p.sds[sql]
	if !ok || sd != nil {
		return false
	}
	delete(p.sds, sql)
	return true
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
	b := &pgx.Batch{}
	n := 0
	if !t.done { // follows: never the leader's
		t.done = true
		if n, err = t.g.prefix(b, t); err != nil {
			t.err = err
			return nil, false, err
		}
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
	if err := t.start(ctx, true); err != nil {
		return nil, err
	}
	sp, err := t.m.Begin(ctx)
	if err == nil {
		t.mu.Lock()
		t.begins++
		t.mu.Unlock()
	}
	return sp, err
}

// Commit refuses: the group's leader ends the transaction.
func (t *memberTx[K, V]) Commit(context.Context) error { return lock.ErrManaged }

// Rollback refuses: the group's leader ends the transaction.
func (t *memberTx[K, V]) Rollback(context.Context) error { return lock.ErrManaged }

// CopyFrom runs COPY FROM in the member's savepoint.
func (t *memberTx[K, V]) CopyFrom(ctx context.Context, tn pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.start(ctx, false); err != nil {
		return 0, err
	}
	return t.m.CopyFrom(ctx, tn, cols, src)
}

// SendBatch sends a batch in the member's savepoint.
func (t *memberTx[K, V]) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.start(ctx, false); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return t.m.SendBatch(ctx, b)
}

// LargeObjects returns the large object API, in the member's savepoint.
func (t *memberTx[K, V]) LargeObjects() pgx.LargeObjects {
	if err := t.start(context.Background(), true); err != nil {
		return pgx.LargeObjects{}
	}
	return t.m.LargeObjects()
}

// Prepare prepares a statement on the connection.
func (t *memberTx[K, V]) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.m.Prepare(ctx, name, sql)
}

// Exec runs a statement in the member's savepoint, in one round trip with
// the savepoint and a read of the row after it, when it can (see follows).
func (t *memberTx[K, V]) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
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
	if err := t.start(ctx, false); err != nil {
		return nil, err
	}
	return t.m.Query(ctx, sql, args...)
}

// QueryRow runs a query in the member's savepoint, in one round trip with
// the savepoint and a read of the row after it, when it can (see follows).
// The round trip ends when the Row is scanned.
func (t *memberTx[K, V]) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.follows(ctx, sql, args) {
		br, ok, err := t.pipeline(ctx, sql, args)
		switch {
		case err == errNotSent:
		case err != nil:
			return errRow{err}
		case ok:
			return &pipelinedRow[K, V]{t: t, br: br, sql: sql}
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
	return t.m.QueryRow(ctx, sql, args...)
}

// pipelinedRow is the Row of a QueryRow sent by pipeline.
type pipelinedRow[K, V any] struct {
	t   *memberTx[K, V]
	br  pgx.BatchResults
	sql string
}

func (r *pipelinedRow[K, V]) Scan(dest ...any) error {
	if r.br == nil {
		return pgx.ErrNoRows // as pgx's Row scanned a second time
	}
	br := r.br
	r.br = nil
	err := br.QueryRow().Scan(dest...)
	preparedOn(r.t.g.conn).forget(r.sql, err)
	return r.t.after(br, err)
}

// Conn returns the connection, with the member's savepoint open, so that
// statements run on it directly are the member's too.
func (t *memberTx[K, V]) Conn() *pgx.Conn {
	if err := t.start(context.Background(), true); err != nil {
		return nil
	}
	return t.m.Conn()
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
