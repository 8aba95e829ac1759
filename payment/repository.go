package payment

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// Repository finds, creates and updates payments, one caller per payment at a
// time. It is built on entity.Repository. It is safe for concurrent use.
type Repository struct {
	pool *pgxpool.Pool
	r    *entity.Repository[Key, Payment]
}

// Option configures a Repository: WithLockOptions here, or any
// entity.Option (entity.WithHooks, entity.WithStrategy).
type Option = entity.Option

// WithLockOptions bounds how long With waits for and holds a payment's lock;
// see lock.Options for the fields and their defaults.
func WithLockOptions(o lock.Options) Option { return entity.WithLockOptions(o) }

// NewRepository returns a Repository on pool. Run Migrate once first. Make
// one Repository per pool and share it: its per-key queue works among the
// calls of one Repository.
func NewRepository(pool *pgxpool.Pool, opts ...Option) *Repository {
	return &Repository{pool: pool, r: entity.New(pool, Table{}, opts...)}
}

// With runs fn on the payment for key, creating it if it does not exist,
// while no other With call for the same key — in this process or any other —
// runs. fn gets the row as the previous caller committed it; p.IsNew reports
// whether this call created it. fn may change AmountCents, Currency, Status
// and Data; With saves them if they changed and commits. fn may use tx for
// its own statements (a ledger row, say), which commit or roll back with the
// payment.
//
// If fn returns an error, With rolls back and returns that error unchanged;
// if fn panics, With rolls back and panics again. Either way nothing is
// written and the lock is released. fn must not change the payment's identity
// (ErrKeyChanged), must not commit or roll back tx (lock.ErrManaged) nor end
// the transaction in SQL (ErrTxEnded), and must close the results it reads
// (ErrRowsOpen). tx and its savepoints fail with pgx.ErrTxClosed once fn has
// returned; see [entity.Repository.With] for the details, and for a nested
// With on another ctx than fn's.
//
// With blocks until the lock is granted. Calls of one Repository for the
// same payment first wait their turn in process, in arrival order and
// without a pool connection, so that one hot payment holds at most two of
// the pool's connections (see WithoutKeyQueue). ctx governs both waits, fn
// (it is passed on) and the commit: once ctx is done nothing more is committed and
// the error matches ctx.Err(). A With for the same key from inside fn, given
// fn's ctx, fails with ErrReentrant instead of waiting for itself forever.
//
// With runs the transaction at READ COMMITTED whatever the server's default
// and makes two round trips to PostgreSQL: BEGIN, the lock, the insert if
// missing and the read go together; the update, if any, goes with COMMIT.
//
// When the connection fails after COMMIT was sent, the outcome is unknown and
// the error matches ErrCommitUnknown; it is never retried. The Retry in
// WithLockOptions may run the whole call, fn included, again after a failure
// that left nothing committed; see lock.Retry.
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

// Table is the payments table as an entity.Table. Repository uses it; it is
// exported for callers that build their own entity.Repository (to pick a
// strategy or hooks, or to embed payments in a larger unit).
type Table struct{}

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

	// sqlFind reads the row in a statement of its own, so with a snapshot
	// taken after the lock was granted and after sqlEnsure: it sees the
	// previous holder's commit, our own insert, or the concurrent writer's
	// row. The row lock keeps writers that don't take the advisory lock from
	// updating or deleting it under us. ORDER BY id: on a table not yet
	// deduplicated, the lowest id, the one `paylock dedupe` keeps.
	sqlFind = "SELECT " + columns + ` FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text
ORDER BY id LIMIT 1 FOR NO KEY UPDATE`

	sqlUpdate = `UPDATE payments SET amount_cents = $2::bigint, currency = $3::text, status = $4::text, data = $5::jsonb,
updated_at = now() WHERE id = $1::bigint`
)

// LockKey validates k and returns its lock key.
func (Table) LockKey(k Key) (lock.Key, error) {
	if err := k.Validate(); err != nil {
		return lock.Key{}, err
	}
	return k.LockKey(), nil
}

// Ensure inserts k's row if it is missing.
func (Table) Ensure(k Key) (string, []any) { return sqlEnsure, []any{k.ServiceID, k.LineItemID} }

// Find reads k's row, locked.
func (Table) Find(k Key) (string, []any) { return sqlFind, []any{k.ServiceID, k.LineItemID} }

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
	return sqlUpdate, []any{after.ID, after.AmountCents, after.Currency, after.Status, after.Data}, nil
}

// ClassifyError adds ErrUnknownService to a foreign-key violation on
// service_id.
func (Table) ClassifyError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" && pgErr.ConstraintName == "payments_service_id_fkey" {
		return fmt.Errorf("%w: %w", ErrUnknownService, err)
	}
	return err
}
