package payment

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/lock"
)

// Schema is the SQL that creates the services and payments tables; Migrate
// applies it and then the unique index named UniqueIndex.
//
//go:embed schema.sql
var Schema string

// UniqueIndex is the name of the UNIQUE index on payments (service_id,
// line_item_id): the safety net under the advisory lock.
const UniqueIndex = "payments_service_id_line_item_id_key"

// MigrateKey is the lock Migrate holds, so concurrent Migrate calls run one
// after another.
var MigrateKey = lock.NewKey("paylock.migrate")

// Migrate creates the schema if it is missing; it is safe to run again and
// from several processes at once. On a payments table that already holds
// duplicates it creates nothing and returns a *DuplicatesError (matching
// ErrDuplicates) that names them: run `paylock dedupe` first. An INVALID
// unique index left by an interrupted CREATE INDEX CONCURRENTLY is rebuilt.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	err := lock.Run(ctx, pool, MigrateKey, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, Schema); err != nil {
			return fmt.Errorf("payment: migrate: %w", err)
		}
		valid, exists, err := indexState(ctx, tx)
		if err != nil {
			return err
		}
		if exists && valid {
			return nil
		}
		if dup, err := FindDuplicates(ctx, tx, 5); err != nil {
			return err
		} else if dup.Groups > 0 {
			return dup
		}
		if exists { // INVALID: left by a failed concurrent build
			if _, err := tx.Exec(ctx, "DROP INDEX "+UniqueIndex); err != nil {
				return fmt.Errorf("payment: migrate: drop invalid index: %w", err)
			}
		}
		_, err = tx.Exec(ctx, "CREATE UNIQUE INDEX "+UniqueIndex+" ON payments (service_id, line_item_id)")
		if err != nil {
			return fmt.Errorf("payment: migrate: create unique index: %w", err)
		}
		return nil
	})
	return err
}

// indexState reports whether UniqueIndex exists on payments and is valid.
func indexState(ctx context.Context, q pgx.Tx) (valid, exists bool, err error) {
	err = q.QueryRow(ctx, `
		SELECT i.indisvalid FROM pg_index i
		WHERE i.indexrelid = to_regclass($1) AND i.indrelid = to_regclass('payments')`, UniqueIndex).Scan(&valid)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("payment: migrate: inspect index: %w", err)
	}
	return valid, true, nil
}

// ErrDuplicates is matched by a *DuplicatesError.
var ErrDuplicates = errors.New("payment: payments holds duplicate (service_id, line_item_id) rows")

// DuplicatesError describes the duplicates that keep Migrate from creating
// the unique index.
type DuplicatesError struct {
	Groups int   // keys with more than one row
	Extra  int   // rows beyond the first of each such key
	Worst  []Key // the keys with the most rows, most first
	Counts []int // rows per key in Worst
}

// Querier runs queries: a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// FindDuplicates counts duplicate groups in payments and lists the worst
// ones, up to limit.
func FindDuplicates(ctx context.Context, q Querier, limit int) (*DuplicatesError, error) {
	rows, err := q.Query(ctx, `
		SELECT service_id, line_item_id, n, count(*) OVER (), sum(n - 1) OVER ()
		FROM (SELECT service_id, line_item_id, count(*) AS n FROM payments
		      GROUP BY service_id, line_item_id HAVING count(*) > 1) d
		ORDER BY n DESC, service_id, line_item_id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("payment: find duplicates: %w", err)
	}
	d := &DuplicatesError{}
	var k Key
	var n int
	_, err = pgx.ForEachRow(rows, []any{&k.ServiceID, &k.LineItemID, &n, &d.Groups, &d.Extra}, func() error {
		d.Worst, d.Counts = append(d.Worst, k), append(d.Counts, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("payment: find duplicates: %w", err)
	}
	return d, nil
}

func (e *DuplicatesError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %d keys have %d extra rows", ErrDuplicates, e.Groups, e.Extra)
	for i, k := range e.Worst {
		sep := ", worst: "
		if i > 0 {
			sep = ", "
		}
		fmt.Fprintf(&b, "%s(%d, %q) x%d", sep, k.ServiceID, k.LineItemID, e.Counts[i])
	}
	b.WriteString("; run `paylock dedupe` to merge them, then migrate again")
	return b.String()
}

// Is reports whether target is ErrDuplicates.
func (e *DuplicatesError) Is(target error) bool { return target == ErrDuplicates }
