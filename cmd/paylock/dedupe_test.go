package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/pgtest"
	"github.com/paylock/paylock/internal/testdata"
	"github.com/paylock/paylock/payment"
)

// liveDB returns the URL of a database whose payments table predates paylock:
// no unique index, 2,000 payments, 5% of the keys duplicated.
func liveDB(t *testing.T, ctx context.Context) (string, *pgxpool.Pool, testdata.Stats) {
	t.Helper()
	url := pgtest.DB(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, payment.Schema); err != nil {
		t.Fatal(err)
	}
	st, err := testdata.Generate(ctx, pool, testdata.Options{Payments: 2_000, DuplicateRate: 0.05})
	if err != nil {
		t.Fatal(err)
	}
	return url, pool, st
}

func rowCount(t *testing.T, pool *pgxpool.Pool, table string) (n int) {
	t.Helper()
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMigrateAndDedupe(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	url, pool, st := liveDB(t, ctx)

	// migrate refuses, names the duplicates and points to dedupe.
	code, out, errOut := paylock(ctx, "migrate", "--database-url", url)
	if code != 1 || !strings.Contains(out, "100 keys have 130 extra rows") || !strings.Contains(out, "paylock dedupe") ||
		errOut != "paylock migrate: 100 duplicate groups; run 'paylock dedupe' first\n" {
		t.Fatalf("migrate on duplicates = %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	golden(t, "migrate-duplicates.golden", out)

	// --dry-run reports and changes nothing.
	out = mustRun(t, ctx, "dedupe", "--dry-run", "--database-url", url)
	golden(t, "dedupe-dry-run.golden", out)
	if rows := rowCount(t, pool, "payments"); rows != st.Rows {
		t.Fatalf("--dry-run changed payments: %d rows, want %d", rows, st.Rows)
	}

	// The real run: plain progress lines (stdout is not a terminal).
	out = mustRun(t, ctx, "dedupe", "--batch", "30", "--database-url", url)
	golden(t, "dedupe.golden", mask(out))
	if rows, moved := rowCount(t, pool, "payments"), rowCount(t, pool, "payment_duplicates"); rows != st.Keys || moved != st.ExtraRows {
		t.Fatalf("after dedupe: %d payments, %d quarantined; want %d and %d", rows, moved, st.Keys, st.ExtraRows)
	}

	if out := mustRun(t, ctx, "migrate", "--database-url", url); !strings.Contains(out, "up to date") {
		t.Fatalf("migrate after dedupe: %s", out)
	}
	if out := mustRun(t, ctx, "dedupe", "--database-url", url); !strings.Contains(out, "nothing to do") {
		t.Fatalf("dedupe again: %s", out)
	}
}

func TestMigrateFreshDatabase(t *testing.T) { // not parallel: it sets DATABASE_URL
	ctx := testCtx(t, 30*time.Second)
	url := pgtest.DB(t)
	for range 2 { // idempotent
		if out := mustRun(t, ctx, "migrate", "--database-url", url); !strings.Contains(out, "up to date") {
			t.Fatalf("migrate: %s", out)
		}
	}
	// DATABASE_URL is the fallback for --database-url.
	t.Setenv("DATABASE_URL", url)
	mustRun(t, ctx, "migrate")
}
