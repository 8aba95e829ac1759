package payment_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// citusBenchKeys is the number of keys one caller cycles through.
const citusBenchKeys = 10

// BenchmarkCitus: one caller in a loop on the coordinator of a Citus
// cluster, payments distributed, 10 keys: With with each strategy beside
// its statements sent by hand in the same two pipelines (op=sql, as
// `paylock bench` has pgbench send them), the update finding the row by its
// distribution column; and, for scale, the same with the update finding the
// row by id alone, which Citus sends to every shard (op=sql-update-by-id).
func BenchmarkCitus(b *testing.B) {
	db := citustest.NewDB(b)
	ctx := pgtest.Context(b, 10*time.Minute)
	pool := citusPool(b, db.CoordinatorURL(), nil)
	if err := payment.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (1, 'api')"); err != nil {
		b.Fatal(err)
	}
	key := func(i int) payment.Key {
		return payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("li_%d", i%citusBenchKeys)}
	}
	ops := []struct {
		name string
		do   func(ctx context.Context, k payment.Key) error
	}{
		{"with-advisory", func(ctx context.Context, k payment.Key) error {
			return payment.NewRepository(pool).With(ctx, k, bump)
		}},
		{"with-rowlock", func(ctx context.Context, k payment.Key) error {
			return payment.NewRepository(pool, entity.WithStrategy(entity.RowLock)).With(ctx, k, bump)
		}},
		{"sql", func(ctx context.Context, k payment.Key) error { return handSQL(ctx, pool, k, false) }},
		{"sql-update-by-id", func(ctx context.Context, k payment.Key) error { return handSQL(ctx, pool, k, true) }},
	}
	for _, op := range ops {
		b.Run("op="+op.name, func(b *testing.B) {
			for i := range citusBenchKeys { // create the rows, prepare the statements
				if err := op.do(ctx, key(i)); err != nil {
					b.Fatal(err)
				}
			}
			i := 0
			for b.Loop() {
				if err := op.do(ctx, key(i)); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// handSQL is With's statements for k, sent by hand in With's two pipelines:
// begin, the lock, the insert-if-missing and the locked read; then the
// update and commit. byID makes the update find the row by id, as With's
// did; otherwise by (service_id, id).
func handSQL(ctx context.Context, pool *pgxpool.Pool, k payment.Key, byID bool) error {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	batch := &pgx.Batch{}
	batch.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
	batch.Queue("SELECT pg_advisory_xact_lock($1)", k.LockKey().ID())
	batch.Queue(`INSERT INTO payments (service_id, line_item_id)
		SELECT $1::bigint, $2::text WHERE NOT EXISTS (SELECT FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text)
		ON CONFLICT DO NOTHING`, k.ServiceID, k.LineItemID)
	var id, amount int64
	batch.Queue(`SELECT id, amount_cents FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text
		ORDER BY id LIMIT 1 FOR NO KEY UPDATE`, k.ServiceID, k.LineItemID).QueryRow(func(r pgx.Row) error {
		return r.Scan(&id, &amount)
	})
	if err := c.SendBatch(ctx, batch).Close(); err != nil {
		c.Conn().Close(ctx)
		return err
	}
	batch = &pgx.Batch{}
	if byID {
		batch.Queue("UPDATE payments SET amount_cents = $2, updated_at = now() WHERE id = $1", id, amount+1)
	} else {
		batch.Queue("UPDATE payments SET amount_cents = $2, updated_at = now() WHERE service_id = $3 AND id = $1", id, amount+1, k.ServiceID)
	}
	batch.Queue("COMMIT")
	if err := c.SendBatch(ctx, batch).Close(); err != nil {
		c.Conn().Close(ctx)
		return err
	}
	return nil
}
