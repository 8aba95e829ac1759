package lock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestRunWritesWhateverTheReadOnlyDefault: Run and RunDB begin READ WRITE,
// as they begin READ COMMITTED, whatever default a database, a role or an
// earlier fn's SET SESSION CHARACTERISTICS gave the session: fn's write
// succeeds in a database whose default_transaction_read_only is on, and
// after an fn that made its pooled session's default READ ONLY.
func TestRunWritesWhateverTheReadOnlyDefault(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	url := pgtest.DB(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	db := pgx.Identifier{conn.Config().Database}.Sanitize()
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s SET default_transaction_read_only = on", db)); err != nil {
		t.Fatal(err)
	}
	runs, pool := runners(t, url) // sessions opened now get the default
	var readOnly string
	if err := pool.QueryRow(ctx, "SHOW transaction_read_only").Scan(&readOnly); err != nil || readOnly != "on" {
		t.Fatalf("a new session's transaction_read_only = %q (%v), want on: the test sets nothing", readOnly, err)
	}
	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			key := lock.NewKey("read_only_default", r.name)
			for j, stmt := range []string{
				"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
				"SET default_transaction_read_only = on",
			} {
				v := 10*i + j
				err := r.run(ctx, lock.Options{}, key, func(ctx context.Context, do do) error {
					if err := do(ctx, stmt); err != nil {
						return err
					}
					return do(ctx, fmt.Sprintf("INSERT INTO t VALUES (%d)", v))
				})
				if err != nil {
					t.Fatalf("%s after %q: %v", r.name, stmt, err)
				}
				// Every session of the pool, the one fn made read only
				// among them.
				for range 4 {
					if err := r.run(ctx, lock.Options{}, key, func(ctx context.Context, do do) error {
						return do(ctx, fmt.Sprintf("INSERT INTO t VALUES (%d)", 100+v))
					}); err != nil {
						t.Fatalf("%s after an fn ran %q: %v", r.name, stmt, err)
					}
				}
			}
		})
	}
}
