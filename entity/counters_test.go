package entity_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// counters is one of entity's own tables for its tests, so that they test
// entity's contract and nothing of the packages built on it (items, in
// items_test.go, is the other): a counter n and a label per text key.
// A key starting with "refused" breaks a CHECK, so its Ensure fails at the
// server.
const countersSchema = `CREATE TABLE counters (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	key text NOT NULL UNIQUE CHECK (key NOT LIKE 'refused%'),
	n bigint NOT NULL DEFAULT 0,
	label text NOT NULL DEFAULT ''
)`

// counter is a row of counters.
type counter struct {
	ID      int64
	Key     string
	N       int64
	Label   string
	Created bool
}

var (
	errEmptyKey   = errors.New("counters: empty key")
	errKeyChanged = errors.New("counters: fn changed the key")
)

// counters is the entity.Table of the counters table.
type counters struct{}

var _ entity.Table[string, counter] = counters{}

// lockKey is the lock of key k: ("counters", k).
func lockKey(k string) lock.Key { return lock.NewKey("counters", k) }

func (counters) LockKey(k string) (lock.Key, error) {
	if k == "" {
		return lock.Key{}, errEmptyKey
	}
	return lockKey(k), nil
}

func (counters) Ensure(k string) (string, []any) {
	return `INSERT INTO counters (key) SELECT $1::text
WHERE NOT EXISTS (SELECT FROM counters WHERE key = $1::text) ON CONFLICT DO NOTHING`, []any{k}
}

func (counters) Find(k string) (string, []any) {
	return "SELECT id, key, n, label FROM counters WHERE key = $1::text FOR NO KEY UPDATE", []any{k}
}

func (counters) Scan(row pgx.Row, created bool) (*counter, error) {
	c := &counter{Created: created}
	if err := row.Scan(&c.ID, &c.Key, &c.N, &c.Label); err != nil {
		return nil, err
	}
	return c, nil
}

func (counters) Save(before, after *counter) (string, []any, error) {
	if after.ID != before.ID || after.Key != before.Key {
		return "", nil, errKeyChanged
	}
	if after.N == before.N && after.Label == before.Label {
		return "", nil, nil
	}
	return "UPDATE counters SET n = $2::bigint, label = $3::text WHERE id = $1::bigint",
		[]any{after.ID, after.N, after.Label}, nil
}

// setupPool returns a pool, configured by configure, on a fresh database
// with the counters table, and a ctx for the test.
func setupPool(t *testing.T, configure func(*pgxpool.Config)) (*pgxpool.Pool, context.Context) {
	t.Helper()
	pool := pgtest.Pool(t, configure)
	ctx := pgtest.Context(t, time.Minute)
	if _, err := pool.Exec(ctx, countersSchema); err != nil {
		t.Fatal(err)
	}
	return pool, ctx
}

// setup is setupPool with pgtest's default pool.
func setup(t *testing.T) (*pgxpool.Pool, context.Context) { return setupPool(t, nil) }

// row reads the committed n and label of key's counter.
func row(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key string) (n int64, label string) {
	t.Helper()
	if err := pool.QueryRow(ctx, "SELECT n, label FROM counters WHERE key = $1", key).Scan(&n, &label); err != nil {
		t.Fatal(err)
	}
	return n, label
}

// holdKey takes key's lock in a transaction of its own on pool and returns
// that transaction; it rolls back when t ends, unless committed before.
func holdKey(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key string) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	if err := lock.Acquire(ctx, tx, lockKey(key)); err != nil {
		t.Fatal(err)
	}
	return tx
}

func noop(context.Context, pgx.Tx, *counter) error { return nil }
