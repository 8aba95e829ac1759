package entity_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/pgtest"
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
}
