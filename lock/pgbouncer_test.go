package lock_test

import (
	"context"
	"database/sql"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/paylock/paylock/internal/testing/pgbouncer"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestBehindPgbouncer: Run and RunDB through a transaction-mode pgbouncer
// with one server connection, which every client connection shares. The
// probe for client_connection_check_interval and the setting itself last
// only for their own transaction, so nothing sticks to the server connection
// that another client then gets.
func TestBehindPgbouncer(t *testing.T) {
	t.Parallel()
	if _, err := pgbouncer.Find(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx := pgtest.Context(t, 30*time.Second)
	direct := pgtest.Pool(t, nil)
	cc := direct.Config().ConnConfig
	b, err := pgbouncer.Start(ctx, cc.Host, int(cc.Port), cc.User, pgbouncer.Options{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	cfg := direct.Config().Copy()
	host, port, _ := net.SplitHostPort(b.Addr())
	p, _ := strconv.Atoi(port)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Fallbacks = host, uint16(p), nil
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db := stdlib.OpenDB(*cfg.ConnConfig)
	defer db.Close()

	interval := func() string {
		t.Helper()
		var v string
		if err := pool.QueryRow(ctx, "SHOW client_connection_check_interval").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	key := lock.NewKey("test", "pgbouncer")
	for i := range 3 {
		var inRun, inRunDB string
		if err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
			return tx.QueryRow(ctx, "SHOW client_connection_check_interval").Scan(&inRun)
		}); err != nil {
			t.Fatalf("Run %d: %v", i, err)
		}
		if err := lock.RunDB(ctx, db, key, func(ctx context.Context, tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, "SHOW client_connection_check_interval").Scan(&inRunDB)
		}); err != nil {
			t.Fatalf("RunDB %d: %v", i, err)
		}
		if inRun != "1s" || inRunDB != "1s" {
			t.Fatalf("in Run %q, in RunDB %q; want 1s, set for the transaction", inRun, inRunDB)
		}
		if v := interval(); v != "0" {
			t.Fatalf("outside a transaction the shared server connection has %q; want 0, nothing left behind", v)
		}
	}
}
