package entity_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// blob is a row of blobs, its data scanned as pgtype.DriverBytes.
type blob struct {
	ID   int64
	N    int64
	Data pgtype.DriverBytes
}

// blobs is an entity.Table whose row holds a bytea scanned without a copy.
type blobs struct{}

func (blobs) LockKey(k string) (lock.Key, error) { return lock.NewKey("blobs", k), nil }
func (blobs) Ensure(k string) (string, []any) {
	return "INSERT INTO blobs (key, data) VALUES ($1::text, convert_to(repeat('A', 64), 'UTF8')) ON CONFLICT DO NOTHING", []any{k}
}
func (blobs) Find(k string) (string, []any) {
	return "SELECT id, n, data FROM blobs WHERE key = $1::text FOR UPDATE", []any{k}
}
func (blobs) Scan(row pgx.Row, _ bool) (*blob, error) {
	b := &blob{}
	if err := row.Scan(&b.ID, &b.N, &b.Data); err != nil {
		return nil, err
	}
	return b, nil
}
func (blobs) Save(before, after *blob) (string, []any, error) {
	if after.N == before.N && string(after.Data) == string(before.Data) {
		return "", nil, nil
	}
	return "UPDATE blobs SET n = $2::bigint, data = $3::bytea WHERE id = $1::bigint", []any{after.ID, after.N, []byte(after.Data)}, nil
}

// TestWithDriverBytesRowIsNotOverwritten: a row With scanned stays as read
// while fn reads more on the connection. pgtype.DriverBytes keeps a
// reference to the bytes it scanned; With's row must not be pgconn's read
// buffer, which fn's next query overwrites (and Save then writes back).
func TestWithDriverBytesRowIsNotOverwritten(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	if _, err := pool.Exec(ctx, "CREATE TABLE blobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key text UNIQUE NOT NULL, n bigint NOT NULL DEFAULT 0, data bytea NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, blobs{})
	want := strings.Repeat("A", 64)
	for i := range 3 {
		err := repo.With(ctx, "b", func(ctx context.Context, tx pgx.Tx, b *blob) error {
			var s string
			if err := tx.QueryRow(ctx, "SELECT repeat('Z', 200)").Scan(&s); err != nil {
				return err
			}
			if got := string(b.Data); got != want {
				t.Errorf("call %d: fn's row changed under it by fn's own query: data %q", i, got)
			}
			b.N++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var data []byte
	if err := pool.QueryRow(ctx, "SELECT data FROM blobs WHERE key = 'b'").Scan(&data); err != nil {
		t.Fatal(err)
	}
	if string(data) != want {
		t.Fatalf("committed data = %q, want %q", data, want)
	}
}

// TestWithAfterDeallocateAll: user code that runs DEALLOCATE ALL (or
// DISCARD ALL) on a pooled connection, outside or inside fn.
func TestWithAfterDeallocateAll(t *testing.T) {
	t.Parallel()
	for _, stmt := range []string{"DEALLOCATE ALL", "DISCARD ALL"} {
		for _, group := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/group=%v", strings.ReplaceAll(stmt, " ", "_"), group), func(t *testing.T) {
				pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
				repo := entity.New(pool, entity.Table[string, counter](counters{}))
				if group {
					repo = entity.New(pool, entity.Table[string, counter](cloningCounters{}), entity.WithGroupCommit(4))
				}
				inc := func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }
				if err := repo.With(ctx, "k", inc); err != nil {
					t.Fatal(err)
				}
				// Inside fn: the commit check and COMMIT, prepared, are gone.
				err := repo.With(ctx, "k", func(ctx context.Context, tx pgx.Tx, c *counter) error {
					c.N++
					if stmt == "DISCARD ALL" {
						return nil // can't run in a transaction
					}
					_, err := tx.Exec(ctx, stmt)
					return err
				})
				t.Logf("With with %s in fn: %v (commit unknown: %v)", stmt, err, errors.Is(err, lock.ErrCommitUnknown))
				n, _ := row(t, ctx, pool, "k")
				t.Logf("n = %d", n)
				if err != nil && errors.Is(err, lock.ErrCommitUnknown) {
					t.Errorf("With = %v: commit reported unknown although nothing was committed (n = %d)", err, n)
				}
				// Outside With, on the pooled connection.
				if _, err := pool.Exec(ctx, stmt); err != nil {
					t.Fatal(err)
				}
				// The first call's BEGIN, named, fails: nothing was run or
				// committed; it drops the connection and Retry runs the call
				// again on a new one.
				opts := []entity.Option{entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 2}})}
				retrying := entity.New(pool, entity.Table[string, counter](counters{}), opts...)
				if group {
					retrying = entity.New(pool, entity.Table[string, counter](cloningCounters{}), append(opts, entity.WithGroupCommit(4))...)
				}
				for i := range 3 {
					if err := retrying.With(ctx, "k", inc); err != nil {
						t.Errorf("With %d after %s on the pooled connection: %v", i, stmt, err)
					}
				}
			})
		}
	}
}

// cloningCounters is counters with a Cloner, for WithGroupCommit.
type cloningCounters struct{ counters }

func (cloningCounters) Clone(v *counter, created bool) *counter {
	c := *v
	c.Created = created
	return &c
}

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

// raw is a row of raws: byte-slice fields of each kind.
type raw struct {
	ID   int64
	N    int64
	Bin  []byte
	Doc  json.RawMessage
	Text []byte
}

type raws struct{}

func (raws) LockKey(k string) (lock.Key, error) { return lock.NewKey("raws", k), nil }
func (raws) Ensure(k string) (string, []any) {
	return `INSERT INTO raws (key, bin, doc, text) VALUES ($1::text, convert_to(repeat('A', 40), 'UTF8'),
jsonb_build_object('a', repeat('A', 40)), repeat('A', 40)) ON CONFLICT DO NOTHING`, []any{k}
}
func (raws) Find(k string) (string, []any) {
	return "SELECT id, n, bin, doc, text FROM raws WHERE key = $1::text FOR UPDATE", []any{k}
}
func (raws) Scan(row pgx.Row, _ bool) (*raw, error) {
	r := &raw{}
	if err := row.Scan(&r.ID, &r.N, &r.Bin, &r.Doc, &r.Text); err != nil {
		return nil, err
	}
	return r, nil
}
func (raws) Save(before, after *raw) (string, []any, error) {
	return "UPDATE raws SET n = $2::bigint, bin = $3::bytea, doc = $4::jsonb, text = $5::text WHERE id = $1::bigint",
		[]any{after.ID, after.N, after.Bin, string(after.Doc), string(after.Text)}, nil
}

// TestWithByteSliceFieldsOwnTheirBytes: []byte and json.RawMessage fields
// of the row, read from pgconn's buffer, do not change when fn reads more,
// in every exec mode, and before (Save's) and v (fn's) share no bytes.
func TestWithByteSliceFieldsOwnTheirBytes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			pool, ctx := setupPool(t, func(cfg *pgxpool.Config) {
				cfg.MaxConns = 1
				cfg.ConnConfig.DefaultQueryExecMode = mode
			})
			if _, err := pool.Exec(ctx, "CREATE TABLE raws (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key text UNIQUE NOT NULL, n bigint NOT NULL DEFAULT 0, bin bytea, doc jsonb, text text)"); err != nil {
				t.Fatal(err)
			}
			repo := entity.New(pool, raws{})
			var first *raw
			for i := range 3 {
				err := repo.With(ctx, "r", func(ctx context.Context, tx pgx.Tx, r *raw) error {
					if first == nil {
						first = r
					}
					var s string
					if err := tx.QueryRow(ctx, "SELECT repeat('Z', 300)").Scan(&s); err != nil {
						return err
					}
					if !strings.Contains(string(r.Doc), strings.Repeat("A", 40)) || string(r.Bin) != strings.Repeat("A", 40) || string(r.Text) != strings.Repeat("A", 40) {
						t.Errorf("call %d: row changed by fn's query: %q %q %q", i, r.Bin, r.Doc, r.Text)
					}
					r.N++
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if string(first.Bin) != strings.Repeat("A", 40) || string(first.Text) != strings.Repeat("A", 40) {
				t.Errorf("the first call's row changed since: %q %q", first.Bin, first.Text)
			}
			var bin, text string
			if err := pool.QueryRow(ctx, "SELECT convert_from(bin, 'UTF8'), text FROM raws").Scan(&bin, &text); err != nil {
				t.Fatal(err)
			}
			if bin != strings.Repeat("A", 40) || text != strings.Repeat("A", 40) {
				t.Fatalf("committed %q %q", bin, text)
			}
		})
	}
}

// TestWithCommitCheckAfterManyCalls: the prepared commit check still stops
// the commit of a transaction fn began after many calls on the connection
// (PostgreSQL switches a prepared statement to a generic plan after five
// executions; the check must not be folded into it).
func TestWithCommitCheckAfterManyCalls(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	repo := entity.New(pool, counters{})
	for range 12 {
		if err := repo.With(ctx, "k", func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		err := repo.With(ctx, "k", func(ctx context.Context, tx pgx.Tx, c *counter) error {
			if _, err := tx.Exec(ctx, "COMMIT; BEGIN"); err != nil {
				return err
			}
			c.N = 1000
			return nil
		})
		if !errors.Is(err, entity.ErrTxEnded) {
			t.Fatalf("With = %v, want ErrTxEnded", err)
		}
		if n, _ := row(t, ctx, pool, "k"); n != 12 {
			t.Fatalf("n = %d, want 12: a transaction without the lock committed", n)
		}
	}
}
