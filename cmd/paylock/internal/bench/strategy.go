package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/entityopt"
	"github.com/paylock/paylock/internal/tools/baseline"
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/payment"
)

// An op finds or creates the payment for key and adds 1 to its amount, the
// way one strategy does it. It returns how many times it had to start over.
type op func(ctx context.Context, key payment.Key) (retries int, err error)

// strategies are the ways to do an op, in the order of the table. pgbench is
// not among them: it runs outside this process (see pgbench.go).
var strategies = []struct {
	name string
	doc  string
	new  func(pool *pgxpool.Pool, repo newRepository) op
}{
	{"naive", "find, then insert if missing, then update; no lock, no unique index", naive},
	{"rowlock", "INSERT ... ON CONFLICT DO NOTHING, SELECT ... FOR UPDATE, UPDATE: one statement per round trip", rowlock},
	{"advisory-seq", "BEGIN, pg_advisory_xact_lock, insert if missing, SELECT, UPDATE, COMMIT: one statement per round trip", advisorySeq},
	{"serializable", "SERIALIZABLE find, insert or update, retried on serialization failures and unique violations", serializable},
	{"paylock", "payment.Repository.With", paylock},
}

// extraStrategies run only when named in --strategies.
var extraStrategies = []struct {
	name string
	doc  string
	new  func(pool *pgxpool.Pool, repo newRepository) op
}{
	{"paylock-noqueue", "payment.Repository.With without the per-key queue (entityopt.WithoutKeyQueue)", paylockNoQueue},
	{"paylock-group", "payment.Repository.With with group commit (entity.WithGroupCommit(32))", paylockGroup},
}

const (
	sqlEnsure = `INSERT INTO payments (service_id, line_item_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`
	// By service_id too: on Citus an update by id alone goes to every shard.
	sqlUpdate = `UPDATE payments SET amount_cents = $2, updated_at = now() WHERE service_id = $3 AND id = $1`
)

// naive is what the pollers did before paylock (baseline.Naive), on
// baseline.Table, a copy of payments without the unique index: it makes
// duplicates and loses updates.
func naive(pool *pgxpool.Pool, _ newRepository) op {
	return func(ctx context.Context, key payment.Key) (int, error) {
		_, err := baseline.Naive(ctx, pool, key, func(r *baseline.Row) (bool, error) { r.AmountCents++; return true, nil })
		return 0, err
	}
}

// rowlock relies on the unique index and a row lock, as a Go developer
// without paylock would write it with pgx (baseline.RowLock).
func rowlock(pool *pgxpool.Pool, _ newRepository) op {
	return func(ctx context.Context, key payment.Key) (int, error) {
		return 0, baseline.RowLock(ctx, pool, key, func(r *baseline.Row) error { r.AmountCents++; return nil })
	}
}

// advisorySeq takes the same advisory lock as paylock, but sends one
// statement per round trip: the lock is held for four of them.
func advisorySeq(pool *pgxpool.Pool, _ newRepository) op {
	return func(ctx context.Context, key payment.Key) (int, error) {
		return 0, pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, txn.AcquireSQL("$1"), key.LockKey().ID()); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, sqlEnsure, key.ServiceID, key.LineItemID); err != nil {
				return err
			}
			var id, amount int64
			if err := tx.QueryRow(ctx, `SELECT id, amount_cents FROM payments
				WHERE service_id = $1 AND line_item_id = $2`, key.ServiceID, key.LineItemID).Scan(&id, &amount); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, sqlUpdate, id, amount+1, key.ServiceID)
			return err
		})
	}
}

// serializable lets SERIALIZABLE find the conflicts and retries.
func serializable(pool *pgxpool.Pool, _ newRepository) op {
	return func(ctx context.Context, key payment.Key) (int, error) {
		for retries := 0; ; retries++ {
			err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.Serializable}, func(tx pgx.Tx) error {
				var id, amount int64
				err := tx.QueryRow(ctx, `SELECT id, amount_cents FROM payments
					WHERE service_id = $1 AND line_item_id = $2`, key.ServiceID, key.LineItemID).Scan(&id, &amount)
				if errors.Is(err, pgx.ErrNoRows) {
					_, err = tx.Exec(ctx, `INSERT INTO payments (service_id, line_item_id, amount_cents) VALUES ($1, $2, 1)`,
						key.ServiceID, key.LineItemID)
					return err
				}
				if err != nil {
					return err
				}
				_, err = tx.Exec(ctx, sqlUpdate, id, amount+1, key.ServiceID)
				return err
			})
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01" || pgErr.Code == "23505") {
				if ctx.Err() != nil {
					return retries, ctx.Err()
				}
				continue
			}
			return retries, err
		}
	}
}

// paylock is the library.
func paylock(pool *pgxpool.Pool, newRepo newRepository) op {
	repo := newRepo(pool)
	bump := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	return func(ctx context.Context, key payment.Key) (int, error) {
		return 0, repo.With(ctx, key, bump)
	}
}

// paylockNoQueue is the library without its per-key queue: every caller
// waits at PostgreSQL.
func paylockNoQueue(pool *pgxpool.Pool, newRepo newRepository) op {
	repo := newRepo(pool, entityopt.WithoutKeyQueue.(entity.Option))
	bump := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	return func(ctx context.Context, key payment.Key) (int, error) {
		return 0, repo.With(ctx, key, bump)
	}
}

// paylockGroup is the library with group commit: a hot key's callers queued
// in this process commit together.
func paylockGroup(pool *pgxpool.Pool, newRepo newRepository) op {
	repo := newRepo(pool, entity.WithGroupCommit(32))
	bump := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	return func(ctx context.Context, key payment.Key) (int, error) {
		return 0, repo.With(ctx, key, bump)
	}
}

// newRepository is payment.NewRepository or, where payments is
// distributed by Citus, payment.NewDistributedRepository.
type newRepository func(pool *pgxpool.Pool, opts ...entity.Option) *payment.Repository

// newOp returns the op of the named strategy; distributed: payments is
// distributed by Citus (payment.Distributed).
func newOp(name string, pool *pgxpool.Pool, distributed bool) (op, error) {
	repo := payment.NewRepository
	if distributed {
		repo = payment.NewDistributedRepository
	}
	for _, s := range append(strategies[:len(strategies):len(strategies)], extraStrategies...) {
		if s.name == name {
			return s.new(pool, repo), nil
		}
	}
	return nil, fmt.Errorf("unknown strategy %q", name)
}
