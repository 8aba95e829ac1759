package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

var (
	_ lock.Beginner = (*pgxpool.Pool)(nil)
	_ lock.Beginner = (*pgxpool.Conn)(nil)
	_ lock.Beginner = (*pgx.Conn)(nil)
)

// lockRows counts advisory locks on key, by grant state.
func lockRows(t *testing.T, pool *pgxpool.Pool, key lock.Key) (granted, waiting int) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `
		SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted)
		FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND (classid::bigint << 32 | objid::bigint) = $1`, key.ID()).Scan(&granted, &waiting)
	if err != nil {
		t.Fatal(err)
	}
	return granted, waiting
}

// waitForWaiters blocks until n backends wait for key.
func waitForWaiters(t *testing.T, pool *pgxpool.Pool, key lock.Key, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, w := lockRows(t, pool, key); w == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters on %s never appeared", n, key)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func begin(t *testing.T, ctx context.Context, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	return tx
}

func TestAcquire(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, nil)

	t.Run("SecondTransactionWaitsUntilFirstCommits", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		key := lock.NewKey("test", "wait")
		tx1 := begin(t, ctx, pool)
		if err := lock.Acquire(ctx, tx1, key); err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() {
			tx2, err := pool.Begin(ctx)
			if err != nil {
				got <- err
				return
			}
			defer tx2.Rollback(context.Background())
			got <- lock.Acquire(ctx, tx2, key)
		}()
		waitForWaiters(t, pool, key, 1)
		select {
		case err := <-got:
			t.Fatalf("second Acquire returned (%v) while the first transaction holds the lock", err)
		default:
		}
		if err := tx1.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatalf("second Acquire after commit: %v", err)
		}
	})

	t.Run("DifferentKeysDoNotBlock", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		tx1, tx2 := begin(t, ctx, pool), begin(t, ctx, pool)
		if err := lock.Acquire(ctx, tx1, lock.NewKey("test", "a")); err != nil {
			t.Fatal(err)
		}
		ok, err := lock.TryAcquire(ctx, tx2, lock.NewKey("test", "b"))
		if err != nil || !ok {
			t.Fatalf("TryAcquire of another key = %v, %v; want true", ok, err)
		}
	})

	t.Run("TryAcquireIsFalseWhileHeld", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		key := lock.NewKey("test", "try")
		tx1, tx2 := begin(t, ctx, pool), begin(t, ctx, pool)
		if ok, err := lock.TryAcquire(ctx, tx1, key); err != nil || !ok {
			t.Fatalf("first TryAcquire = %v, %v", ok, err)
		}
		if ok, err := lock.TryAcquire(ctx, tx1, key); err != nil || !ok {
			t.Fatalf("TryAcquire again in the holding tx = %v, %v; want true (re-entrant)", ok, err)
		}
		if ok, err := lock.TryAcquire(ctx, tx2, key); err != nil || ok {
			t.Fatalf("TryAcquire while held = %v, %v; want false", ok, err)
		}
		if err := tx1.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if ok, err := lock.TryAcquire(ctx, tx2, key); err != nil || !ok {
			t.Fatalf("TryAcquire after release = %v, %v; want true", ok, err)
		}
	})

	t.Run("CancelWhileWaitingReturnsPromptly", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		key := lock.NewKey("test", "cancel")
		tx1 := begin(t, ctx, pool)
		if err := lock.Acquire(ctx, tx1, key); err != nil {
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithCancel(ctx)
		got := make(chan error, 1)
		go func() {
			got <- lock.Run(waitCtx, pool, key, func(context.Context, pgx.Tx) error { return nil })
		}()
		waitForWaiters(t, pool, key, 1)
		cancel()
		cancelled := time.Now()
		// Run returns while tx1 still holds the key: it did not wait for
		// the holder. How soon is a figure, not a verdict (a busy machine).
		err := <-got
		t.Logf("FIGURE Run returned %v after the cancel", time.Since(cancelled).Round(time.Millisecond))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want an error matching context.Canceled", err)
		}
		// The server drops the abandoned wait (client_connection_check_interval).
		waitForWaiters(t, pool, key, 0)
		// The pool still serves, and the lock is still the first holder's.
		if ok, err := lock.TryAcquire(ctx, begin(t, ctx, pool), key); err != nil || ok {
			t.Fatalf("TryAcquire while tx1 holds = %v, %v; want false, nil", ok, err)
		}
		if err := tx1.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := lock.Run(ctx, pool, key, func(context.Context, pgx.Tx) error { return nil }); err != nil {
			t.Fatalf("Run after the cancel: %v", err)
		}
	})

	t.Run("LockTimeout", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		key := lock.NewKey("test", "timeout")
		if err := lock.Acquire(ctx, begin(t, ctx, pool), key); err != nil {
			t.Fatal(err)
		}
		err := lock.Options{LockTimeout: 50 * time.Millisecond}.Run(ctx, pool, key,
			func(context.Context, pgx.Tx) error { t.Error("fn ran without the lock"); return nil })
		var pgErr *pgconn.PgError
		if !errors.Is(err, lock.ErrLockTimeout) || !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
			t.Fatalf("Run = %v, want ErrLockTimeout wrapping SQLSTATE 55P03", err)
		}
	})

	t.Run("CommentNamesTheKeyOfAWaiter", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		key := lock.NewKey("payments", "7", "li 'x'*/")
		holder := begin(t, ctx, pool)
		if err := lock.Acquire(ctx, holder, key); err != nil {
			t.Fatal(err)
		}
		waiter := begin(t, ctx, pool)
		got := make(chan error, 1)
		go func() { got <- lock.Acquire(ctx, waiter, key) }()
		defer func() {
			holder.Rollback(ctx)
			if err := <-got; err != nil {
				t.Errorf("waiter: %v", err)
			}
		}()
		waitForWaiters(t, pool, key, 1)
		var query string
		err := pool.QueryRow(ctx, `SELECT a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = 'advisory' AND NOT l.granted AND (l.classid::bigint << 32 | l.objid::bigint) = $1`,
			key.ID()).Scan(&query)
		if err != nil {
			t.Fatal(err)
		}
		if want := "/*paylock_key='payments/7/li%20%27x%27%2A%2F'*/"; !strings.Contains(query, want) {
			t.Fatalf("waiter's query = %q, want it to contain %q", query, want)
		}
	})

	t.Run("PgLocksShowsClassIDAndObjID", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		key := lock.NewKey("payments", "1", "a") // negative id: classid >= 2^31
		tx := begin(t, ctx, pool)
		if err := lock.Acquire(ctx, tx, key); err != nil {
			t.Fatal(err)
		}
		var classid, objid uint32
		var objsubid int16
		err := tx.QueryRow(ctx, `SELECT classid::int8, objid::int8, objsubid FROM pg_locks
			WHERE locktype = 'advisory' AND pid = pg_backend_pid()`).Scan(&classid, &objid, &objsubid)
		if err != nil {
			t.Fatal(err)
		}
		if classid != key.ClassID() || objid != key.ObjID() || objsubid != 1 {
			t.Fatalf("pg_locks shows %d/%d/%d, want %d/%d/1", classid, objid, objsubid, key.ClassID(), key.ObjID())
		}
	})

	t.Run("InvalidKeyRunsNoSQL", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		tx := begin(t, ctx, pool)
		for _, err := range []error{
			lock.Acquire(ctx, tx, lock.NewKey("BAD")),
			func() error { _, err := lock.TryAcquire(ctx, tx, lock.Key{}); return err }(),
			lock.AcquireAll(ctx, tx, lock.NewKey("ok"), lock.NewKey("ok", "\xff")),
			lock.Run(ctx, pool, lock.NewKey(""), func(context.Context, pgx.Tx) error { return nil }),
		} {
			if !errors.Is(err, lock.ErrInvalidKey) {
				t.Errorf("got %v, want ErrInvalidKey", err)
			}
		}
		// The transaction saw no failed statement.
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("tx after invalid keys: %v", err)
		}
	})
}

func TestAcquireAll(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, nil)
	a, b := lock.NewKey("test", "a"), lock.NewKey("test", "b")

	t.Run("OppositeOrdersDeadlockWithoutIt", func(t *testing.T) {
		// The failure AcquireAll prevents: two transactions taking the same
		// two keys one by one in opposite orders.
		ctx := pgtest.Context(t, 30*time.Second)
		tx1, tx2 := begin(t, ctx, pool), begin(t, ctx, pool)
		if err := lock.Acquire(ctx, tx1, a); err != nil {
			t.Fatal(err)
		}
		if err := lock.Acquire(ctx, tx2, b); err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 2)
		go func() { got <- lock.Acquire(ctx, tx1, b) }()
		go func() { got <- lock.Acquire(ctx, tx2, a) }()
		err1, err2 := <-got, <-got
		var pgErr *pgconn.PgError
		deadlocked := errors.Is(err1, lock.ErrDeadlock) || errors.Is(err2, lock.ErrDeadlock)
		if !deadlocked || !(errors.As(err1, &pgErr) || errors.As(err2, &pgErr)) || pgErr.Code != "40P01" {
			t.Fatalf("opposite-order Acquire = %v, %v; want one ErrDeadlock (40P01)", err1, err2)
		}
	})

	t.Run("OppositeOrdersFinish", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		start := make(chan struct{})
		var g errgroup.Group
		for _, keys := range [][]lock.Key{{a, b}, {b, a}} {
			g.Go(func() error {
				<-start
				for range 50 {
					err := lock.Options{}.Run(ctx, pool, lock.NewKey("test", "outer"+keys[0].String()),
						func(ctx context.Context, tx pgx.Tx) error {
							if err := lock.AcquireAll(ctx, tx, keys...); err != nil {
								return err
							}
							_, err := tx.Exec(ctx, "SELECT pg_sleep(0.001)")
							return err
						})
					if err != nil {
						return err
					}
				}
				return nil
			})
		}
		close(start)
		if err := g.Wait(); err != nil {
			t.Fatalf("AcquireAll in opposite orders: %v", err)
		}
	})

	t.Run("HoldsEveryKey", func(t *testing.T) {
		ctx := pgtest.Context(t, 30*time.Second)
		tx1, tx2 := begin(t, ctx, pool), begin(t, ctx, pool)
		c := lock.NewKey("test", "c")
		if err := lock.AcquireAll(ctx, tx1, c, a, b, a); err != nil {
			t.Fatal(err)
		}
		for _, k := range []lock.Key{a, b, c} {
			if ok, err := lock.TryAcquire(ctx, tx2, k); err != nil || ok {
				t.Errorf("TryAcquire(%s) while AcquireAll holds it = %v, %v", k, ok, err)
			}
		}
	})
}

func TestRun(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, nil)
	ctx := pgtest.Context(t, 30*time.Second)
	if _, err := pool.Exec(ctx, "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	key := lock.NewKey("test", "run")
	count := func() (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	assertReleased := func() {
		t.Helper()
		if g, w := lockRows(t, pool, key); g+w != 0 {
			t.Fatalf("pg_locks holds %d granted and %d waiting locks on %s after Run returned", g, w, key)
		}
		if s := pool.Stat(); s.AcquiredConns() != 0 {
			t.Fatalf("%d connections still acquired after Run returned", s.AcquiredConns())
		}
	}
	insert := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)")
		return err
	}

	t.Run("CommitsAndReleases", func(t *testing.T) {
		before := count()
		if err := lock.Run(ctx, pool, key, insert); err != nil {
			t.Fatal(err)
		}
		if count() != before+1 {
			t.Fatal("fn's insert was not committed")
		}
		assertReleased()
	})

	t.Run("ErrorRollsBackAndReleases", func(t *testing.T) {
		before := count()
		boom := errors.New("boom")
		err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
			if err := insert(ctx, tx); err != nil {
				return err
			}
			return boom
		})
		if err != boom {
			t.Fatalf("Run = %v, want fn's error unchanged", err)
		}
		if count() != before {
			t.Fatal("fn's insert was committed despite its error")
		}
		assertReleased()
	})

	t.Run("PanicRollsBackReleasesAndRepanics", func(t *testing.T) {
		before := count()
		got := func() (p any) {
			defer func() { p = recover() }()
			lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				insert(ctx, tx)
				panic("fn panicked")
			})
			return nil
		}()
		if got != "fn panicked" {
			t.Fatalf("recovered %v, want fn's panic", got)
		}
		if count() != before {
			t.Fatal("fn's insert was committed despite its panic")
		}
		assertReleased()
	})

	t.Run("CtxDoneDuringFnCommitsNothing", func(t *testing.T) {
		before := count()
		fnCtx, cancel := context.WithCancel(ctx)
		err := lock.Run(fnCtx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
			err := insert(ctx, tx)
			cancel()
			return err
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
		if count() != before {
			t.Fatal("committed although ctx was done before the commit")
		}
		assertReleased()
	})

	t.Run("NestedRunForTheSameKeyIsRefused", func(t *testing.T) {
		err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
			if err := lock.Run(ctx, pool, key, insert); !errors.Is(err, lock.ErrReentrant) {
				t.Errorf("nested Run, same key = %v, want ErrReentrant", err)
			}
			return lock.Run(ctx, pool, lock.NewKey("test", "other"), insert)
		})
		if err != nil {
			t.Fatalf("nested Run, other key: %v", err)
		}
		assertReleased()
	})

	t.Run("ManagedTransaction", func(t *testing.T) {
		var leaked pgx.Tx
		err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
			leaked = tx
			if err := tx.Commit(ctx); !errors.Is(err, lock.ErrManaged) {
				t.Errorf("Commit inside fn = %v, want ErrManaged", err)
			}
			if err := tx.Rollback(ctx); !errors.Is(err, lock.ErrManaged) {
				t.Errorf("Rollback inside fn = %v, want ErrManaged", err)
			}
			sp, err := tx.Begin(ctx) // a savepoint
			if err != nil {
				return err
			}
			if err := insert(ctx, sp); err != nil {
				return err
			}
			return sp.Rollback(ctx)
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaked.Exec(ctx, "SELECT 1"); !errors.Is(err, pgx.ErrTxClosed) {
			t.Fatalf("tx used after Run = %v, want pgx.ErrTxClosed", err)
		}
		assertReleased()
	})

	t.Run("NilFn", func(t *testing.T) {
		if err := lock.Run(ctx, pool, key, nil); err == nil {
			t.Fatal("Run(nil fn) = nil")
		}
	})
}
