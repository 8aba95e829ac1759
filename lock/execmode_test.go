package lock_test

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestDatabaseSQLPreparesNothingPerKey: AcquireTx, TryAcquireTx and RunDB
// through pgx's stdlib driver leave no prepared statement per key on the
// connection, whatever default_query_exec_mode the DSN asks for.
func TestDatabaseSQLPreparesNothingPerKey(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	url := pgtest.DB(t)
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			db, err := sql.Open("pgx", url+sep(url)+"default_query_exec_mode="+mode)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1) // every call on the one connection counted
			count := func() (n int) {
				t.Helper()
				if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			key := func(i int) lock.Key { return lock.NewKey("test", "execmode", mode, strconv.Itoa(i)) }
			// One of each first: what the driver caches once is not per key.
			use := func(i int) {
				t.Helper()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				if err := lock.AcquireTx(ctx, tx, key(i)); err != nil {
					t.Fatal(err)
				}
				if ok, err := lock.TryAcquireTx(ctx, tx, key(i+1000)); err != nil || !ok {
					t.Fatalf("TryAcquireTx = %v, %v", ok, err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				if err := lock.RunDB(ctx, db, key(i+2000), func(context.Context, *sql.Tx) error { return nil }); err != nil {
					t.Fatal(err)
				}
			}
			use(0)
			before := count()
			for i := 1; i <= 20; i++ {
				use(i)
			}
			if after := count(); after != before {
				t.Fatalf("%d prepared statements after 20 more keys, %d before", after, before)
			}
		})
	}
}

func sep(url string) string {
	for _, c := range url {
		if c == '?' {
			return "&"
		}
	}
	return "?"
}
