package entity

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/txn"
)

// errGoexit: fn ended its goroutine with runtime.Goexit (t.FailNow does),
// so its call never returned.
var errGoexit = errors.New("entity: fn called runtime.Goexit")

// step runs m's fn in g, on m's goroutine, then settles its part (see
// settle) and hands g back to the leader (unless m is the leader). ok
// reports whether fn succeeded and its part stays in the transaction;
// otherwise err or panicked is what m's call ends with, and nothing of it
// stays. Every call into fn and into the Table is recovered here.
func (g *group[K, V]) step(m *member[K, V], leader bool) (ok bool, panicked any, err error) {
	// cut: the leader cut fn off (see await), and took the turn back: from
	// then on, nothing of g is m's to touch.
	cut := false
	if !leader {
		defer func() {
			if !cut {
				g.stepped <- struct{}{}
			}
		}()
		if err := m.ctx.Err(); err != nil {
			return false, nil, fmt.Errorf("entity: with %s: wait in queue: %w", g.lk, err) // dropped, fn not run
		}
		if g.state != txOpen { // a failure before this turn: fn not run
			return false, nil, txn.BeforeCommit(fmt.Errorf("entity: with %s: %w (%v)", g.lk, ErrGroupRolledBack, g.why), true)
		}
		m.ev.Granted, m.ev.Wait = time.Now(), time.Since(m.ev.Start)
	}
	g.n++
	m.ev.GroupSize = g.n
	// A member that fails leaves the row as it found it: its savepoint is
	// rolled back, and so is what g knows of the row.
	gone, cur, written := g.gone, g.cur, g.written
	defer func() {
		if !ok && !cut {
			g.gone, g.cur, g.written = gone, cur, written
		}
	}()
	tx := &memberTx[K, V]{g: g, m: txn.NewManaged(g.conn, nil), plain: leader}
	if !leader {
		tx.name = "paylock_group_" + strconv.Itoa(g.n)
	}
	g.txs = append(g.txs, tx.m) // the leader ends it once the transaction is
	defer tx.m.Close()
	pc := g.conn.PgConn()
	var v *V
	switch {
	case leader:
		v = g.first
	case g.gone:
		// The row is gone (a member before deleted it): this call creates
		// it again, in its own savepoint, as the next call would.
		var created bool
		if panicked = protect(func() { v, created, err = g.recreate(m.ctx, tx) }); panicked != nil || err != nil {
			tx.shut()
			g.undo(m.ctx, tx, err)
			if panicked != nil {
				return false, panicked, nil
			}
			return false, nil, txn.BeforeCommit(g.r.classify(fmt.Errorf("entity: with %s: %w", g.lk, err)), pc.IsClosed())
		}
		m.ev.Created = created
	default:
		// Not new, whoever created it: the leader's call succeeded (else
		// nobody joins), as the call before this one would have.
		panicked = protect(func() { v = g.cloner.Clone(g.cur, false) })
	}
	if panicked != nil {
		return false, panicked, nil
	}
	returned := false
	defer func() {
		if !returned { // runtime.Goexit in fn: its call never returned, so nothing of it commits
			if !tx.returned() {
				cut = true
				return
			}
			tx.shut()
			tx.m.Close() // and the savepoints fn began: waits for their statements in flight
			g.undo(context.WithoutCancel(m.ctx), tx, errGoexit)
			if leader {
				g.broke(errGoexit, false)
			}
		}
	}()
	m.ev.stage = stageFn
	tx.idleSince = time.Now()
	if !leader {
		g.running <- tx // buffered: never blocks
	}
	var fnErr error
	panicked = protect(func() { fnErr = m.fn(txn.WithHeld(m.ctx, g.lk.ID()), tx, v) })
	returned = true
	if !tx.returned() {
		cut = true
		if panicked != nil {
			return false, panicked, nil
		}
		return false, nil, g.cutOffErr(fnErr)
	}
	leftOpen := tx.shut() // no statement of fn's from now on, from any goroutine
	tx.mu.Lock()
	g.withSQL += tx.begins
	if tx.used && tx.lastSQL.After(g.lastSQL) {
		g.lastSQL = tx.lastSQL
	}
	tx.mu.Unlock()
	if fnErr == nil && panicked == nil {
		// fn returned nil, but its ctx ended first: a call of its own would
		// not send COMMIT.
		if err := txn.ReadyToCommit(m.ctx, false); err != nil {
			fnErr = fmt.Errorf("entity: with %s: %w", g.lk, err)
		}
	}
	if panicked != nil || fnErr != nil {
		if panicked != nil {
			fnErr = fmt.Errorf("fn panicked: %v", panicked)
		}
		fnErr = tx.m.FnError(fnErr)
		if errors.Is(fnErr, txn.ErrTxEnded) {
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
	if err := tx.m.Finish(); err != nil || leftOpen {
		if leftOpen {
			err = txn.ErrRowsOpen // closed by shut: the connection is the group's again
		}
		err = fmt.Errorf("entity: with %s: %w", g.lk, err)
		if errors.Is(err, txn.ErrTxEnded) {
			g.broke(err, true)
		} else {
			g.undo(m.ctx, tx, err)
		}
		return false, nil, txn.BeforeCommit(err, pc.IsClosed())
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
	// The row as fn left p: Save's statement, checked now (fn changed the
	// key, say) and, but for the leader's, written now, in the member's
	// savepoint.
	var sql string
	var args []any
	var saveErr error
	if panicked = protect(func() { sql, args, saveErr = g.r.table.Save(g.written, v) }); panicked != nil || saveErr != nil {
		cause := saveErr
		if panicked != nil {
			cause = fmt.Errorf("entity: Table.Save panicked: %v", panicked)
		}
		g.undo(m.ctx, tx, cause)
		return false, panicked, saveErr
	}
	changed := tx.used && !tx.rowUnchanged() // fn's statements may have changed the row itself
	if leader {
		// Written with the transaction's COMMIT if nobody joins, as a call
		// of its own; else before the first member's turn (settleLeader).
		g.cur, g.stale = v, changed
		tx.mu.Lock()
		g.leaderSnap = tx.snap
		tx.mu.Unlock()
		g.ok = append(g.ok, m)
		return true, nil, nil
	}
	if sql == "" && !changed && !tx.used {
		// Nothing to write, nothing to read: the next member gets the row
		// as the transaction holds it, not fields of p that Save does not
		// write (as the next call would read it).
		g.cur = g.written
		g.ok = append(g.ok, m)
		return true, nil, nil
	}
	// The member's ctx covers its write as it would cover a lone call's: if
	// it ends meanwhile, pgx closes the connection (see the contract's
	// exception), but no call waits past its ctx.
	if panicked = protect(func() { err = g.settle(m.ctx, tx, v, sql, args, changed) }); panicked != nil || err != nil {
		if panicked != nil {
			err = fmt.Errorf("entity: Table panicked: %v", panicked)
		}
		g.undo(m.ctx, tx, err)
		if panicked != nil {
			return false, panicked, nil
		}
		return false, nil, txn.BeforeCommit(g.r.classify(fmt.Errorf("entity: with %s: %w", g.lk, err)), pc.IsClosed())
	}
	g.ok = append(g.ok, m)
	return true, nil, nil
}

// protect calls f and returns what it panicked with, if it did.
func protect(f func()) (panicked any) {
	defer func() { panicked = recover() }()
	f()
	return nil
}

// settle writes v, the row as a member's fn left p, with sql and args
// (Save's, if anything changed) and reads the row back, in one round trip
// inside the member's savepoint, opened first if fn ran no SQL: a write
// the server refuses (a constraint, a trigger, a value jsonb rejects) is
// the member's and is undone with it, as it would fail that call alone,
// and the next member starts from the row as the transaction now holds it
// (what a trigger added, columns the server sets). changed: fn's own
// statements may have changed the row, or deleted it, so the read is
// Find's, which locks a row the transaction may not hold yet (another
// row of the key, on a table not yet deduplicated); otherwise the Table's
// Read. A row that is gone leaves g.gone for the next member.
//
// When fn may have changed a setting (tx.snap), the settings are set back
// first, in a round trip of their own that also tells whether fn made the
// transaction read-only (SET TRANSACTION READ ONLY), which no statement
// can undo but ROLLBACK TO SAVEPOINT. Then a write fails, as it would
// alone, and without one nothing is read back (a locking read would fail
// where the call alone sends none): the row stays as it is, and the group
// takes nobody after this member (g.readOnly).
func (g *group[K, V]) settle(ctx context.Context, tx *memberTx[K, V], v *V, sql string, args []any, changed bool) error {
	tx.mu.Lock()
	snap := tx.snap
	tx.mu.Unlock()
	b := &pgx.Batch{}
	n := 0
	checked := false
	switch {
	case !tx.opened():
		n = g.openSQL(b, tx)
	case !tx.plain:
		// fn ran SQL: first make sure this is still the group's
		// transaction ("COMMIT; BEGIN" in fn), so that a break is charged
		// to the member that made it.
		b.Queue(txn.CheckSQL)
		checked = true
	}
	if snap != nil {
		queueRestore(b, snap)
		readOnly, err := g.settleHead(ctx, b, tx, n, checked, true)
		if err != nil {
			return err
		}
		if readOnly && sql == "" {
			g.readOnly, g.cur = true, g.written
			return nil
		}
		b, n, checked = &pgx.Batch{}, 0, false
	}
	if sql != "" {
		b.Queue(sql, args...)
	}
	for _, q := range checkDeferred {
		b.Queue(q)
	}
	readSQL, readArgs := g.read()
	if changed {
		readSQL, readArgs = g.r.table.Find(g.k)
	}
	b.Queue(readSQL, readArgs...)
	br := g.conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := g.readHead(br, tx, n, checked, false); err != nil {
		return err
	}
	if sql != "" {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	for range checkDeferred {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	fresh, err := g.r.table.Scan(br.QueryRow(), false)
	if errors.Is(err, pgx.ErrNoRows) {
		g.gone, g.cur, g.written = true, v, v
		return br.Close()
	}
	if err != nil {
		return err
	}
	if err := br.Close(); err != nil {
		return err
	}
	g.gone, g.cur, g.written = false, fresh, fresh
	return nil
}

// checkDeferred checks, at the end of a member's part, the constraints
// checked at COMMIT (DEFERRABLE INITIALLY DEFERRED, or deferred by SET
// CONSTRAINTS) that its part and those before it left to check, as the
// member's own COMMIT would one by one: a violation fails this member (its
// savepoint is rolled back), not the group's COMMIT, and a later member
// can't mend it. The check runs in a savepoint rolled back at once, which
// sets back the constraints' modes and leaves the checks pending, for the
// COMMIT.
var checkDeferred = [...]string{
	"SAVEPOINT paylock_deferred",
	"SET CONSTRAINTS ALL IMMEDIATE",
	"ROLLBACK TO SAVEPOINT paylock_deferred",
	"RELEASE SAVEPOINT paylock_deferred",
}

// settleHead sends b, which holds settle's first statements, alone, and
// reads their results (see readHead).
func (g *group[K, V]) settleHead(ctx context.Context, b *pgx.Batch, tx *memberTx[K, V], n int, checked, restored bool) (readOnly bool, err error) {
	br := g.conn.SendBatch(ctx, b)
	defer br.Close()
	if readOnly, err = g.readHead(br, tx, n, checked, restored); err != nil {
		return false, err
	}
	return readOnly, br.Close()
}

// readHead reads the results of settle's first statements from br: the n
// that open the member's savepoint, the check that this is still the
// group's transaction if checked, and the restore of the settings if
// restored, which tells whether the transaction is read-only.
func (g *group[K, V]) readHead(br pgx.BatchResults, tx *memberTx[K, V], n int, checked, restored bool) (readOnly bool, err error) {
	g.lastSQL = time.Now()
	if n > 0 {
		for range n {
			if _, err := br.Exec(); err != nil {
				return false, g.openFailed(err)
			}
		}
		tx.mu.Lock()
		tx.done = true
		tx.mu.Unlock()
		g.openSP = tx.name
		g.withSQL++
	}
	if checked {
		if _, err := br.Exec(); err != nil {
			if txn.EndedByFn(err) {
				err = fmt.Errorf("%w: %w", txn.ErrTxEnded, err)
				g.broke(err, true)
			}
			return false, err
		}
	}
	if restored {
		var count int64
		if err := br.QueryRow().Scan(&count, &readOnly); err != nil {
			return false, fmt.Errorf("set back the settings fn changed for its transaction: %w", err)
		}
	}
	return readOnly, nil
}

// recreate opens tx's savepoint and inserts the key's row again (Ensure,
// then Find), for the first member after the row was deleted: the row it
// returns, and whether this call created it.
func (g *group[K, V]) recreate(ctx context.Context, tx *memberTx[K, V]) (v *V, created bool, err error) {
	b := &pgx.Batch{}
	n := g.openSQL(b, tx)
	ensureSQL, ensureArgs := g.r.table.Ensure(g.k)
	b.Queue(ensureSQL, ensureArgs...)
	findSQL, findArgs := g.r.table.Find(g.k)
	b.Queue(findSQL, findArgs...)
	br := g.conn.SendBatch(ctx, b)
	defer br.Close()
	g.lastSQL = time.Now()
	for range n {
		if _, err := br.Exec(); err != nil {
			return nil, false, g.openFailed(err)
		}
	}
	tx.mu.Lock()
	tx.done = true
	tx.mu.Unlock()
	g.openSP = tx.name
	g.withSQL++
	tag, err := br.Exec()
	if err != nil {
		return nil, false, err
	}
	created = tag.RowsAffected() == 1
	row, err := g.r.table.Scan(br.QueryRow(), created)
	if err != nil {
		return nil, false, err
	}
	if err := br.Close(); err != nil {
		return nil, false, err
	}
	// The row as written, and the copy fn changes.
	g.gone, g.cur, g.written = false, row, row
	return g.cloner.Clone(row, created), created, nil
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
	if g.state == txOpen {
		g.state, g.why = txBroken, err
		if ended {
			g.state = txEndedByFn
		}
	}
}

// open runs before the first statement of a member's fn, in a round trip of
// its own: see prefix.
func (g *group[K, V]) open(ctx context.Context, tx *memberTx[K, V]) error {
	b := &pgx.Batch{}
	n := g.prefix(b, tx)
	br := tx.m.SendBatch(ctx, b)
	err := g.opened(br, n, tx)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = g.openFailed(cerr)
	}
	return err
}

// openSQL queues on b what opens a member's savepoint: a check that this
// is still the transaction that holds the lock (a member before may have
// ended it and begun another, "COMMIT; BEGIN", committing what the members
// before it did), the release of the previous member's savepoint, so that
// no later fn can roll back into what it did (that fails if it rolled back
// past its savepoint itself, to one an earlier member's fn left open,
// undoing what the members before it did), and the member's savepoint. It
// returns how many statements it queued.
func (g *group[K, V]) openSQL(b *pgx.Batch, tx *memberTx[K, V]) int {
	b.Queue(txn.CheckSQL)
	if g.openSP != "" {
		b.Queue("RELEASE SAVEPOINT " + g.openSP)
	}
	b.Queue("SAVEPOINT " + tx.name)
	return len(b.QueuedQueries)
}

// prefix queues on b what goes before the first statement of a member's
// fn: openSQL, then a read of the row as it then is. It returns how many
// statements it queued: the first n results of b are opened's to read.
func (g *group[K, V]) prefix(b *pgx.Batch, tx *memberTx[K, V]) (n int) {
	g.openSQL(b, tx)
	readSQL, readArgs := g.read()
	b.Queue(readSQL, readArgs...) // the row fn starts from, as the transaction holds it
	return len(b.QueuedQueries)
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
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return g.openFailed(err)
	}
	g.openSP = tx.name
	g.withSQL++
	tx.base = base
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
		err = fmt.Errorf("%w: %w", txn.ErrTxEnded, err)
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
