package lock_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// do runs sql in fn's transaction, scanning its one row into dest if given.
type do func(ctx context.Context, sql string, dest ...any) error

// runner is Options.Run or Options.RunDB on one database, with fn written
// once for both.
type runner struct {
	name string
	run  func(ctx context.Context, o lock.Options, key lock.Key, fn func(context.Context, do) error) error
}

// runners returns Run on a pool and RunDB on a *sql.DB (pgx's stdlib
// driver), both on the database at url, and a pool for the test's own use.
func runners(t *testing.T, url string) ([]runner, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return []runner{
		{"Run", func(ctx context.Context, o lock.Options, key lock.Key, fn func(context.Context, do) error) error {
			return o.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				return fn(ctx, func(ctx context.Context, sql string, dest ...any) error {
					if len(dest) == 0 {
						_, err := tx.Exec(ctx, sql)
						return err
					}
					return tx.QueryRow(ctx, sql).Scan(dest...)
				})
			})
		}},
		{"RunDB", func(ctx context.Context, o lock.Options, key lock.Key, fn func(context.Context, do) error) error {
			return o.RunDB(ctx, db, key, func(ctx context.Context, tx *sql.Tx) error {
				return fn(ctx, func(ctx context.Context, sql string, dest ...any) error {
					if len(dest) == 0 {
						_, err := tx.ExecContext(ctx, sql)
						return err
					}
					return tx.QueryRowContext(ctx, sql).Scan(dest...)
				})
			})
		}},
	}, pool
}

// values returns the values of t between lo and hi.
func values(t *testing.T, pool *pgxpool.Pool, lo, hi int) []int {
	t.Helper()
	r, err := pool.Query(context.Background(), "SELECT v FROM t WHERE v BETWEEN $1 AND $2 ORDER BY v", lo, hi)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := pgx.CollectRows(r, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// TestRunAndRunDBShareOneContract: Run and RunDB retry, classify the commit
// and refuse reentry alike.
func TestRunAndRunDBShareOneContract(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	runs, pool := runners(t, pgtest.DB(t))
	if _, err := pool.Exec(ctx, `
		CREATE TABLE t (v int);
		CREATE TABLE slow (v int);
		CREATE TABLE u (v int UNIQUE DEFERRABLE INITIALLY DEFERRED);
		-- Holds COMMIT until advisory lock 4242 (bigint) is free.
		CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS
			$$ BEGIN PERFORM pg_advisory_xact_lock(4242::bigint); RETURN NULL; END $$;
		CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT ON slow
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_at_commit()`); err != nil {
		t.Fatal(err)
	}
	retry := lock.Options{Retry: lock.Retry{Attempts: 3, Backoff: time.Millisecond}}
	terminate := func(pid int32) {
		var ok bool
		// The second argument waits until the backend is gone.
		if err := pool.QueryRow(ctx, "SELECT pg_terminate_backend($1, 10000)", pid).Scan(&ok); err != nil || !ok {
			t.Errorf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
		}
	}

	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			key := lock.NewKey("test", "contract", r.name)

			t.Run("BackendTerminatedBeforeCommitIsRetried", func(t *testing.T) {
				base := 10 * (i + 1)
				var attempts atomic.Int32
				err := r.run(ctx, retry, key, func(ctx context.Context, q do) error {
					n := attempts.Add(1)
					if n == 1 {
						var pid int32
						if err := q(ctx, "SELECT pg_backend_pid()", &pid); err != nil {
							return err
						}
						terminate(pid)
					}
					return q(ctx, "INSERT INTO t VALUES ("+strconv.Itoa(base+int(n))+")")
				})
				if err != nil || attempts.Load() != 2 {
					t.Fatalf("%s = %v after %d attempts; want nil after 2 (the first one's backend was terminated)", r.name, err, attempts.Load())
				}
				if got := values(t, pool, base+1, base+9); len(got) != 1 || got[0] != base+2 {
					t.Fatalf("rows %v; want the second attempt's alone, %d", got, base+2)
				}
			})

			t.Run("BackendTerminatedDuringCommitIsUnknown", func(t *testing.T) {
				holder := begin(t, ctx, pool)
				if _, err := holder.Exec(ctx, "SELECT pg_advisory_xact_lock(4242::bigint)"); err != nil {
					t.Fatal(err)
				}
				pids := make(chan int32, 1)
				killed := make(chan struct{})
				go func() {
					defer close(killed)
					pid := <-pids
					// COMMIT is running the deferred trigger, which waits for 4242.
					if err := waitUntil(ctx, func() (bool, error) {
						var waiting bool
						err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND NOT granted AND locktype = 'advisory')", pid).Scan(&waiting)
						return waiting, err
					}); err != nil {
						t.Error(err)
						return
					}
					terminate(pid)
				}()
				var attempts atomic.Int32
				err := r.run(ctx, retry, key, func(ctx context.Context, q do) error {
					attempts.Add(1)
					var pid int32
					if err := q(ctx, "SELECT pg_backend_pid()", &pid); err != nil {
						return err
					}
					select {
					case pids <- pid:
					default:
					}
					return q(ctx, "INSERT INTO slow VALUES (1)")
				})
				<-killed
				if !errors.Is(err, lock.ErrCommitUnknown) || attempts.Load() != 1 {
					t.Fatalf("%s = %v after %d attempts; want ErrCommitUnknown after 1", r.name, err, attempts.Load())
				}
				if err := holder.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
			})

			t.Run("ErrorAtCommitIsDefinite", func(t *testing.T) {
				var attempts atomic.Int32
				err := r.run(ctx, retry, key, func(ctx context.Context, q do) error {
					attempts.Add(1)
					return q(ctx, "INSERT INTO u VALUES (1), (1)")
				})
				var pgErr *pgconn.PgError
				if errors.Is(err, lock.ErrCommitUnknown) || !errors.As(err, &pgErr) || pgErr.Code != "23505" || attempts.Load() != 1 {
					t.Fatalf("%s = %v after %d attempts; want the unique violation (23505), definite, after 1", r.name, err, attempts.Load())
				}
			})

			t.Run("NestedCallForTheSameKeyIsRefused", func(t *testing.T) {
				err := r.run(ctx, retry, key, func(ctx context.Context, q do) error {
					return r.run(ctx, retry, key, func(context.Context, do) error { return nil })
				})
				if !errors.Is(err, lock.ErrReentrant) {
					t.Fatalf("nested %s = %v, want ErrReentrant", r.name, err)
				}
			})
		})
	}
	for _, r := range runs {
		if g, w := lockRows(t, pool, lock.NewKey("test", "contract", r.name)); g+w != 0 {
			t.Errorf("%s: %d granted, %d waiting locks left", r.name, g, w)
		}
	}
}

// waitUntil polls cond until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
