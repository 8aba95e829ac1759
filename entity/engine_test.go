package entity_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

var _ entity.Beginner = (*pgxpool.Pool)(nil)

// twoDatabases sends its sessions to two databases in turn, as a load
// balancer in front of nodes whose locks are node-local would: advisory
// locks are scoped to a database, so a lock taken in one never blocks a
// session in the other.
type twoDatabases struct {
	pools [2]*pgxpool.Pool
	n     atomic.Int32
}

func (d *twoDatabases) Begin(ctx context.Context) (pgx.Tx, error) {
	return d.pools[(d.n.Add(1)-1)%2].Begin(ctx)
}

// meetFirst delays the first Begin until a second Begin comes (or a short
// while passes), so two CheckEngine calls made at once would each take one of
// a two-connection pool's connections before either takes its second.
type meetFirst struct {
	pool   *pgxpool.Pool
	n      atomic.Int32
	second chan struct{}
}

func (m *meetFirst) Begin(ctx context.Context) (pgx.Tx, error) {
	switch m.n.Add(1) {
	case 1:
		select {
		case <-m.second:
		case <-time.After(300 * time.Millisecond): // the calls ran one at a time
		}
	case 2:
		close(m.second)
	}
	return m.pool.Begin(ctx)
}

func TestCheckEngine(t *testing.T) {
	t.Parallel()
	pool, ctx := setup(t)

	t.Run("PostgreSQLPassesTheProbe", func(t *testing.T) {
		for _, s := range []entity.Strategy{entity.Advisory, entity.RowLock} {
			if err := entity.CheckEngine(ctx, pool, s); err != nil {
				t.Errorf("CheckEngine(%v) on PostgreSQL: %v", s, err)
			}
		}
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d advisory locks left behind by the probe", n)
		}
	})

	t.Run("LocksThatDoNotSeeEachOtherFail", func(t *testing.T) {
		split := &twoDatabases{pools: [2]*pgxpool.Pool{pool, pgtest.Pool(t, nil)}}
		err := entity.CheckEngine(ctx, split, entity.Advisory)
		if !errors.Is(err, entity.ErrAdvisoryUnsupported) {
			t.Fatalf("CheckEngine across two databases = %v, want ErrAdvisoryUnsupported", err)
		}
		t.Log(err)
		if err := entity.CheckEngine(ctx, split, entity.RowLock); err != nil {
			t.Errorf("CheckEngine(RowLock) across two databases = %v, want nil", err)
		}
	})

	t.Run("OneConnectionIsRefused", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, pool.Config().ConnConfig.ConnString())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		err = entity.CheckEngine(ctx, conn, entity.Advisory)
		if err == nil || errors.Is(err, entity.ErrAdvisoryUnsupported) {
			t.Fatalf("CheckEngine on one *pgx.Conn = %v, want an error asking for a pool", err)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := entity.CheckEngine(cctx, pool, entity.Advisory); !errors.Is(err, context.Canceled) {
			t.Fatalf("CheckEngine with a cancelled ctx = %v, want context.Canceled", err)
		}
	})

	t.Run("ConcurrentCallsOnASmallPool", func(t *testing.T) {
		small := pgtest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
		b := &meetFirst{pool: small, second: make(chan struct{})}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- entity.CheckEngine(cctx, b, entity.Advisory) }()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("two CheckEngine calls at once on a pool of 2: %v", err)
			}
		}
	})

	t.Run("PoolOfOneIsRefusedAtOnce", func(t *testing.T) {
		one := pgtest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := entity.CheckEngine(cctx, one, entity.Advisory)
		if err == nil || errors.Is(err, entity.ErrAdvisoryUnsupported) || cctx.Err() != nil {
			t.Fatalf("CheckEngine on a pool of MaxConns 1 = %v (ctx: %v), want an error at once naming MaxConns", err, cctx.Err())
		}
		t.Log(err)
	})

	// With takes pg_try_advisory_xact_lock when its key is cold in its
	// process, and pg_advisory_xact_lock when it must wait: where a role may
	// not execute either, With fails (when it must wait, for the second), and
	// the probe must not pass.
	for _, fn := range []string{"pg_advisory_xact_lock", "pg_try_advisory_xact_lock"} {
		t.Run("Revoked/"+fn, func(t *testing.T) {
			role := fmt.Sprintf("paylock_probe_%d", time.Now().UnixNano()%1e9)
			if _, err := pool.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
				t.Skipf("can't create a role here: %v", err)
			}
			t.Cleanup(func() {
				pool.Exec(context.Background(), "GRANT EXECUTE ON FUNCTION "+fn+"(bigint) TO PUBLIC")
				pool.Exec(context.Background(), "DROP OWNED BY "+role)
				pool.Exec(context.Background(), "DROP ROLE "+role)
			})
			for _, q := range []string{
				"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO " + role,
				"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO " + role,
				"REVOKE EXECUTE ON FUNCTION " + fn + "(bigint) FROM PUBLIC",
			} {
				if _, err := pool.Exec(ctx, q); err != nil {
					t.Skipf("%s: %v", q, err)
				}
			}
			cfg := pool.Config().Copy()
			cfg.ConnConfig.User = role
			rp, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer rp.Close()
			// Another session holds the key, so With must wait.
			holder, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Release()
			if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey("li_revoked").ID()); err != nil {
				t.Fatal(err)
			}
			defer holder.Exec(context.Background(), "SELECT pg_advisory_unlock_all()")
			withErr := entity.New(rp, counters{}).With(ctx, "li_revoked",
				func(context.Context, pgx.Tx, *counter) error { return nil })
			var pgErr *pgconn.PgError
			if !errors.As(withErr, &pgErr) || pgErr.Code != "42501" {
				t.Fatalf("With without EXECUTE on %s = %v, want a permission error (42501)", fn, withErr)
			}
			if err := entity.CheckEngine(ctx, rp, entity.Advisory); err == nil {
				t.Errorf("CheckEngine passed for a role whose With fails: %v", withErr)
			} else {
				t.Log(err)
			}
		})
	}
}
