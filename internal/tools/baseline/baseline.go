// Package baseline is the code paylock replaces, shared by the demo, the
// benchmarks and the tests that prove the race is real:
//
//   - Naive: find the payment, insert it if missing, then write it back, with
//     no lock and no transaction, on Table, a copy of payments without the
//     unique index. Concurrent callers on one key make duplicate rows and
//     lose updates.
//   - RowLock: what a Go developer would write with pgx and the unique index
//     alone: INSERT ... ON CONFLICT DO NOTHING, SELECT ... FOR UPDATE,
//     UPDATE, one statement per round trip, in one transaction. Correct, and
//     the figure paylock is measured against.
package baseline

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/payment"
)

// Table is the naive code's table: payments without its unique index (and
// without the foreign key), as in production before paylock.
const Table = "naive_payments"

// DB is what Naive and CreateTable need: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// TxBeginner is what RowLock needs: a pool or a connection.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// CreateTable creates Table, if missing, in the first schema of the search
// path, like payments (which payment.Migrate creates first) with its
// defaults, identity and check constraints but no index.
func CreateTable(ctx context.Context, db DB) error {
	_, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+Table+
		` (LIKE payments INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS)`)
	return err
}

// Row is a payment row as a baseline reads it and hands it to fn; fn's
// changes to AmountCents, Currency, Status and Data are written back.
type Row struct {
	ID          int64
	Created     bool // this call inserted the row
	AmountCents int64
	Currency    string
	Status      string
	Data        []byte // nil is SQL NULL
}

// Naive finds key's payment in Table (the lowest id, if there are
// several), inserts it if missing, hands it to fn and, if fn returns true,
// writes fn's changes back, with no lock and no transaction. It returns
// the row as fn left it.
func Naive(ctx context.Context, db DB, key payment.Key, fn func(r *Row) (write bool, err error)) (Row, error) {
	var r Row
	err := db.QueryRow(ctx, `SELECT id, amount_cents, currency, status, data FROM `+Table+`
		WHERE service_id = $1 AND line_item_id = $2 ORDER BY id LIMIT 1`, key.ServiceID, key.LineItemID).
		Scan(&r.ID, &r.AmountCents, &r.Currency, &r.Status, &r.Data)
	if errors.Is(err, pgx.ErrNoRows) {
		r.Created = true
		err = db.QueryRow(ctx, `INSERT INTO `+Table+` (service_id, line_item_id) VALUES ($1, $2)
			RETURNING id, amount_cents, currency, status, data`, key.ServiceID, key.LineItemID).
			Scan(&r.ID, &r.AmountCents, &r.Currency, &r.Status, &r.Data)
	}
	if err != nil {
		return r, err
	}
	write, err := fn(&r)
	if err != nil || !write {
		return r, err
	}
	_, err = db.Exec(ctx, `UPDATE `+Table+` SET amount_cents = $2, currency = $3, status = $4, data = $5,
		updated_at = now() WHERE id = $1`, r.ID, r.AmountCents, r.Currency, r.Status, r.Data)
	return r, err
}

// RowLock finds or creates key's payment in payments, locks its row, hands
// it to fn and writes fn's changes back, in one READ COMMITTED transaction
// that commits unless fn or a statement fails. It relies on the unique
// index for the find-or-create.
func RowLock(ctx context.Context, db TxBeginner, key payment.Key, fn func(r *Row) error) error {
	return pgx.BeginTxFunc(ctx, db, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO payments (service_id, line_item_id) VALUES ($1, $2)
			ON CONFLICT DO NOTHING`, key.ServiceID, key.LineItemID)
		if err != nil {
			return err
		}
		r := Row{Created: tag.RowsAffected() == 1}
		if err := tx.QueryRow(ctx, `SELECT id, amount_cents, currency, status, data FROM payments
			WHERE service_id = $1 AND line_item_id = $2 FOR UPDATE`, key.ServiceID, key.LineItemID).
			Scan(&r.ID, &r.AmountCents, &r.Currency, &r.Status, &r.Data); err != nil {
			return err
		}
		if err := fn(&r); err != nil {
			return err
		}
		// By service_id too, as With does: on Citus an update by id alone
		// goes to every shard.
		_, err = tx.Exec(ctx, `UPDATE payments SET amount_cents = $2, currency = $3, status = $4, data = $5,
			updated_at = now() WHERE service_id = $6 AND id = $1`, r.ID, r.AmountCents, r.Currency, r.Status, r.Data, key.ServiceID)
		return err
	})
}
