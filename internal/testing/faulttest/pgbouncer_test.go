package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgbouncer"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// bouncer starts a transaction-mode pgbouncer with poolSize server
// connections in front of pool's server. It skips the test, saying why, only
// when no pgbouncer binary is installed.
func bouncer(t *testing.T, pool *pgxpool.Pool, poolSize int) *pgbouncer.Bouncer {
	t.Helper()
	if _, err := pgbouncer.Find(); err != nil {
		t.Skipf("skipping the pgbouncer tests: %v", err)
	}
	host, port, _ := net.SplitHostPort(serverAddr(pool))
	p, _ := strconv.Atoi(port)
	b, err := pgbouncer.Start(pgtest.Context(t, time.Minute), host, p, pool.Config().ConnConfig.User, pgbouncer.Options{PoolSize: poolSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	return b
}

// TestPgbouncer runs With behind pgbouncer 1.18 in transaction pooling mode,
// where each transaction may get a different server connection and
// prepared statements don't survive the transaction.
func TestPgbouncer(t *testing.T) {
	t.Parallel()

	// With follows the pool's pgx mode: in exec mode (the setting a pooler
	// without prepared-statement support needs) it sends only unnamed
	// statements. 8 workers on 2 payments through 4 server connections
	// serialize.
	t.Run("WithSerializes", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, time.Minute)
		pool := newPool(t)
		b := bouncer(t, pool, 4)
		viaBouncer := poolOn(t, pool, b.Addr(), func(c *pgxpool.Config) {
			c.MaxConns = 8
			c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
		})
		repo := payment.NewRepository(viaBouncer)
		l := newLedger()
		const workers, calls = 8, 20
		began := time.Now()
		if err := runCalls(ctx, l, repo, workers, calls); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE pgbouncer: %d calls by 8 workers through 4 server connections in %v", workers*calls, time.Since(began).Round(time.Millisecond))
		l.check(t, pool)
	})

	// pgx's default mode prepares named statements, With's own and fn's.
	// Behind pgbouncer 1.18 a second client that lands on the same server
	// connection fails to prepare the same statement: a clear error (42P05
	// or 26000), not a hang. default_query_exec_mode=exec
	// (pgx.QueryExecModeExec: unnamed statements, still typed parameters)
	// works.
	t.Run("FnQueriesNeedExecMode", func(t *testing.T) {
		t.Parallel()
		pool := newPool(t)
		b := bouncer(t, pool, 1) // one server connection: the clients share it
		fnQuery := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			var n int64
			if err := tx.QueryRow(ctx, "SELECT $1::bigint + 1", p.AmountCents).Scan(&n); err != nil {
				return err
			}
			p.AmountCents = n
			return nil
		}
		run := func(configure func(*pgxpool.Config)) error {
			ctx := pgtest.Context(t, 10*time.Second)
			for i := range 2 { // two clients, one after the other
				c := poolOn(t, pool, b.Addr(), func(c *pgxpool.Config) {
					c.MaxConns = 1
					if configure != nil {
						configure(c)
					}
				})
				if err := payment.NewRepository(c).With(ctx, key(1), fnQuery); err != nil {
					return fmt.Errorf("client %d: %w", i, err)
				}
				c.Close()
			}
			return nil
		}
		err := run(nil)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "42P05" && pgErr.Code != "26000") {
			t.Fatalf("default exec mode behind pgbouncer: %v; want a prepared-statement error (42P05 or 26000)", err)
		}
		t.Logf("default exec mode: %v", err)
		if err := run(func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec }); err != nil {
			t.Fatalf("exec mode behind pgbouncer: %v", err)
		}
		p, err := payment.NewRepository(pool).Get(pgtest.Context(t, 10*time.Second), key(1))
		if err != nil || p.AmountCents != 3 {
			t.Fatalf("payment after 1 failed and 2 good calls: %+v, %v; want amount 3", p, err)
		}
	})

	// Why paylock uses transaction-scoped locks: a session-level advisory
	// lock outlives the transaction, stays on the server connection, and
	// the next client given that connection holds it too.
	t.Run("SessionLockDoesNotSerialize", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, 10*time.Second)
		pool := newPool(t)
		b := bouncer(t, pool, 1)
		tryLock := func(p *pgxpool.Pool, id int64) bool {
			var got bool
			if err := p.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", pgx.QueryExecModeExec, id).Scan(&got); err != nil {
				t.Fatal(err)
			}
			return got
		}
		// Directly connected, the second client is refused: the lock works.
		a, c := poolOn(t, pool, "", nil), poolOn(t, pool, "", nil)
		direct := key(1).LockKey().ID()
		if !tryLock(a, direct) || tryLock(c, direct) {
			t.Fatal("directly connected, the session lock did not exclude the second client")
		}
		// Behind pgbouncer both clients "hold" it. (WithSerializes shows
		// the transaction-scoped lock working through the same pooler.)
		a, c = poolOn(t, pool, b.Addr(), nil), poolOn(t, pool, b.Addr(), nil)
		pooled := key(2).LockKey().ID()
		if !tryLock(a, pooled) {
			t.Fatal("behind pgbouncer, the first client did not get the session lock")
		}
		if !tryLock(c, pooled) {
			t.Fatal("behind pgbouncer the second client was refused: the demonstration failed")
		}
		t.Log("behind pgbouncer, two clients both got the same session-level advisory lock")
	})
}
