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
