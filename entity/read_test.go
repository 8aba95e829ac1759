package entity_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// With's read of the row (lock, ensure and find in one round trip): the
// errors and panics met mid-read.

// panicScan panics in Scan for key "panic".
type panicScan struct{ counters }

func (t panicScan) Scan(row pgx.Row, created bool) (*counter, error) {
	c, err := t.counters.Scan(row, created)
	if err == nil && c.Key == "panic" {
		panic("scan")
	}
	return c, err
}

// TestWithScanPanicsMidRead: a Table.Scan that panics while With reads its
// pipeline's results leaves no lock held and the pool usable.
func TestWithScanPanicsMidRead(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	repo := entity.New(pool, panicScan{}, entity.WithLockOptions(lock.Options{LockTimeout: 5e9}))
	func() {
		defer func() {
			if p := recover(); p != "scan" {
				t.Errorf("recover = %v, want the panic of Scan", p)
			}
		}()
		_ = repo.With(ctx, "panic", func(context.Context, pgx.Tx, *counter) error { return nil })
	}()
	for _, k := range []string{"other", "panic2"} {
		if err := repo.With(ctx, k, func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }); err != nil {
			t.Fatalf("With %s after a panicking Scan: %v", k, err)
		}
	}
	// The key's lock was released.
	other := entity.New(pool, counters{}, entity.WithLockOptions(lock.Options{LockTimeout: 5e9}))
	if err := other.With(ctx, "panic", func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }); err != nil {
		t.Fatalf("With on the key whose Scan panicked: %v", err)
	}
}

// TestWithColumnTypeChanges: n changes type (bigint, numeric, integer, a
// domain) under connections that ran With before, in every exec mode: after
// at most one failed call per connection, With reads and writes the right
// value (the connection's cached scan plans and prepared statements follow).
func TestWithColumnTypeChanges(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			pool, ctx := setupPool(t, func(cfg *pgxpool.Config) {
				cfg.MaxConns = 2
				cfg.ConnConfig.DefaultQueryExecMode = mode
			})
			repo := entity.New(pool, counters{})
			want := int64(0)
			inc := func(_ context.Context, _ pgx.Tx, c *counter) error {
				if c.N != want {
					t.Errorf("fn got n = %d, want %d", c.N, want)
				}
				c.N++
				return nil
			}
			for _, typ := range []string{"numeric", "integer", "dn", "bigint"} {
				if typ == "dn" {
					if _, err := pool.Exec(ctx, "CREATE DOMAIN dn AS numeric(20) CHECK (VALUE >= 0)"); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := pool.Exec(ctx, "ALTER TABLE counters ALTER n DROP DEFAULT, ALTER n TYPE "+typ+", ALTER n SET DEFAULT 0"); err != nil {
					t.Fatal(err)
				}
				failed := 0
				for range 6 {
					if err := repo.With(ctx, "k", inc); err != nil {
						failed++
						t.Logf("%s: %v", typ, err)
						if errors.Is(err, lock.ErrCommitUnknown) || failed > 2 {
							t.Fatalf("%s: With = %v", typ, err)
						}
						continue
					}
					want++
				}
				if n, _ := row(t, ctx, pool, "k"); n != want {
					t.Fatalf("%s: n = %d, want %d", typ, n, want)
				}
			}
		})
	}
}

// gatedCounters' Save waits for the row of gate, which a test holds.
type gatedCounters struct{ counters }

func (gatedCounters) Save(before, after *counter) (string, []any, error) {
	return `WITH g AS (SELECT 1 FROM gate FOR UPDATE)
UPDATE counters SET n = $2::bigint WHERE id = $1::bigint AND EXISTS (SELECT FROM g)`, []any{after.ID, after.N}, nil
}

// terminateWaiter ends the backend of the session whose query matches like
// once it waits for a lock.
func terminateWaiter(t *testing.T, ctx context.Context, pool *pgxpool.Pool, like string) {
	t.Helper()
	for ctx.Err() == nil {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE $1 AND pid <> pg_backend_pid()`, like).Scan(&n); err != nil {
			t.Error(err)
			return
		}
		if n > 0 {
			return
		}
	}
}

// TestWithConnectionKilledMidRead: With's backend killed while its first
// round trip waits for the lock fails retryably, never ErrCommitUnknown;
// killed while its second round trip (Save and COMMIT) waits, it fails with
// ErrCommitUnknown and is not retried.
func TestWithConnectionKilledMidRead(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 4 })
	if _, err := pool.Exec(ctx, "CREATE TABLE gate (id int); INSERT INTO gate VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"lock", "save"} {
		t.Run(mode, func(t *testing.T) {
			key := "killed_" + mode
			repo := entity.New(pool, gatedCounters{}, entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 2}}))
			holder, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Rollback(ctx)
			like := "%paylock_key=%" + key + "%"
			if mode == "lock" {
				if err := lock.Acquire(ctx, holder, lockKey(key)); err != nil {
					t.Fatal(err)
				}
			} else {
				if _, err := holder.Exec(ctx, "SELECT FROM gate FOR UPDATE"); err != nil {
					t.Fatal(err)
				}
				like = "%FROM gate FOR UPDATE%UPDATE counters%"
			}
			calls := 0
			done := make(chan error, 1)
			go func() {
				done <- repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, c *counter) error {
					calls++
					c.N++
					return nil
				})
			}()
			terminateWaiter(t, ctx, pool, like)
			if mode == "lock" {
				holder.Rollback(ctx) // the retry gets the lock
			}
			err = <-done
			t.Logf("%s: With = %v, fn ran %d times", mode, err, calls)
			switch mode {
			case "lock":
				if err != nil || calls != 1 {
					t.Errorf("killed while waiting for the lock: With = %v after %d fn calls, want a retry that commits", err, calls)
				}
			case "save":
				if !errors.Is(err, lock.ErrCommitUnknown) || calls != 1 {
					t.Errorf("killed in Save before COMMIT's reply: With = %v after %d fn calls, want ErrCommitUnknown, no retry", err, calls)
				}
			}
		})
	}
}

// findOnly never creates a row: Find of a missing key returns none.
type findOnly struct{ counters }

func (findOnly) Ensure(k string) (string, []any) {
	return "SELECT WHERE $1::text IS NULL", []any{k}
}

// TestWithErrorsMidBatch: Find with no row (ErrNotFound), Ensure refused by
// the server, a lock timeout: each is reported as before the streamed read,
// the key's lock is released and the connection serves the next call.
func TestWithErrorsMidBatch(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 2 })
	opts := entity.WithLockOptions(lock.Options{LockTimeout: 100 * 1e6})
	find := entity.New(pool, findOnly{}, opts)
	repo := entity.New(pool, counters{}, opts)
	inc := func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }
	for i := range 2 {
		key := fmt.Sprintf("absent%d", i)
		if err := find.With(ctx, key, inc); !errors.Is(err, entity.ErrNotFound) {
			t.Fatalf("Find with no row: With = %v, want ErrNotFound", err)
		}
		if err := repo.With(ctx, "refused_x", inc); err == nil || errors.Is(err, lock.ErrCommitUnknown) {
			t.Fatalf("Ensure refused: With = %v, want the CHECK violation", err)
		}
		if err := repo.With(ctx, key, inc); err != nil {
			t.Fatalf("With after the failures: %v", err)
		}
		if err := find.With(ctx, key, inc); err != nil {
			t.Fatalf("Find with the row: %v", err)
		}
		if n, _ := row(t, ctx, pool, key); n != 2 {
			t.Fatalf("n = %d, want 2", n)
		}
	}
	// A lock timeout mid-batch: another session holds the key.
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if err := lock.Acquire(ctx, holder, lockKey("absent0")); err != nil {
		t.Fatal(err)
	}
	if err := repo.With(ctx, "absent0", inc); !errors.Is(err, lock.ErrLockTimeout) {
		t.Fatalf("With on a held key = %v, want ErrLockTimeout", err)
	}
	holder.Rollback(ctx)
	if err := repo.With(ctx, "absent0", inc); err != nil {
		t.Fatalf("With after the lock timeout: %v", err)
	}
}
