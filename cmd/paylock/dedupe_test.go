package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/livetable"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// liveDB returns the URL of a database whose payments table predates paylock:
// no unique index, 2,000 payments, 5% of the keys duplicated.
func liveDB(t *testing.T, ctx context.Context) (string, *pgxpool.Pool, livetable.Stats) {
	t.Helper()
	url := pgtest.DB(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, payment.Schema()); err != nil {
		t.Fatal(err)
	}
	st, err := livetable.Generate(ctx, pool, livetable.Options{Payments: 2_000, DuplicateRate: 0.05})
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
	ctx := pgtest.Context(t, time.Minute)
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

// TestMigrateFreshDatabase: on an empty database migrate says what it
// created; run again, it creates nothing and says the schema is up to date.
func TestMigrateFreshDatabase(t *testing.T) { // not parallel: it sets DATABASE_URL
	ctx := pgtest.Context(t, 30*time.Second)
	url := pgtest.DB(t)
	out := mustRun(t, ctx, "migrate", "--database-url", url)
	var created []string
	for _, l := range outputLines(out) {
		if what, ok := strings.CutPrefix(l, "created "); ok {
			created = append(created, strings.Join(strings.Fields(what)[:2], " "))
		}
	}
	want := []string{"table services", "table payments", "function paylock_key_id(namespace", "unique index"}
	if !slices.Equal(created, want) || !strings.Contains(out, "created unique index "+payment.UniqueIndex+" ") ||
		!strings.Contains(out, "schema is up to date") {
		t.Fatalf("migrate on an empty database created %q, want %q:\n%s", created, want, out)
	}
	if out := mustRun(t, ctx, "migrate", "--database-url", url); strings.Contains(out, "created") || !strings.Contains(out, "up to date") {
		t.Fatalf("migrate again: %s", out)
	}
	// DATABASE_URL is the fallback for --database-url.
	t.Setenv("DATABASE_URL", url)
	mustRun(t, ctx, "migrate")
}

// Ctrl-C in the middle of the merge: exit 1 with one line saying how to go
// on; the next run finishes the job and the counts add up.
func TestDedupeInterruptedThenResumed(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	url, pool, st := liveDB(t, ctx)
	runCtx, cancel := context.WithCancel(ctx)
	type result struct {
		code        int
		out, errOut string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := paylock(runCtx, "dedupe", "--batch", "1", "--database-url", url)
		done <- result{code, out, errOut}
	}()
	for { // cancel as soon as the first batch is committed
		var n int
		if pool.QueryRow(ctx, "SELECT count(*) FROM payment_duplicates").Scan(&n); n > 0 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	r := <-done
	if r.code != 1 || !strings.HasPrefix(r.errOut, "paylock dedupe: interrupted after ") ||
		!strings.HasSuffix(r.errOut, "run 'paylock dedupe' again to continue\n") {
		t.Fatalf("interrupted dedupe = %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.errOut)
	}
	moved := rowCount(t, pool, "payment_duplicates")
	if moved == 0 || moved >= st.ExtraRows || rowCount(t, pool, "payments")+moved != st.Rows {
		t.Fatalf("after the interruption %d rows quarantined of %d; counts must add up to %d", moved, st.ExtraRows, st.Rows)
	}
	out := mustRun(t, ctx, "dedupe", "--database-url", url)
	if !strings.Contains(out, "quarantine payment_duplicates: "+itoa(moved)+" rows") {
		t.Errorf("the second run's report does not show the %d rows already moved:\n%s", moved, out)
	}
	if rows, q := rowCount(t, pool, "payments"), rowCount(t, pool, "payment_duplicates"); rows != st.Keys || q != st.ExtraRows {
		t.Fatalf("after the second run: %d payments, %d quarantined; want %d and %d", rows, q, st.Keys, st.ExtraRows)
	}
}

func TestProgressBar(t *testing.T) {
	var b strings.Builder
	bar := newProgressBar(&b, true)
	bar.update(dedupeProgress(1, 25, 100))
	bar.update(dedupeProgress(1, 100, 100))
	got := b.String()
	if want := "\r\x1b[2Kpass 1 [#######.......................]  25%  25/100 keys"; !strings.HasPrefix(got, want) {
		t.Errorf("terminal bar = %q, want it to start with %q", got, want)
	}
	if !strings.Contains(got, "[##############################] 100%") || !strings.HasSuffix(got, "\n") {
		t.Errorf("finished bar = %q, want a full bar and a newline", got)
	}
	b.Reset()
	plain := newProgressBar(&b, false)
	plain.update(dedupeProgress(1, 25, 100))
	plain.update(dedupeProgress(1, 50, 100)) // within the second: not printed
	plain.update(dedupeProgress(1, 100, 100))
	if lines := strings.Count(b.String(), "\n"); lines != 2 || strings.Contains(b.String(), "\r") {
		t.Errorf("plain progress = %q, want 2 plain lines", b.String())
	}
}

// TestDedupeWithoutPaymentsTable: on a database without the payments table
// dedupe fails in one line that says so and points to migrate, not with
// PostgreSQL's "relation does not exist".
func TestDedupeWithoutPaymentsTable(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	url := pgtest.DB(t)
	for _, args := range [][]string{{"dedupe", "--dry-run"}, {"dedupe"}} {
		code, out, errOut := paylock(ctx, append(args, "--database-url", url)...)
		if code != 1 || out != "" || !strings.Contains(errOut, "no payments table") || !strings.Contains(errOut, "paylock migrate") ||
			strings.Count(errOut, "\n") != 1 {
			t.Errorf("paylock %q on an empty database = %d, stdout %q, stderr %q; want exit 1 and one line naming migrate", args, code, out, errOut)
		}
	}
}
