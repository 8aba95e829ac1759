// Package dedupe makes a live payments table that already holds duplicate
// (service_id, line_item_id) rows safe for the unique index, while pollers
// keep writing. `paylock dedupe` is a thin shell around it.
//
// For each duplicated key, in a transaction that holds the key's advisory
// lock — the same lock payment.Repository.With takes, payment.Key.LockKey —
// it keeps the row with the lowest id and moves every other row into the
// quarantine table payment_duplicates: the row's columns, the whole row as
// jsonb (columns paylock doesn't know included), the id it was merged into
// and when. The lowest id is the row With has been reading and updating all
// along (it reads ORDER BY id LIMIT 1), so no update made through With is
// lost. Amounts are not summed: the moved rows stay in quarantine for a person
// or a script to reconcile.
//
// Keys are processed in batches, one transaction per batch taking the
// batch's locks with lock.AcquireAll (ascending order, so it can't deadlock
// with With, which holds one lock). Each batch commits on its own: a run
// stopped by Ctrl-C or a crash loses nothing and the next run carries on with
// the keys that still have duplicates. A key's move is idempotent: once
// merged it no longer shows up as duplicated.
//
// Then the unique index is built by schema.BuildUniqueIndex, the code
// payment.Migrate runs, under its advisory lock schema.MigrateKey, so a
// dedupe never races a Migrate or another dedupe: CREATE UNIQUE INDEX
// CONCURRENTLY, which doesn't block writers, after dropping an INVALID index
// left by an earlier failed build — but never one another session is still
// building, which it waits for. If old code that doesn't take the lock
// inserted a new duplicate in the meantime, the build fails; the package
// drops the invalid index, merges again and retries, then verifies the index
// is valid.
package dedupe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/english"
	"github.com/paylock/paylock/internal/schema"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// Table is the quarantine table.
const Table = "payment_duplicates"

// Schema creates the quarantine table.
const Schema = `
CREATE TABLE IF NOT EXISTS payment_duplicates (
    id           bigint      PRIMARY KEY, -- the row's id in payments
    service_id   bigint      NOT NULL,
    line_item_id text        NOT NULL,
    amount_cents bigint      NOT NULL,
    currency     text        NOT NULL,
    status       text        NOT NULL,
    data         jsonb,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    original     jsonb       NOT NULL, -- the whole row as it was, every column included
    merged_into  bigint      NOT NULL, -- the id of the row kept for the key
    moved_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_duplicates_key ON payment_duplicates (service_id, line_item_id);`

// Options tune Run and Merge. The zero value is ready to use.
type Options struct {
	// Batch is the number of keys merged per transaction; 0 means 100.
	Batch int
	// LockTimeout bounds the wait for a batch's locks; 0 means 30s. A batch
	// that times out fails Run (nothing of it is written).
	LockTimeout time.Duration
	// MaxPasses bounds how often Merge lists the duplicates again because
	// writers that don't take the lock added some; 0 means 5.
	MaxPasses int
	// Progress, when set, is called after each batch from the calling
	// goroutine.
	Progress func(Progress)
}

func (o Options) withDefaults() Options {
	if o.Batch <= 0 {
		o.Batch = 100
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = 30 * time.Second
	}
	if o.MaxPasses <= 0 {
		o.MaxPasses = 5
	}
	return o
}

// Progress is where a merge stands.
type Progress struct {
	Pass      int // 1 for the first listing of the duplicates
	KeysDone  int // keys merged in this pass
	KeysTotal int // duplicated keys listed in this pass
	RowsMoved int64
	Batches   int
	Elapsed   time.Duration
}

// Result is what Run did.
type Result struct {
	Keys      int   // keys merged
	RowsMoved int64 // rows moved into payment_duplicates
	Batches   int
	Passes    int // listings of the duplicates that found some
	Index     IndexResult
	Elapsed   time.Duration
}

// IndexResult is what EnsureIndex did.
type IndexResult struct {
	AlreadyValid    bool // nothing to do
	DroppedInvalid  int  // INVALID indexes dropped (from earlier failed builds, or this run's)
	Builds          int  // CREATE UNIQUE INDEX CONCURRENTLY statements that ran
	Valid           bool // verified in pg_index
	BuildDuration   time.Duration
	DuplicateErrors int // builds that failed on a duplicate inserted meanwhile
}

// ErrDistributed: payments is distributed by Citus and holds duplicates.
// Merging them there is not supported: the batch's locks would serialize
// only the callers on the coordinator, and the quarantine table would be
// local to it. Merge them before distributing the table, on a single
// server; a table Migrate distributes has the unique index from its
// creation and can't get duplicates.
var ErrDistributed = errors.New("dedupe: payments is distributed by Citus and holds duplicates: dedupe merges only on a single server; merge them there before distributing (docs/SCALING.md)")

// ErrStillDuplicated: writers that don't take the lock kept adding
// duplicates faster than Run merged them, pass after pass.
var ErrStillDuplicated = errors.New("dedupe: duplicates keep appearing; are writers running that don't use paylock?")

// Run merges every duplicate (Merge), then builds the unique index
// (EnsureIndex); if the build fails because a duplicate appeared meanwhile, it
// merges again and retries, up to Options.MaxPasses times. It blocks until
// done or ctx is done; everything committed before ctx ended stays committed
// and a later Run continues from there.
func Run(ctx context.Context, pool *pgxpool.Pool, o Options) (Result, error) {
	o = o.withDefaults()
	start := time.Now()
	var res Result
	for attempt := 1; ; attempt++ {
		m, err := Merge(ctx, pool, o)
		res.Keys += m.Keys
		res.RowsMoved += m.RowsMoved
		res.Batches += m.Batches
		res.Passes += m.Passes
		if err != nil {
			res.Elapsed = time.Since(start)
			return res, err
		}
		ir, err := EnsureIndex(ctx, pool)
		res.Index.AlreadyValid = ir.AlreadyValid
		res.Index.DroppedInvalid += ir.DroppedInvalid
		res.Index.Builds += ir.Builds
		res.Index.Valid = ir.Valid
		res.Index.BuildDuration += ir.BuildDuration
		res.Index.DuplicateErrors += ir.DuplicateErrors
		res.Elapsed = time.Since(start)
		if errors.Is(err, errNewDuplicate) && attempt < o.MaxPasses {
			continue
		}
		if errors.Is(err, errNewDuplicate) {
			return res, ErrStillDuplicated
		}
		return res, err
	}
}

// EnsureTable creates the quarantine table if it is missing.
func EnsureTable(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("dedupe: create %s: %w", Table, err)
	}
	return nil
}

// Merge moves every duplicate row into payment_duplicates, batch by batch,
// keeping the lowest id of each key, and lists the duplicates again until a
// listing finds none (or Options.MaxPasses listings found some: then it
// returns ErrStillDuplicated). It creates the quarantine table if needed.
func Merge(ctx context.Context, pool *pgxpool.Pool, o Options) (Result, error) {
	o = o.withDefaults()
	var res Result
	start := time.Now()
	if distributed, err := refuseDistributed(ctx, pool); err != nil || distributed {
		// A distributed table without duplicates: nothing to merge, and
		// no local quarantine table to make beside it, nor a later listing
		// whose merge would lock on the coordinator alone.
		res.Elapsed = time.Since(start)
		return res, err
	}
	if err := EnsureTable(ctx, pool); err != nil {
		return res, err
	}
	for pass := 1; ; pass++ {
		keys, err := duplicatedKeys(ctx, pool)
		if err != nil {
			return res, err
		}
		if len(keys) == 0 {
			res.Elapsed = time.Since(start)
			return res, nil
		}
		if pass > o.MaxPasses {
			return res, ErrStillDuplicated
		}
		res.Passes++
		done := 0
		for len(keys) > 0 {
			batch := keys[:min(o.Batch, len(keys))]
			keys = keys[len(batch):]
			moved, err := mergeBatch(ctx, pool, batch, o.LockTimeout)
			if err != nil {
				return res, err
			}
			done += len(batch)
			res.Keys += len(batch)
			res.RowsMoved += moved
			res.Batches++
			if o.Progress != nil {
				o.Progress(Progress{Pass: pass, KeysDone: done, KeysTotal: done + len(keys),
					RowsMoved: res.RowsMoved, Batches: res.Batches, Elapsed: time.Since(start)})
			}
		}
	}
}

// duplicatedKeys lists the keys with more than one row.
func duplicatedKeys(ctx context.Context, pool *pgxpool.Pool) ([]payment.Key, error) {
	rows, err := pool.Query(ctx, `SELECT service_id, line_item_id FROM payments
		GROUP BY service_id, line_item_id HAVING count(*) > 1 ORDER BY service_id, line_item_id`)
	if err != nil {
		return nil, fmt.Errorf("dedupe: list duplicates: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (payment.Key, error) {
		var k payment.Key
		err := r.Scan(&k.ServiceID, &k.LineItemID)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("dedupe: list duplicates: %w", err)
	}
	return keys, nil
}

// sqlMove keeps the lowest id of each key in $1/$2 and moves the other rows
// into the quarantine table, in one statement. It runs after the keys' locks
// are granted, so its snapshot sees every With that held them before.
const sqlMove = `
WITH k AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS k(service_id, line_item_id)),
keep AS (
    SELECT p.service_id, p.line_item_id, min(p.id) AS id
    FROM payments p JOIN k ON p.service_id = k.service_id AND p.line_item_id = k.line_item_id
    GROUP BY p.service_id, p.line_item_id),
moved AS (
    DELETE FROM payments p USING keep
    WHERE p.service_id = keep.service_id AND p.line_item_id = keep.line_item_id AND p.id <> keep.id
    RETURNING p.id, p.service_id, p.line_item_id, p.amount_cents, p.currency, p.status, p.data,
              p.created_at, p.updated_at, to_jsonb(p) AS original, keep.id AS merged_into)
INSERT INTO payment_duplicates
    (id, service_id, line_item_id, amount_cents, currency, status, data, created_at, updated_at, original, merged_into)
SELECT * FROM moved`

// lockTimeoutSetting is lock_timeout's value, in milliseconds, for a wait
// of d: rounded up, so that a positive d below a millisecond is 1, never 0,
// which PostgreSQL reads as no limit at all.
func lockTimeoutSetting(d time.Duration) string {
	return fmt.Sprint(int64(max(1, (d+time.Millisecond-1)/time.Millisecond)))
}

// mergeBatch merges keys in one transaction holding all their locks.
func mergeBatch(ctx context.Context, pool *pgxpool.Pool, keys []payment.Key, lockTimeout time.Duration) (int64, error) {
	lks := make([]lock.Key, len(keys))
	sids := make([]int64, len(keys))
	lids := make([]string, len(keys))
	for i, k := range keys {
		lks[i], sids[i], lids[i] = k.LockKey(), k.ServiceID, k.LineItemID
	}
	var moved int64
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", lockTimeoutSetting(lockTimeout)); err != nil {
			return err
		}
		if err := lock.AcquireAll(ctx, tx, lks...); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, sqlMove, sids, lids)
		moved = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("dedupe: merge %s from %s: %w", english.Count(len(keys), "key", "keys"), keys[0], err)
	}
	return moved, nil
}

// errNewDuplicate: the index build met a duplicate inserted after the merge.
var errNewDuplicate = errors.New("dedupe: a duplicate appeared during the index build")

// IndexState reports whether payment.UniqueIndex exists on payments and is
// valid (usable and enforcing), by schema.UniqueIndexState.
func IndexState(ctx context.Context, pool *pgxpool.Pool) (exists, valid bool, err error) {
	st, err := schema.UniqueIndexState(ctx, pool)
	if err != nil {
		return false, false, fmt.Errorf("dedupe: %w", err)
	}
	return st.Exists, st.Valid, nil
}

// EnsureIndex builds payment.UniqueIndex with schema.BuildUniqueIndex, the
// mechanism payment.Migrate uses, under its advisory lock schema.MigrateKey:
// it runs one at a time with Migrate and other dedupe runs, waits for a build
// another session still runs rather than drop it, drops an INVALID index
// left by a failed build, builds with CREATE UNIQUE INDEX CONCURRENTLY and
// verifies the result. If a duplicate appeared since the merge (before the
// build or during it, which leaves an INVALID index that is dropped), it
// returns an error that makes Run merge again. It must not run inside a
// transaction.
func EnsureIndex(ctx context.Context, pool *pgxpool.Pool) (IndexResult, error) {
	b, err := schema.BuildUniqueIndex(ctx, pool)
	r := IndexResult{
		AlreadyValid:    b.AlreadyValid,
		DroppedInvalid:  b.DroppedInvalid,
		Builds:          b.Builds,
		Valid:           err == nil,
		BuildDuration:   b.BuildDuration,
		DuplicateErrors: b.DuplicateErrors,
	}
	var pgErr *pgconn.PgError
	if errors.Is(err, payment.ErrDuplicates) || errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		return r, fmt.Errorf("%w: %w", errNewDuplicate, err)
	}
	if err != nil {
		return r, fmt.Errorf("dedupe: %w", err)
	}
	return r, nil
}

// refuseDistributed returns an error matching payment.ErrCitusWorker on a
// Citus worker, and ErrDistributed on a coordinator whose distributed
// payments table holds duplicates; otherwise whether payments is
// distributed: on a distributed table without duplicates Run merges
// nothing and goes on to check or build the unique index, which works
// there as on a single server.
func refuseDistributed(ctx context.Context, pool *pgxpool.Pool) (distributed bool, err error) {
	node, coordinator, err := schema.DetectNode(ctx, pool)
	switch {
	case err != nil:
		return false, fmt.Errorf("dedupe: %w", err)
	case node == schema.CitusWorker:
		return false, fmt.Errorf("dedupe: %w: the coordinator is %s", payment.ErrCitusWorker, coordinator)
	case node == schema.Plain:
		return false, nil
	}
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = to_regclass('payments'))").Scan(&distributed); err != nil {
		return false, fmt.Errorf("dedupe: %w", err)
	}
	if !distributed {
		return false, nil
	}
	keys, err := duplicatedKeys(ctx, pool)
	if err != nil {
		return true, err
	}
	if len(keys) > 0 {
		return true, fmt.Errorf("%w: %s %s duplicates", ErrDistributed, english.Count(len(keys), "key", "keys"), english.Has(len(keys)))
	}
	return true, nil
}
