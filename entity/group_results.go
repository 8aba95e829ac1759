package entity

import (
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The results of a member's statements that fn reads after the call that
// returned them: each read enters the member's tx, so none runs once fn
// returned (see memberTx.shut).

// pipelinedRow is the Row of a QueryRow sent by pipeline.
type pipelinedRow[K, V any] struct {
	t   *memberTx[K, V]
	br  pgx.BatchResults
	sql string
}

func (r *pipelinedRow[K, V]) Scan(dest ...any) error {
	if !r.t.enter() {
		return r.t.closedErr()
	}
	defer r.t.exit()
	if r.br == nil {
		return pgx.ErrNoRows // as pgx's Row scanned a second time
	}
	br := r.br
	r.br = nil
	r.t.untrack(r)
	err := br.QueryRow().Scan(dest...)
	preparedOn(r.t.g.conn).forget(r.sql, err)
	return r.t.after(br, err)
}

// memberRow is the Row of a QueryRow on its own: pgx's, as Rows, so that
// shut can close it if fn never scans it.
type memberRow[K, V any] struct {
	t    *memberTx[K, V]
	rows pgx.Rows
	done bool
}

func (r *memberRow[K, V]) Scan(dest ...any) error {
	if !r.t.enter() {
		return r.t.closedErr()
	}
	defer r.t.exit()
	if r.done {
		return pgx.ErrNoRows // as pgx's Row scanned a second time
	}
	r.done = true
	r.t.untrack(r)
	// What pgx's connRow.Scan does with its Rows.
	rows := r.rows
	defer rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// memberRows are the Rows of a member's Query: pgx's, read only while fn
// may use tx.
type memberRows[K, V any] struct {
	t    *memberTx[K, V]
	rows pgx.Rows
}

func (r *memberRows[K, V]) Close() {
	if !r.t.enter() {
		return
	}
	defer r.t.exit()
	r.rows.Close()
	r.t.untrack(r)
}

func (r *memberRows[K, V]) Err() error {
	if !r.t.enter() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return r.t.closedErr()
	}
	defer r.t.exit()
	return r.rows.Err()
}

func (r *memberRows[K, V]) CommandTag() pgconn.CommandTag { return r.rows.CommandTag() }

func (r *memberRows[K, V]) FieldDescriptions() []pgconn.FieldDescription {
	return r.rows.FieldDescriptions()
}

func (r *memberRows[K, V]) Next() bool {
	if !r.t.enter() {
		return false
	}
	defer r.t.exit()
	if r.rows.Next() {
		return true
	}
	r.t.untrack(r) // pgx closed them
	return false
}

func (r *memberRows[K, V]) Scan(dest ...any) error {
	if !r.t.enter() {
		return r.t.closedErr()
	}
	defer r.t.exit()
	return r.rows.Scan(dest...)
}

func (r *memberRows[K, V]) Values() ([]any, error) {
	if !r.t.enter() {
		return nil, r.t.closedErr()
	}
	defer r.t.exit()
	return r.rows.Values()
}

func (r *memberRows[K, V]) RawValues() [][]byte {
	if !r.t.enter() {
		return nil
	}
	defer r.t.exit()
	return r.rows.RawValues()
}

func (r *memberRows[K, V]) Conn() *pgx.Conn {
	if !r.t.enter() {
		return nil
	}
	defer r.t.exit()
	return r.rows.Conn()
}

func (r *memberRows[K, V]) TypeMap() *pgtype.Map { return r.rows.TypeMap() }

// memberBatch is the BatchResults of a member's SendBatch, read only while
// fn may use tx.
type memberBatch[K, V any] struct {
	t  *memberTx[K, V]
	br pgx.BatchResults
}

func (b *memberBatch[K, V]) Exec() (pgconn.CommandTag, error) {
	if !b.t.enter() {
		return pgconn.CommandTag{}, b.t.closedErr()
	}
	defer b.t.exit()
	return b.br.Exec()
}

func (b *memberBatch[K, V]) Query() (pgx.Rows, error) {
	if !b.t.enter() {
		return nil, b.t.closedErr()
	}
	defer b.t.exit()
	rows, err := b.br.Query()
	if err != nil {
		return rows, err
	}
	return &memberRows[K, V]{t: b.t, rows: rows}, nil // closed with the batch
}

func (b *memberBatch[K, V]) QueryRow() pgx.Row {
	if !b.t.enter() {
		return errRow{b.t.closedErr()}
	}
	defer b.t.exit()
	return b.br.QueryRow()
}

func (b *memberBatch[K, V]) Close() error {
	if !b.t.enter() {
		return b.t.closedErr()
	}
	defer b.t.exit()
	b.t.untrack(b)
	return b.br.Close()
}

// Tx returns the transaction the batch began, if any.
func (b *memberBatch[K, V]) Tx() pgx.Tx { return b.br.Tx() }

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
