// Package paytest gives tests a database with the payments schema: a fresh
// pgtest database that payment.Migrate has run on, with service 1 ('api').
//
// It imports payment, so only _test.go files may import it (the library's
// own files never do: see internal/testing/layout), and only external test
// packages (payment_test, not payment) of payment itself.
package paytest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// ServiceID is the service Pool and Seed create, named 'api'.
const ServiceID = 1

// Pool returns a pool on a fresh database (see [pgtest.Pool]) with the
// payments schema and service 1. Each configure function edits the pool's
// config before it connects. The pool is closed and the database dropped
// when t ends.
func Pool(t testing.TB, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	pool := pgtest.Pool(t, func(c *pgxpool.Config) {
		for _, f := range configure {
			if f != nil {
				f(c)
			}
		}
	})
	Seed(t, pgtest.Context(t, time.Minute), pool)
	return pool
}

// Seed runs payment.Migrate through pool and creates service 1, failing t on
// any error. Use it for a database Pool did not create (a server of the
// test's own); Pool already seeds its own.
func Seed(t testing.TB, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (1, 'api')"); err != nil {
		t.Fatal(err)
	}
}

// HoldSnapshot begins a REPEATABLE READ transaction that has taken its
// snapshot: a CREATE INDEX CONCURRENTLY started afterwards waits for it to
// end before it marks its index valid. The returned func ends it.
func HoldSnapshot(t *testing.T, ctx context.Context, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			tx.Rollback(context.Background())
			c.Release()
		}
	}
	t.Cleanup(release)
	return release
}

// UniqueIndex reports the oid of payment.UniqueIndex (0 if missing) and
// whether it is valid.
func UniqueIndex(t testing.TB, pool *pgxpool.Pool) (oid uint32, valid bool) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `
		SELECT coalesce(to_regclass($1)::oid, 0), coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)), false)`,
		payment.UniqueIndex).Scan(&oid, &valid)
	if err != nil {
		t.Fatal(err)
	}
	return oid, valid
}
