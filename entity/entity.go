package entity

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/entityopt"
	"github.com/paylock/paylock/internal/keyqueue"
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// Table tells a Repository how to find, create and save one kind of entity
// keyed by a logical key of type K and held in memory as a V. Each method
// returns SQL and its arguments. Keep the SQL text constant and pass values
// as arguments: when the pool uses pgx's statement cache (its default
// mode), With prepares each distinct text once per connection. In any other
// mode the statements go unnamed, with text-format parameters whose types
// the server infers, so pass Go values that print as PostgreSQL input
// (json.RawMessage for jsonb, not []byte) or cast the parameter in the SQL.
type Table[K, V any] interface {
	// LockKey validates k and returns the lock it is serialized by. An error
	// is returned by With unchanged, before any SQL runs.
	LockKey(k K) (lock.Key, error)
	// Ensure returns the statement that inserts k's row if it is missing and
	// reports a creation as one affected row, without ever failing on a
	// unique violation, e.g.
	//	INSERT INTO t (a, b) SELECT $1, $2
	//	WHERE NOT EXISTS (SELECT FROM t WHERE a = $1 AND b = $2)
	//	ON CONFLICT DO NOTHING
	Ensure(k K) (sql string, args []any)
	// Find returns the statement that reads k's row, locked against writers
	// that don't take the advisory lock: SELECT ... FOR NO KEY UPDATE. With
	// the RowLock strategy that row lock is what serializes callers.
	Find(k K) (sql string, args []any)
	// Scan reads the row Find returned. created reports whether this call's
	// Ensure inserted it. Scan is called twice per With, once for the copy
	// fn gets and once for the copy Save compares it with.
	Scan(row pgx.Row, created bool) (*V, error)
	// Save returns the statement that writes what fn changed in after, as
	// compared with before, or "" when nothing changed. An error (fn changed
	// the key, say) makes With roll back and return it.
	Save(before, after *V) (sql string, args []any, err error)
}

// Reader may be implemented by a Table that can read k's row without
// locking it: the row Find would return, in the same columns, for Scan.
// [WithGroupCommit] reads the row when a member's savepoint opens and after
// each statement of its fn, inside the transaction that holds the row it
// found first locked, to tell whether the statements changed it; a plain
// read costs the server less than Find's row lock. Without it, those reads
// use Find. The read-back after a member changed the row (fn may have
// deleted it, and the key's row be another one) always uses Find.
type Reader[K any] interface {
	Read(k K) (sql string, args []any)
}

// ErrorClassifier may be implemented by a Table to add its own sentinels to
// the errors With returns from SQL (a foreign-key violation as "unknown
// parent", say). It gets the error already wrapped and returns it wrapped
// further, or unchanged.
type ErrorClassifier interface {
	ClassifyError(err error) error
}

// Strategy is how a Repository serializes callers for one key.
type Strategy int

const (
	// Advisory takes a transaction-scoped advisory lock on the key before
	// anything else, so callers serialize even before the row exists. The
	// default.
	Advisory Strategy = iota
	// RowLock takes no advisory lock: the unique index makes the insert of a
	// new row wait for a concurrent one, and Find's FOR NO KEY UPDATE
	// serializes callers on the row. For engines whose advisory locks are
	// missing, no-ops or node-local (a Citus worker), where CheckEngine
	// refuses Advisory; it requires the unique index.
	RowLock
)

// String returns "advisory" or "rowlock".
func (s Strategy) String() string {
	if s == RowLock {
		return "rowlock"
	}
	return "advisory"
}

// Errors matched with errors.Is.
var (
	// ErrTxAborted: a statement fn ran in tx failed and fn returned nil; the
	// transaction can't commit, so With rolled it back.
	ErrTxAborted = errors.New("entity: a statement in fn failed: transaction rolled back")
	// ErrNotFound: Find returned no row right after Ensure: the table's
	// statements don't agree with each other.
	ErrNotFound = errors.New("entity: Find returned no row after Ensure")
)

// Repository finds, creates and updates the entities of one Table, one
// caller per key at a time. It is safe for concurrent use.
type Repository[K, V any] struct {
	pool     *pgxpool.Pool
	table    Table[K, V]
	settings txn.Settings
	retry    lock.Retry
	strategy Strategy
	hooks    Hooks
	queue    *keyqueue.Queue // callers per key in this process; nil: none
	// prepare: the pool's connections use pgx's statement cache, so the
	// statements run as named prepared statements (see batch).
	prepare bool
	saves   savedSQL      // Save statements that worked, prepared before the lock
	groups  *groups[K, V] // group commit (WithGroupCommit); nil: off
	names   stmtNames
	// setSQL is settings.SetSQL() without and with ConnCheck.
	setSQL [2]string
}

// Option configures a Repository: [WithLockOptions], [WithStrategy],
// [WithHooks], [WithGroupCommit]. The zero Option changes nothing.
type Option struct{ apply func(*config) }

// option makes an Option of f.
func option(f func(*config)) Option { return Option{apply: f} }

func init() {
	// The bench's switch: see entityopt.
	entityopt.WithoutKeyQueue = option(func(c *config) { c.noQueue = true })
}

type config struct {
	lock     lock.Options
	strategy Strategy
	hooks    Hooks
	noQueue  bool // entityopt.WithoutKeyQueue
	group    int  // WithGroupCommit's max
}

// connsPerKey is how many [Repository.With] calls of one Repository may
// hold a pool connection for the same key at once: the one holding the key's
// lock, and the next in line, already waiting for the lock at PostgreSQL so
// that it runs as soon as the holder commits, with no round trip in between.
// Later callers wait in the Repository's queue, in arrival order, without a
// connection, so a hot key leaves the rest of the pool to other keys.
const connsPerKey = 2

// WithLockOptions bounds how long [Repository.With] waits for and holds a
// key, and whether it retries; see [lock.Options] for the fields and their
// defaults.
func WithLockOptions(o lock.Options) Option { return option(func(c *config) { c.lock = o }) }

// WithStrategy selects how callers are serialized; Advisory by default.
func WithStrategy(s Strategy) Option { return option(func(c *config) { c.strategy = s }) }

// WithHooks reports every With call to h.
func WithHooks(h Hooks) Option { return option(func(c *config) { c.hooks = h }) }

// New returns a Repository for table on pool, configured by opts
// ([WithLockOptions], [WithStrategy], [WithHooks], [WithGroupCommit]). Make one per pool and
// table and share it: its per-key queue works among the calls of one
// Repository.
func New[K, V any](pool *pgxpool.Pool, table Table[K, V], opts ...Option) *Repository[K, V] {
	var c config
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&c)
		}
	}
	var queue *keyqueue.Queue
	if !c.noQueue {
		queue = keyqueue.New(connsPerKey)
	}
	settings := txn.NewSettings(c.lock.LockTimeout, c.lock.IdleTimeout, c.lock.StatementTimeout)
	withCheck := settings
	withCheck.ConnCheck = true
	var gs *groups[K, V]
	if _, ok := table.(Cloner[V]); ok && c.group > 1 && !c.noQueue {
		gs = &groups[K, V]{max: c.group, keys: make(map[int64]*groupKey[K, V])}
	}
	return &Repository[K, V]{
		setSQL:   [2]string{settings.SetSQL(), withCheck.SetSQL()},
		groups:   gs,
		prepare:  pool.Config().ConnConfig.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement,
		queue:    queue,
		pool:     pool,
		table:    table,
		settings: settings,
		retry:    c.lock.Retry,
		strategy: c.strategy,
		hooks:    c.hooks,
	}
}

// With runs fn on the entity for k, creating its row if it does not exist,
// while no other With call for the same key — in this process or any other —
// runs. fn gets the row as the previous caller committed it and may use tx
// for its own statements; With saves what fn changed ([Table].Save) and
// commits. If fn returns an error, With rolls back and returns it; if fn
// panics, With rolls back and panics again. With blocks until the key is
// free, first in the Repository's queue, then at PostgreSQL; ctx governs
// both waits, fn and the commit.
//
// The package doc holds the contract, for every With built on entity: what
// fn may do with tx, the errors, waits and ctx, nested calls, round trips,
// retries, and group commit ([WithGroupCommit]).
func (r *Repository[K, V]) With(ctx context.Context, k K, fn func(ctx context.Context, tx pgx.Tx, v *V) error) error {
	if r.groups != nil {
		return r.retry.Do(ctx, func() error { return r.withGroup(ctx, k, fn) })
	}
	return r.retry.Do(ctx, func() error { return r.with(ctx, k, fn) })
}

// lockKey checks a call of With before anything else runs: fn is set, k's
// lock key is valid, and ctx does not already hold it (lock.ErrReentrant).
func (r *Repository[K, V]) lockKey(ctx context.Context, k K, fn func(ctx context.Context, tx pgx.Tx, v *V) error) (lock.Key, error) {
	if fn == nil {
		return lock.Key{}, errors.New("entity: With called with a nil fn")
	}
	lk, err := r.table.LockKey(k)
	if err != nil {
		return lock.Key{}, err
	}
	if err := lk.Validate(); err != nil {
		return lock.Key{}, err
	}
	if txn.Held(ctx, lk.ID()) {
		return lock.Key{}, fmt.Errorf("entity: with %s: %w", lk, lock.ErrReentrant)
	}
	return lk, nil
}

// with is one attempt of With.
func (r *Repository[K, V]) with(ctx context.Context, k K, fn func(ctx context.Context, tx pgx.Tx, v *V) error) (err error) {
	lk, err := r.lockKey(ctx, k, fn)
	if err != nil {
		return err
	}
	ev := Event{Namespace: lk.Namespace(), Key: lk, Strategy: r.strategy, Start: time.Now()}
	if !r.hooks.none() {
		if r.hooks.Start != nil {
			ctx = r.hooks.Start(ctx, lk.Namespace(), lk)
		}
		defer func() {
			p := recover()
			r.hooks.finish(ctx, &ev, err, p)
			if p != nil {
				panic(p)
			}
		}()
	}

	release, alone, err := r.waitInQueue(ctx, lk.ID())
	if err != nil {
		return fmt.Errorf("entity: with %s: wait in queue: %w", lk, txn.Classify(ctx, err))
	}
	defer release() // after conn.Release: the next in line may take its place
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return txn.BeginFailed(fmt.Errorf("entity: with %s: acquire connection: %w", lk, txn.Classify(ctx, err)))
	}
	defer conn.Release() // a connection left in a transaction is destroyed, not reused
	pc := conn.Conn().PgConn()
	defer func() {
		switch {
		case stalePlan(err) || missingStatement(err):
			// A statement prepared on this connection no longer matches the
			// table (a column changed type), or is gone (user code ran
			// DEALLOCATE ALL or DISCARD ALL): drop the connection, and pgx's
			// record of its prepared statements with it; the next call
			// prepares afresh.
			pc.Close(context.WithoutCancel(ctx))
		case pc.TxStatus() != 'I': // failed, or fn panicked
			txn.Rollback(ctx, pc, nil)
		}
	}()

	before, v, prepared, err := r.lockAndLoad(ctx, conn.Conn(), k, lk, &ev, alone)
	if err != nil {
		if missingStatement(err) {
			// Gone from the server (user code ran DEALLOCATE ALL or DISCARD
			// ALL on this connection): drop the connection now, so that the
			// error, before fn ran, with nothing committed, is one Retry
			// retries.
			pc.Close(context.WithoutCancel(ctx))
		}
		return txn.BeforeCommit(r.classify(fmt.Errorf("entity: with %s: %w", lk, err)), pc.IsClosed())
	}
	tx := txn.NewManaged(conn.Conn(), nil)
	defer tx.End(ctx) // before the rollback above: fn's large objects die with it
	ev.stage = stageFn
	if err := fn(txn.WithHeld(ctx, lk.ID()), tx, v); err != nil {
		return txn.BeforeCommit(tx.FnError(err), pc.IsClosed())
	}
	ev.stage = stageCommit
	if err := tx.Finish(); err != nil {
		return fmt.Errorf("entity: with %s: %w", lk, err)
	}
	if pc.TxStatus() != 'T' {
		return fmt.Errorf("entity: with %s: %w", lk, ErrTxAborted)
	}
	sql, args, err := r.table.Save(before, v)
	if err != nil {
		return err
	}
	if err := txn.ReadyToCommit(ctx, pc.IsClosed()); err != nil {
		return fmt.Errorf("entity: with %s: %w", lk, err)
	}
	if err := r.save(ctx, conn.Conn(), "", sql, args, prepared); err != nil {
		return r.classify(fmt.Errorf("entity: with %s: %w", lk, err))
	}
	ev.stage = stageDone
	return nil
}

// waitInQueue waits for the call's turn in r's queue of key's callers and,
// unless it came alone, for the caller alone ahead of it to settle (see
// keyqueue.Queue.Settle), for at most lock.Options.LockTimeout in all when
// that is set: then, as at PostgreSQL, the wait fails with
// lock.ErrLockTimeout. Both waits end before the call takes a pool
// connection: the caller ahead may need one to settle. alone reports that
// no other caller of key in this Repository held or waited for it.
func (r *Repository[K, V]) waitInQueue(ctx context.Context, key int64) (release func(), alone bool, err error) {
	qctx := ctx
	if r.settings.LockTimeout > 0 {
		var cancel context.CancelFunc
		qctx, cancel = context.WithTimeoutCause(ctx, r.settings.LockTimeout, txn.ErrLockTimeout)
		defer cancel()
	}
	release, alone, err = r.queue.AcquireAlone(qctx, key)
	if err == nil && !alone {
		if err = r.queue.WaitSettled(qctx, key); err != nil {
			release()
		}
	}
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(qctx), txn.ErrLockTimeout) {
		return nil, false, fmt.Errorf("%w (%s in the in-process queue)", txn.ErrLockTimeout, r.settings.LockTimeout)
	}
	if err != nil {
		return nil, false, err
	}
	return release, alone, nil
}

func (r *Repository[K, V]) classify(err error) error {
	if c, ok := r.table.(ErrorClassifier); ok {
		return c.ClassifyError(err)
	}
	return err
}
