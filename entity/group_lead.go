package entity

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// group is one transaction shared by callers of one key. Its fields are used
// by one goroutine at a time: the leader's, then each member's in turn, which
// hand it over through member.turn and group.stepped.
type group[K, V any] struct {
	k       K
	r       *Repository[K, V]
	cloner  Cloner[V]
	lk      lock.Key
	conn    *pgx.Conn
	first   *V   // the leader's copy
	cur     *V   // the row as the last successful member left it
	written *V   // the row as the transaction holds it
	gone    bool // the row was deleted: the next member creates it again
	n       int
	withSQL int
	ok      []*member[K, V] // members whose fn succeeded, in order
	state   txState         // whether the transaction can still commit
	why     error           // why not, unless txOpen
	openSP  string          // the savepoint of the last member with SQL, not yet released
	stale   bool            // the leader's statements may have changed the row: read it back with its write
	// leaderSnap: the settings before the leader's fn changed any, set
	// back before the first member's turn (see settingsSnap).
	leaderSnap *settingsSnap
	lastSQL    time.Time            // when the last statement of the transaction was sent, as far as known
	txs        []*txn.Managed       // each member's tx, ended once the transaction is
	size       int                  // callers whose fn ran, set before the outcome is sent
	stepped    chan struct{}        // a member's turn ended
	running    chan *memberTx[K, V] // a member's fn began, with this tx
	txs0       [1]*txn.Managed      // txs and ok of a lone caller, without allocations
	ok0        [1]*member[K, V]

	prepared []string        // the statements lockAndLoad prepared
	ctx      context.Context // the leader's
	pconn    *pgxpool.Conn   // conn's, given back by end
	release  func()          // gives back the leader's place in the key queue
	leading  atomic.Bool     // whether the leader still gathers callers (false once stop ran)
	stopFn   func()          // stop, made once: watch's timer calls it
	budget   time.Duration   // how long the group may hold the key (see lead)
	granted  time.Time       // when the leader took the key
	// readOnly: a member's fn made the transaction read-only (SET
	// TRANSACTION READ ONLY) and wrote nothing: the group takes nobody
	// after it (see settle).
	readOnly bool
	panicked any // what the final write panicked with, for the leader (see drive)
}

// txState is whether a group's transaction can still commit.
type txState int

const (
	txOpen      txState = iota // it can
	txBroken                   // it can't: it is rolled back, and nothing of it commits
	txEndedByFn                // a member's fn ended it with SQL (or may have), committing what ran before
)

// gatherEnd is why a leader stopped taking callers into its transaction.
type gatherEnd int

const (
	endQueueEmpty gatherEnd = iota // nobody was queued
	endMax                         // the group has max callers
	endMaxSQL                      // maxGroupSQL members ran SQL
	endBudget                      // the group held the key max times as long as the leader's own call
	endIdle                        // one fn ran for IdleTimeout: the server ended the transaction
	endBroken                      // the transaction can't commit: take nobody else into it
	endReadOnly                    // an fn made the transaction read-only: the next call's write would fail
)

// idleGap is how much of IdleTimeout a member's fn may find spent when it
// starts, a twentieth: past that, the leader sends a statement first
// (keepAlive), so that the server's idle clock counts each fn alone, as it
// would in a call of its own, and not the sum of the fns that ran no SQL.
// When IdleTimeout is left to the server, the leader does not know the
// server's setting (a database's or role's, 2 s say): then 1 ms.
func (g *group[K, V]) idleGap() time.Duration {
	idle := g.r.settings.IdleTimeout
	if idle <= 0 {
		return time.Millisecond
	}
	return idle / 20
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
			return g.outcome(ctx, m)
		}
	}
	err, panicked = r.lead(ctx, k, lk, m)
	if panicked != nil && r.hooks.none() {
		panic(panicked)
	}
	return err
}

// outcome waits for the group's outcome for m, whose fn succeeded, or for
// ctx to end first: no call waits past its ctx. Its part can't be taken
// out of the group any more, so a call whose ctx ends first gets
// lock.ErrCommitUnknown with ctx's error: the group may yet commit it.
func (g *group[K, V]) outcome(ctx context.Context, m *member[K, V]) error {
	done := func(err error) error {
		if err == nil {
			m.ev.stage, m.ev.GroupSize = stageDone, g.size // set before the outcome was sent
		}
		return err
	}
	select {
	case err := <-m.done:
		return done(err)
	case <-ctx.Done():
	}
	select {
	case err := <-m.done:
		return done(err)
	default:
		return fmt.Errorf("entity: with %s: %w: its fn returned, and its group had not committed when ctx ended: %w",
			g.lk, txn.ErrCommitUnknown, ctx.Err())
	}
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
	// Taken meanwhile, m leaves all the same while the leader has not
	// claimed it yet (it writes its own row first, say): no call waits past
	// its ctx. Otherwise its turn has come, or comes at once.
	if !r.groups.leave(lk.ID(), m) && !m.abandon() {
		return <-m.turn, nil
	}
	if ctx.Err() == nil && errors.Is(context.Cause(qctx), txn.ErrLockTimeout) {
		return nil, fmt.Errorf("%w (%s in the in-process queue)", txn.ErrLockTimeout, r.settings.LockTimeout)
	}
	return nil, ctx.Err()
}

// lead runs the transaction m leads: the lock and the row, m's fn, then the
// fns of the callers queued behind it, then one write and one COMMIT.
//
// While nobody is queued, the leader's goroutine does all of it, as a call
// of its own would. Once it takes a caller from the queue, the rest (the
// members' turns, the write, COMMIT, the outcomes) goes on a goroutine of
// its own (drive), and the leader waits for its outcome like a member, for
// at most as long as its ctx: no call waits past its ctx, and a group
// whose leader's ctx ended still ends for the members it took.
//
//lint:ignore ST1008 the second result carries a panic of fn, raised again on its caller's goroutine; it is not a result in the usual sense
func (r *Repository[K, V]) lead(ctx context.Context, k K, lk lock.Key, m *member[K, V]) (err error, panicked any) {
	// g is made first, so that its fields, not closures, carry what ending
	// the lead needs: a lone caller allocates no more than it must.
	g := &group[K, V]{k: k, r: r, lk: lk, ctx: ctx}
	g.leading.Store(true)
	g.stopFn = g.stop
	// Leaders take a place in the key queue, as callers without the option
	// do, and give it back after their connection: the leader that
	// committed may not have released its connection yet when the next
	// one's successor wants one, and a key holds at most connsPerKey.
	release, alone, err := r.waitInQueue(ctx, lk.ID())
	if err != nil {
		g.stop()
		return fmt.Errorf("entity: with %s: wait in queue: %w", lk, txn.Classify(ctx, err)), nil
	}
	g.release = release
	pconn, err := r.pool.Acquire(ctx)
	if err != nil {
		release()
		g.stop()
		return txn.BeginFailed(fmt.Errorf("entity: with %s: acquire connection: %w", lk, txn.Classify(ctx, err))), nil
	}
	g.pconn, g.conn = pconn, pconn.Conn()
	pc := g.conn.PgConn()
	driven := false // the group's own goroutine ends it
	defer func() {
		if !driven {
			g.end(err)
		}
	}()
	ev := m.ev
	before, v, prepared, err := r.lockAndLoad(ctx, g.conn, k, lk, ev, alone)
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
	g.cloner, g.first, g.cur, g.written, g.prepared = r.table.(Cloner[V]), v, before, before, prepared
	g.txs, g.ok = g.txs0[:0], g.ok0[:0]
	g.lastSQL = time.Now() // lockAndLoad's round trip just ended
	// The leader's fn runs as in a call of its own, without a savepoint: if
	// it fails, the transaction rolls back and nobody else has joined it; the
	// first queued caller then leads the next one.
	timer := g.watch()
	ok, panicked, ownErr := g.step(m, true)
	unwatch(timer)
	if !ok {
		g.broke(errors.New("the leader's fn failed"), false) // ownErr is nil after a panic
	}
	// The budget: about what the callers would hold the key for one by one,
	// judged by the leader's round trip and fn.
	g.budget, g.granted = time.Duration(r.groups.max)*(time.Since(ev.Granted)+ev.RoundTrip-ev.Wait), ev.Granted
	next, _ := g.next()
	if next != nil {
		driven = true
		m.done = make(chan error, 1)
		go g.drive(m, next)
		err = g.outcome(ctx, m)
		switch {
		case errors.Is(err, errLeaderPanicked):
			return nil, g.panicked // set before the outcome was sent
		case errors.Is(err, errGoexit):
			runtime.Goexit() // as the Table method did on drive's goroutine
		}
		return err, nil
	}
	// Nobody to take: the leader commits alone.
	commitPanic, outcome := g.finish(ctx, m)
	if !ok || panicked != nil {
		return ownErr, panicked
	}
	if commitPanic != nil {
		return nil, commitPanic
	}
	if outcome == nil {
		ev.stage, ev.GroupSize = stageDone, g.size
	}
	return outcome, nil
}

// stop ends the leader's gathering, once: the first queued caller, if any,
// leads the next transaction.
func (g *group[K, V]) stop() {
	if g.leading.Swap(false) {
		g.r.groups.stopLeading(g.lk.ID())
	}
}

// end gives back the connection (ending what is left of the transaction),
// the place in the key queue and the lead, in that order; err is the
// transaction's outcome.
func (g *group[K, V]) end(err error) {
	pc := g.conn.PgConn()
	switch {
	case stalePlan(err) || missingStatement(err): // as in with
		pc.Close(context.WithoutCancel(g.ctx))
	case pc.TxStatus() != 'I':
		txn.Rollback(g.ctx, pc, nil)
	}
	g.pconn.Release()
	g.release()
	g.stop()
}

// errLeaderPanicked is the outcome drive sends the leader when the group's
// final write panicked: the leader raises that panic again (g.panicked).
var errLeaderPanicked = errors.New("entity: the group's final write panicked")

// drive ends the group on a goroutine of its own once the leader, m, took
// its first member, next: the members' turns, the write and COMMIT, each
// member's outcome and the leader's (see lead). What drive sends goes
// without the leader's cancellation (the members' turns, their writes and
// the keep-alives are everyone's), COMMIT as commit says.
//
// A Table method that calls runtime.Goexit here (t.FailNow in Save, say)
// ends drive's goroutine: then nothing commits, the connection, the key and
// the caller next in line are given back, the members whose fn succeeded
// get ErrGroupRolledBack, and the leader's goroutine calls runtime.Goexit,
// as the method did.
func (g *group[K, V]) drive(m *member[K, V], next *member[K, V]) {
	dctx := context.WithoutCancel(g.ctx)
	over := false
	defer func() {
		if over {
			return
		}
		g.broke(errGoexit, false)
		if g.n == 1 && next.claim() {
			g.r.groups.requeue(g.lk.ID(), next) // settleLeader's Save: next had no turn
		}
		for _, tx := range g.txs {
			tx.End(dctx)
		}
		g.end(errGoexit)
		err := fmt.Errorf("entity: with %s: %w (%w in a Table method)", g.lk, ErrGroupRolledBack, errGoexit)
		for _, o := range g.ok {
			if o != m {
				o.done <- txn.BeforeCommit(err, true)
			}
		}
		m.done <- errGoexit
	}()
	g.take(dctx, next)
	g.gather(dctx)
	commitPanic, outcome := g.finish(g.ctx, m)
	over = true
	g.end(outcome)
	switch {
	case commitPanic != nil:
		g.panicked = commitPanic
		m.done <- errLeaderPanicked
	case len(g.ok) == 0 || g.ok[0] != m:
		// The leader's own write failed (settleLeader): its call fails as
		// it would alone.
		m.done <- g.why
	default:
		m.done <- outcome
	}
}

// finish ends the gathering and the transaction: the write and COMMIT,
// unless it broke (see commit); then it sends each member whose fn
// succeeded, but for the leader m, the outcome, which it returns after what
// the final write panicked with, if it did (the members then get an
// error).
func (g *group[K, V]) finish(ctx context.Context, m *member[K, V]) (commitPanic any, outcome error) {
	g.stop()
	g.size = g.n
	outcome = func() (err error) {
		defer func() {
			if commitPanic = recover(); commitPanic != nil {
				// Table.Save panicked, or an ErrorClassifier: the members
				// still get an outcome, the leader the panic.
				pc := g.conn.PgConn()
				if pc.IsClosed() || pc.TxStatus() == 'I' {
					err = fmt.Errorf("entity: with %s: %w: the group's final write panicked: %v", g.lk, txn.ErrCommitUnknown, commitPanic)
				} else {
					err = fmt.Errorf("entity: with %s: %w (the group's final write panicked: %v)", g.lk, ErrGroupRolledBack, commitPanic)
				}
			}
		}()
		return g.commit(ctx)
	}()
	for _, tx := range g.txs {
		// Only now: ending a tx whose fn used LargeObjects rolls back the
		// transaction unless it is over.
		tx.End(ctx)
	}
	for _, o := range g.ok {
		if o != m {
			o.done <- outcome
		}
	}
	return commitPanic, outcome
}

// watch stops the gathering if an fn runs for IdleTimeout: by then the
// server has ended the transaction, idle that long, and the next caller,
// which may be a With for this key from inside that fn given another ctx,
// takes the lock as it would without group commit, rather than wait in the
// queue behind its own caller for good. unwatch stops the watch.
func (g *group[K, V]) watch() *time.Timer {
	if idle := g.r.settings.IdleTimeout; idle > 0 {
		return time.AfterFunc(idle, g.stopFn)
	}
	return nil
}

func unwatch(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

// next returns the next caller to take into g, or nil and why the
// gathering ends.
func (g *group[K, V]) next() (*member[K, V], gatherEnd) {
	switch {
	case g.state != txOpen:
		return nil, endBroken
	case g.readOnly:
		return nil, endReadOnly
	case !g.leading.Load():
		return nil, endIdle
	case g.n >= g.r.groups.max:
		return nil, endMax
	case g.withSQL >= maxGroupSQL:
		return nil, endMaxSQL
	case time.Since(g.granted) >= g.budget:
		return nil, endBudget
	}
	next := g.r.groups.pop(g.lk.ID())
	if next == nil {
		return nil, endQueueEmpty
	}
	return next, 0
}

// gather takes the callers queued behind the leader into g, one at a time
// (see take), until one of the reasons of gatherEnd, which it returns.
func (g *group[K, V]) gather(ctx context.Context) gatherEnd {
	for {
		next, why := g.next()
		if next == nil {
			return why
		}
		g.take(ctx, next)
	}
}

// take hands next its turn in g, once the transaction is ready for it,
// and waits for the turn to end (see await); if the transaction can't take
// it, next is put back at the head of the queue, to lead the next one. If
// next's ctx ended meanwhile (its wait ends with its ctx, see waitTurn), it
// left, and take skips it.
func (g *group[K, V]) take(ctx context.Context, next *member[K, V]) {
	if g.n == 1 {
		g.settleLeader(ctx)
	}
	if g.state == txOpen && !g.readOnly && time.Since(g.lastSQL) > g.idleGap() {
		g.keepAlive(ctx)
	}
	if !next.claim() {
		return // its ctx ended while it waited for this: it left
	}
	if g.state != txOpen || g.readOnly {
		// next did not join: it leads the next transaction.
		g.r.groups.requeue(g.lk.ID(), next)
		return
	}
	if g.stepped == nil { // a lone caller needs none
		g.stepped, g.running = make(chan struct{}, 1), make(chan *memberTx[K, V], 1)
	}
	gone, cur, written, sent := g.gone, g.cur, g.written, g.lastSQL
	next.turn <- g
	timer := g.watch()
	cut := g.await(ctx, sent)
	unwatch(timer)
	if cut != nil {
		// next's fn stalled: its part goes, and the turn is the leader's
		// again (see await).
		g.undo(ctx, cut, txn.ErrIdleTimeout)
		g.gone, g.cur, g.written = gone, cur, written
	}
}

// settleLeader writes the row as the leader's fn left p, before the first
// member's turn, and reads it back (see settle): without a savepoint, as
// the leader's fn ran; if the write fails, the leader's call fails with it
// and nobody joins the transaction. A lone caller never gets here: its
// write goes with COMMIT, as without the option.
func (g *group[K, V]) settleLeader(ctx context.Context) {
	lk := g.lk
	var err error
	if p := protect(func() {
		err = func() error {
			sql, args, err := g.r.table.Save(g.written, g.cur)
			if err != nil {
				return err
			}
			if sql == "" && !g.stale && g.leaderSnap == nil {
				g.cur = g.written // not fields of p that Save does not write
				return nil
			}
			return g.settle(ctx, &memberTx[K, V]{g: g, plain: true, done: true, snap: g.leaderSnap}, g.cur, sql, args, g.stale)
		}()
		if err != nil {
			err = g.r.classify(fmt.Errorf("entity: with %s: %w", lk, err))
		}
	}); p != nil {
		err = fmt.Errorf("entity: with %s: Table panicked: %v", lk, p)
	}
	if err != nil {
		g.ok = g.ok[:0]
		g.broke(txn.BeforeCommit(err, g.conn.PgConn().IsClosed()), false)
	}
}

// keepAlive sends a statement that does nothing, so that the server's idle
// clock starts again before the next member's fn (see idleGap).
//
// In a transaction a member's fn left aborted (a statement of its failed,
// and fn goes on), the server refuses it (25P02) and the transaction stays
// as it was: the server's idle clock starts again all the same, and the
// member fails with ErrTxAborted once fn returns, as alone.
func (g *group[K, V]) keepAlive(ctx context.Context) {
	ctx, cancel := txn.CleanupContext(ctx)
	defer cancel()
	pc := g.conn.PgConn()
	aborted := pc.TxStatus() == 'E'
	if _, err := pc.Exec(ctx, "SELECT").ReadAll(); err != nil && !(aborted && isSQLState(err, "25P02") && pc.TxStatus() == 'E') {
		g.broke(fmt.Errorf("entity: with %s: keep the transaction from idling out: %w", g.lk, err), false)
	}
	g.lastSQL = time.Now()
}

// isSQLState reports whether err is an error of the server's with SQLSTATE
// code.
func isSQLState(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// commit writes the row and commits, unless no member succeeded or the
// transaction broke; it returns what every member whose fn succeeded gets.
func (g *group[K, V]) commit(ctx context.Context) error {
	lk, pc := g.lk, g.conn.PgConn()
	if len(g.ok) == 0 {
		return nil
	}
	if g.state != txOpen {
		if g.state == txEndedByFn {
			return fmt.Errorf("entity: with %s: %w: another call in the same group transaction ended it with SQL (or may have), committing what ran before it: %w",
				lk, txn.ErrCommitUnknown, g.why)
		}
		return txn.BeforeCommit(fmt.Errorf("entity: with %s: %w (%v)", lk, ErrGroupRolledBack, g.why), true)
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
	if err := g.r.save(ctx, g.conn, release, sql, args, g.prepared); err != nil {
		if savepointGone(err) {
			return txn.BeforeCommit(fmt.Errorf("entity: with %s: %w (a call's fn rolled back past its savepoint: %w)", lk, ErrGroupRolledBack, err), true)
		}
		if errors.Is(err, txn.ErrTxEnded) && g.size > 1 {
			// A member's fn ended the transaction and began another: what
			// ran before it is committed, what ran after it is not.
			return fmt.Errorf("entity: with %s: %w: a call in the same group transaction ended it with SQL, committing what ran before it: %w",
				lk, txn.ErrCommitUnknown, err)
		}
		return g.r.classify(fmt.Errorf("entity: with %s: %w", lk, err))
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
