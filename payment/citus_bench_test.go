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
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/payment"
)

// citusBenchKeys is the number of keys one caller cycles through.
const citusBenchKeys = 10

// BenchmarkCitus: one caller in a loop on the coordinator of a Citus
// cluster, payments distributed, 10 keys. With on NewRepository (table=plain:
// the insert-if-missing is INSERT ... SELECT ... WHERE NOT EXISTS) and on
// NewDistributedRepository (table=distributed: INSERT ... VALUES ... ON
// CONFLICT DO NOTHING), with each strategy, beside the same statements sent
// by hand in With's two pipelines (op=sql, as `paylock bench` has pgbench
// send them); and, for scale, by hand with the update finding the row by id
// alone, which Citus sends to every shard (op=sql-update-by-id).
func BenchmarkCitus(b *testing.B) {
	db := citustest.NewDB(b)
	ctx := pgtest.Context(b, 10*time.Minute)
	pool := citustest.Pool(b, db.CoordinatorURL(), nil)
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
		{"with-advisory/table=plain", with(payment.NewRepository(pool))},
		{"with-rowlock/table=plain", with(payment.NewRepository(pool, entity.WithStrategy(entity.RowLock)))},
		{"sql/table=plain", func(ctx context.Context, k payment.Key) error { return handSQL(ctx, pool, k, false, false) }},
		{"with-advisory/table=distributed", with(payment.NewDistributedRepository(pool))},
		{"with-rowlock/table=distributed", with(payment.NewDistributedRepository(pool, entity.WithStrategy(entity.RowLock)))},
		{"sql/table=distributed", func(ctx context.Context, k payment.Key) error { return handSQL(ctx, pool, k, true, false) }},
		{"sql-update-by-id/table=distributed", func(ctx context.Context, k payment.Key) error { return handSQL(ctx, pool, k, true, true) }},
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

// with returns repo's With of bump.
func with(repo *payment.Repository) func(ctx context.Context, k payment.Key) error {
	return func(ctx context.Context, k payment.Key) error { return repo.With(ctx, k, bump) }
}

// handSQL is With's statements for k, sent by hand in With's two pipelines:
// begin, the transaction's settings, the lock, the insert-if-missing (Table.Distributed's when
// distributed) and the locked read; then the check that fn left the transaction open, the update
// and commit. byID makes
// the update find the row by id, as With's did; otherwise by (service_id,
// id).
func handSQL(ctx context.Context, pool *pgxpool.Pool, k payment.Key, distributed, byID bool) error {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	batch := &pgx.Batch{}
	batch.Queue(txn.SQLBegin)
	batch.Queue(txn.Settings{IdleTimeout: txn.DefaultIdleTimeout, ConnCheck: true}.SetSQL())
	batch.Queue("SELECT pg_advisory_xact_lock($1)", k.LockKey().ID())
	insert, args := payment.Table{Distributed: distributed}.Ensure(k)
	batch.Queue(insert, args...)
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
	batch.Queue(txn.CheckSQL)
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
