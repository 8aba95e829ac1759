package payment

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// Repository finds, creates and updates payments, one caller per payment at a
// time. It is built on [entity.Repository]. It is safe for concurrent use.
type Repository struct {
	pool *pgxpool.Pool
	r    *entity.Repository[Key, Payment]
}

// NewRepository returns a Repository on pool, configured by the options of
// package entity ([entity.WithLockOptions], [entity.WithHooks],
// [entity.WithStrategy], [entity.WithGroupCommit]: Table implements
// [entity.Cloner]). Run [Migrate] once first. Make one Repository per
// pool and share it: its per-key queue works among the calls of one
// Repository.
func NewRepository(pool *pgxpool.Pool, opts ...entity.Option) *Repository {
	return &Repository{pool: pool, r: entity.New(pool, Table{}, opts...)}
}

// NewDistributedRepository is NewRepository for a payments table that Citus
// distributes ([Distributed] reports true), on the coordinator or on a
// worker: its Table has Distributed set, which halves With's time or
// better there. On a worker pass entity.WithStrategy(entity.RowLock), as
// [entity.CheckEngine] says.
func NewDistributedRepository(pool *pgxpool.Pool, opts ...entity.Option) *Repository {
	return &Repository{pool: pool, r: entity.New(pool, Table{Distributed: true}, opts...)}
}

// With runs fn on the payment for key, creating it if it does not exist,
// while no other With call for the same key — in this process or any other —
// runs, and saves what fn changed. It is [entity.Repository.With] on [Table],
// with that contract (package entity's doc: what fn may do with tx, errors,
// panics, waits, ctx, round trips, retries); what differs:
//
//   - p.IsNew reports whether this call created the payment.
//   - fn may change AmountCents, Currency, Status and Data; With saves them if
//     they changed. Changing the payment's identity (ID, ServiceID,
//     LineItemID, CreatedAt) fails with [ErrKeyChanged], a value the table
//     can't store with [ErrInvalidPayment]; either way nothing is written.
//   - An invalid key fails with [ErrInvalidKey] before any SQL runs, a
//     service_id with no services row with [ErrUnknownService].
//   - The lock's errors are lock's ([lock.ErrLockTimeout],
//     [lock.ErrCommitUnknown], ...), [entity.ErrTxAborted] entity's.
func (r *Repository) With(ctx context.Context, key Key, fn func(ctx context.Context, tx pgx.Tx, p *Payment) error) error {
	return r.r.With(ctx, key, fn)
}

// Get reads the payment for key without taking its lock: it sees the last
// committed state and never waits. It returns ErrNotFound if there is none.
func (r *Repository) Get(ctx context.Context, key Key) (*Payment, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	p, err := Table{}.Scan(r.pool.QueryRow(ctx, "SELECT "+columns+
		" FROM payments WHERE service_id = $1 AND line_item_id = $2 ORDER BY id LIMIT 1", key.ServiceID, key.LineItemID), false)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("payment: get %s: %w", key, err)
	}
	return p, nil
}

// Table is the payments table as an [entity.Table]. Repository uses it; it is
// exported for callers that build their own [entity.Repository] (to embed
// payments in a larger unit, say).
type Table struct {
	// Distributed: payments is a table Citus distributes, as Migrate makes
	// it on a coordinator ([Distributed] tells). Ensure then inserts with
	// INSERT ... VALUES ... ON CONFLICT DO NOTHING, which Citus sends
	// straight to the key's shard, instead of the INSERT ... SELECT ... WHERE
	// NOT EXISTS it plans through the coordinator (With then takes about
	// twice as long: BenchmarkCitus, table=plain against
	// table=distributed). It relies on the unique index alone to find an
	// existing row, which such a table has (but while Migrate rebuilds an
	// index left invalid: docs/SCALING.md); on a table without that index
	// (one still to deduplicate) every call would insert a row: leave it
	// false there.
	Distributed bool
}

const (
	columns = "id, service_id, line_item_id, amount_cents, currency, status, data, created_at, updated_at"

	// sqlEnsure creates the row if it is missing. NOT EXISTS skips the insert
	// (and its sequence value) for a row we can see; ON CONFLICT DO NOTHING
	// covers a row inserted concurrently by a writer that doesn't take the
	// lock (old code during a rollout): it waits for that writer, then does
	// nothing, so a unique violation never aborts the transaction.
	sqlEnsure = `INSERT INTO payments (service_id, line_item_id)
SELECT $1::bigint, $2::text WHERE NOT EXISTS (SELECT FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text)
ON CONFLICT DO NOTHING`

	// sqlEnsureDistributed is sqlEnsure for Table.Distributed: the unique
	// index alone finds an existing row (and a sequence value is drawn
	// each time).
	sqlEnsureDistributed = `INSERT INTO payments (service_id, line_item_id) VALUES ($1::bigint, $2::text) ON CONFLICT DO NOTHING`

	// sqlFind reads the row in a statement of its own, so with a snapshot
	// taken after the lock was granted and after sqlEnsure: it sees the
	// previous holder's commit, our own insert, or the concurrent writer's
	// row. The row lock keeps writers that don't take the advisory lock from
	// updating or deleting it under us. ORDER BY id: on a table not yet
	// deduplicated, the lowest id, the one `paylock dedupe` keeps.
	sqlFind = "SELECT " + columns + ` FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text
ORDER BY id LIMIT 1 FOR NO KEY UPDATE`

	// sqlRead is sqlFind without the row lock, for the reads group commit
	// makes inside a transaction that holds the row locked already.
	sqlRead = "SELECT " + columns + ` FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text
ORDER BY id LIMIT 1`

	// sqlUpdate names the row by its distribution column as well as its
	// id: on Citus, where payments is distributed by service_id, an update
	// by id alone goes to every shard (about 30 times the cost of the
	// whole of With's SQL, BenchmarkCitus); on one server the primary key
	// finds it as before.
	sqlUpdate = `UPDATE payments SET amount_cents = $2::bigint, currency = $3::text, status = $4::text, data = $5::jsonb,
updated_at = now() WHERE service_id = $6::bigint AND id = $1::bigint`
)

// LockKey validates k and returns its lock key.
func (Table) LockKey(k Key) (lock.Key, error) {
	if err := k.Validate(); err != nil {
		return lock.Key{}, err
	}
	return k.LockKey(), nil
}

// Ensure inserts k's row if it is missing.
func (t Table) Ensure(k Key) (string, []any) {
	if t.Distributed {
		return sqlEnsureDistributed, []any{k.ServiceID, k.LineItemID}
	}
	return sqlEnsure, []any{k.ServiceID, k.LineItemID}
}

// Find reads k's row, locked.
func (Table) Find(k Key) (string, []any) { return sqlFind, []any{k.ServiceID, k.LineItemID} }

// Read reads k's row without locking it (entity.Reader).
func (Table) Read(k Key) (string, []any) { return sqlRead, []any{k.ServiceID, k.LineItemID} }

// Scan reads a row of columns.
func (Table) Scan(row pgx.Row, created bool) (*Payment, error) {
	p := &Payment{created: created}
	err := row.Scan(&p.ID, &p.ServiceID, &p.LineItemID, &p.AmountCents, &p.Currency, &p.Status, &p.Data,
		&p.CreatedAt, &p.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Clone returns a copy of p that shares nothing with it, for
// entity.WithGroupCommit.
func (Table) Clone(p *Payment, created bool) *Payment {
	c := *p
	c.Data = bytes.Clone(p.Data)
	c.created = created
	return &c
}

// Save returns the update of what fn changed, or "" if nothing changed. It
// refuses a changed identity (ErrKeyChanged) and values the table can't
// store (ErrInvalidPayment).
func (Table) Save(before, after *Payment) (string, []any, error) {
	if err := after.validate(before); err != nil {
		return "", nil, err
	}
	if !after.changed(before) {
		return "", nil, nil
	}
	return sqlUpdate, []any{after.ID, after.AmountCents, after.Currency, after.Status, after.Data, after.ServiceID}, nil
}

// ClassifyError adds ErrUnknownService to a foreign-key violation on
// service_id.
func (Table) ClassifyError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" && serviceKeyViolated(pgErr) {
		return fmt.Errorf("%w: %w", ErrUnknownService, err)
	}
	return err
}

// serviceKey is the name of payments' foreign key on service_id.
const serviceKey = "payments_service_id_fkey"

// serviceKeyViolated reports whether e, a foreign-key violation, is
// serviceKey's. One server names the constraint; a Citus worker names its
// shard's copy, serviceKey + "_<shard id>"; a Citus coordinator relays a
// worker's error without the constraint name, whose message names it then
// (an identifier, untranslated whatever the worker's lc_messages).
func serviceKeyViolated(e *pgconn.PgError) bool {
	name := e.ConstraintName
	if name == "" {
		i := strings.Index(e.Message, serviceKey)
		if i < 0 {
			return false
		}
		end := i + strings.IndexFunc(e.Message[i:]+" ", func(r rune) bool {
			return r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r)
		})
		name = e.Message[i:end]
	}
	shard, ok := strings.CutPrefix(name, serviceKey+"_")
	if !ok {
		return name == serviceKey
	}
	_, err := strconv.ParseUint(shard, 10, 64)
	return err == nil
}
