package payment

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/keyqueue"
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// Repository finds, creates and updates payments, one caller per payment at a
// time. It is safe for concurrent use.
type Repository struct {
	pool   *pgxpool.Pool
	setSQL string          // applies the lock.Options to each transaction
	queue  *keyqueue.Queue // callers of this Repository per key; nil: none
}

// Option configures a Repository.
type Option func(*Repository)

// WithLockOptions bounds how long With waits for and holds a payment's lock;
// see lock.Options for the fields and their defaults.
func WithLockOptions(o lock.Options) Option {
	return func(r *Repository) {
		r.setSQL = txn.NewSettings(o.LockTimeout, o.IdleTimeout, o.StatementTimeout).SetSQL()
	}
}

// NewRepository returns a Repository on pool. Run Migrate once first.
func NewRepository(pool *pgxpool.Pool, opts ...Option) *Repository {
	r := &Repository{pool: pool, queue: keyqueue.New(connsPerKey)}
	WithLockOptions(lock.Options{})(r)
	for _, o := range opts {
		o(r)
	}
	return r
}

// The statements of With. Each goes out as an unnamed statement with typed
// parameters: nothing is prepared per connection, nothing fills pgx's
// statement cache (the lock statement's comment differs per key), and it all
// works behind a transaction-mode pooler.
const (
	columns = "id, service_id, line_item_id, amount_cents, currency, status, data, created_at, updated_at"

	// sqlEnsure creates the row if it is missing. NOT EXISTS skips the insert
	// (and its sequence value) for a row we can see; ON CONFLICT DO NOTHING
	// covers a row inserted concurrently by a writer that doesn't take the
	// lock (old code during a rollout): it waits for that writer, then does
	// nothing, so a unique violation never aborts the transaction.
	sqlEnsure = `INSERT INTO payments (service_id, line_item_id)
SELECT $1, $2 WHERE NOT EXISTS (SELECT FROM payments WHERE service_id = $1 AND line_item_id = $2)
ON CONFLICT DO NOTHING`

	// sqlFind reads the row, in a new statement so with a snapshot taken
	// after the lock was granted and after sqlEnsure: it sees the previous
	// holder's commit, our own insert, or the concurrent writer's row. The
	// row lock keeps writers that don't take the advisory lock from updating
	// or deleting it under us. ORDER BY id: on a table not yet deduplicated,
	// the lowest id, the one `paylock dedupe` keeps.
	sqlFind = "SELECT " + columns + ` FROM payments WHERE service_id = $1 AND line_item_id = $2
ORDER BY id LIMIT 1 FOR NO KEY UPDATE`

	sqlUpdate = `UPDATE payments SET amount_cents = $2, currency = $3, status = $4, data = $5, updated_at = now()
WHERE id = $1`
)

var (
	keyOIDs    = []uint32{pgtype.Int8OID, pgtype.TextOID}
	keyFormats = []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode}
	binary1    = []int16{pgtype.BinaryFormatCode}
	updateOIDs = []uint32{pgtype.Int8OID, pgtype.Int8OID, pgtype.TextOID, pgtype.TextOID, pgtype.JSONBOID}
	updateFmts = []int16{pgtype.BinaryFormatCode, pgtype.BinaryFormatCode, pgtype.TextFormatCode, pgtype.TextFormatCode, pgtype.TextFormatCode}
)

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
// (ErrKeyChanged), must not commit or roll back tx (lock.ErrManaged) and must
// not keep tx after it returns.
//
// With blocks until the lock is granted. Calls of one Repository for the
// same key first wait their turn in process, in arrival order and without a
// pool connection, so that one key holds at most two of the pool's
// connections (see WithoutKeyQueue). ctx governs the wait in that queue,
// the lock wait, fn (it is passed on) and the commit: once ctx is done
// nothing more is committed and the error matches ctx.Err(). A With for the same key from inside fn, given
// fn's ctx, fails with ErrReentrant instead of waiting for itself forever.
//
// With runs the transaction at READ COMMITTED whatever the server's default
// and makes two round trips to PostgreSQL: BEGIN, the lock, the insert if
// missing and the read go together; the update, if any, goes with COMMIT.
func (r *Repository) With(ctx context.Context, key Key, fn func(ctx context.Context, tx pgx.Tx, p *Payment) error) (err error) {
	if fn == nil {
		return errors.New("payment: With called with a nil fn")
	}
	if err := key.Validate(); err != nil {
		return err
	}
	lk := key.LockKey()
	if txn.Held(ctx, lk.ID()) {
		return fmt.Errorf("payment: with %s: %w", key, ErrReentrant)
	}
	release, err := r.queue.Acquire(ctx, lk.ID())
	if err != nil {
		return fmt.Errorf("payment: with %s: wait in queue: %w", key, txn.Classify(ctx, err))
	}
	defer release() // after conn.Release: the next in line may take its place
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("payment: with %s: acquire connection: %w", key, txn.Classify(ctx, err))
	}
	defer conn.Release() // a connection left in a transaction is destroyed, not reused
	pc := conn.Conn().PgConn()
	defer func() {
		if pc.TxStatus() != 'I' { // failed, or fn panicked
			rollback(ctx, pc)
		}
	}()

	p, err := r.lockAndLoad(ctx, pc, key, lk)
	if err != nil {
		return fmt.Errorf("payment: with %s: %w", key, err)
	}
	before := *p
	before.Data = bytes.Clone(p.Data)
	tx := txn.NewManaged(conn.Conn(), nil)
	defer tx.Close()
	if err := fn(txn.WithHeld(ctx, lk.ID()), tx, p); err != nil {
		return err
	}
	tx.Close()
	if pc.TxStatus() != 'T' {
		return fmt.Errorf("payment: with %s: %w", key, ErrTxAborted)
	}
	if err := p.validate(&before); err != nil {
		return err
	}
	if err := r.save(ctx, pc, p, p.changed(&before)); err != nil {
		return fmt.Errorf("payment: with %s: %w", key, err)
	}
	return nil
}

// lockAndLoad sends BEGIN, the settings, the lock, the insert-if-missing and
// the read in one round trip, and returns the payment.
func (r *Repository) lockAndLoad(ctx context.Context, pc *pgconn.PgConn, key Key, lk lock.Key) (*Payment, error) {
	keyArgs := [][]byte{int8Bytes(key.ServiceID), []byte(key.LineItemID)}
	var b pgconn.Batch
	b.ExecParams(txn.SQLBegin, nil, nil, nil, nil)
	b.ExecParams(r.setSQL, nil, nil, nil, nil)
	b.ExecParams(txn.LockSQL("pg_advisory_xact_lock($1)", lk.String()), [][]byte{int8Bytes(lk.ID())},
		[]uint32{pgtype.Int8OID}, binary1, nil)
	b.ExecParams(sqlEnsure, keyArgs, keyOIDs, keyFormats, nil)
	b.ExecParams(sqlFind, keyArgs, keyOIDs, keyFormats, binary1)
	results, err := pc.ExecBatch(ctx, &b).ReadAll()
	if err != nil {
		return nil, classify(ctx, err)
	}
	if len(results) != 5 || len(results[4].Rows) != 1 {
		return nil, fmt.Errorf("payment: unexpected results (%d statements)", len(results))
	}
	p, err := decode(results[4].Rows[0])
	if err != nil {
		return nil, err
	}
	p.created = results[3].CommandTag.RowsAffected() == 1
	return p, nil
}

// save sends the update, if any, and COMMIT in one round trip.
func (r *Repository) save(ctx context.Context, pc *pgconn.PgConn, p *Payment, changed bool) error {
	var b pgconn.Batch
	if changed {
		var data []byte // nil: NULL
		if p.Data != nil {
			data = p.Data
		}
		b.ExecParams(sqlUpdate,
			[][]byte{int8Bytes(p.ID), int8Bytes(p.AmountCents), []byte(p.Currency), []byte(p.Status), data},
			updateOIDs, updateFmts, nil)
	}
	b.ExecParams("COMMIT", nil, nil, nil, nil)
	results, err := pc.ExecBatch(ctx, &b).ReadAll()
	if err != nil {
		return classify(ctx, err)
	}
	if changed && results[0].CommandTag.RowsAffected() != 1 {
		return fmt.Errorf("payment: update of id %d changed %d rows", p.ID, results[0].CommandTag.RowsAffected())
	}
	if tag := results[len(results)-1].CommandTag; tag.String() != "COMMIT" {
		return fmt.Errorf("payment: commit ended in %s", tag)
	}
	return nil
}

// Get reads the payment for key without taking its lock: it sees the last
// committed state and never waits. It returns ErrNotFound if there is none.
func (r *Repository) Get(ctx context.Context, key Key) (*Payment, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	var p *Payment
	err := r.pool.AcquireFunc(ctx, func(conn *pgxpool.Conn) error {
		res := conn.Conn().PgConn().ExecParams(ctx, "SELECT "+columns+
			" FROM payments WHERE service_id = $1 AND line_item_id = $2 ORDER BY id LIMIT 1",
			[][]byte{int8Bytes(key.ServiceID), []byte(key.LineItemID)}, keyOIDs, keyFormats, binary1).Read()
		if res.Err != nil {
			return classify(ctx, res.Err)
		}
		if len(res.Rows) == 0 {
			return ErrNotFound
		}
		var err error
		p, err = decode(res.Rows[0])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("payment: get %s: %w", key, err)
	}
	return p, nil
}

// classify adds ErrUnknownService for a foreign-key violation to the lock's
// and ctx's classification.
func classify(ctx context.Context, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" && pgErr.ConstraintName == "payments_service_id_fkey" {
		err = fmt.Errorf("%w: %w", ErrUnknownService, err)
	}
	return txn.Classify(ctx, err)
}

// rollback ends a failed transaction even when ctx is done; if that fails the
// connection is closed, so the pool destroys it.
func rollback(ctx context.Context, pc *pgconn.PgConn) {
	if pc.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		pc.Close(ctx)
	}
}

func int8Bytes(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// pgEpoch is PostgreSQL's timestamp zero, in Unix microseconds.
const pgEpoch = 946684800 * 1_000_000

// decode reads a row of columns in binary format.
func decode(v [][]byte) (*Payment, error) {
	if len(v) != 9 {
		return nil, fmt.Errorf("payment: decode: %d columns, want 9", len(v))
	}
	for i, c := range v {
		if c == nil && i != 6 {
			return nil, fmt.Errorf("payment: decode: column %d is NULL", i)
		}
	}
	for _, i := range []int{0, 1, 3, 7, 8} {
		if len(v[i]) != 8 {
			return nil, fmt.Errorf("payment: decode: column %d is %d bytes, want 8", i, len(v[i]))
		}
	}
	p := &Payment{
		ID:          int64(binary.BigEndian.Uint64(v[0])),
		ServiceID:   int64(binary.BigEndian.Uint64(v[1])),
		LineItemID:  string(v[2]),
		AmountCents: int64(binary.BigEndian.Uint64(v[3])),
		Currency:    string(v[4]),
		Status:      string(v[5]),
		CreatedAt:   time.UnixMicro(int64(binary.BigEndian.Uint64(v[7])) + pgEpoch),
		UpdatedAt:   time.UnixMicro(int64(binary.BigEndian.Uint64(v[8])) + pgEpoch),
	}
	if v[6] != nil { // jsonb binary: a version byte, then the JSON text
		if len(v[6]) == 0 || v[6][0] != 1 {
			return nil, errors.New("payment: decode: unknown jsonb format")
		}
		p.Data = bytes.Clone(v[6][1:])
	}
	return p, nil
}
