package payment_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/pgserver"
	"github.com/paylock/paylock/payment"
)

// psqlScript runs payment.SchemaScript with psql, as docs/INTEROP.md says
// (psql -v ON_ERROR_STOP=1 -f), on the database at url, and returns its
// combined output and error.
func psqlScript(t *testing.T, ctx context.Context, url string) (string, error) {
	t.Helper()
	// The server's own psql, else the one on PATH: a build without one
	// (make test-versions') is run with whichever psql the machine has.
	psql := "psql"
	if dir, err := pgserver.FindBinDir(); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "psql")); err == nil {
			psql = filepath.Join(dir, "psql")
		}
	}
	cmd := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", url)
	cmd.Stdin = strings.NewReader(payment.SchemaScript())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// catalog describes what a schema made of the public schema: each table's
// columns, each constraint and index by its definition, each function by its
// definition, one line per thing, sorted.
func catalog(t *testing.T, ctx context.Context, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(ctx, `
		SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
			|| CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
			|| CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
			|| coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
		LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
		UNION ALL
		SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		FROM pg_constraint WHERE connamespace = 'public'::regnamespace
		UNION ALL
		SELECT 'index ' || pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END
		FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace
		UNION ALL
		SELECT 'function ' || pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
		ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// TestSchemaScript: the script `paylock migrate --print-sql` prints, run with
// psql on an empty database (twice: it is idempotent), makes exactly what
// payment.Migrate makes (the tables, the foreign key to services, the unique
// index by name and definition, the function), and Migrate afterwards finds
// nothing to do. On a table with duplicates it stops before the index; after
// a failed build it refuses the INVALID index it finds.
func TestSchemaScript(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	migrated := paytest.Pool(t)
	want := catalog(t, ctx, migrated)
	for _, w := range []string{
		"index CREATE UNIQUE INDEX " + payment.UniqueIndex + " ON public.payments USING btree (service_id, line_item_id)",
		"constraint payments payments_service_id_fkey FOREIGN KEY (service_id) REFERENCES services(id)",
	} {
		if !slices.Contains(want, w) {
			t.Fatalf("Migrate's schema has no %q: %q", w, want)
		}
	}

	url := pgtest.DB(t)
	scripted, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer scripted.Close()
	for run := 1; run <= 2; run++ {
		if out, err := psqlScript(t, ctx, url); err != nil {
			t.Fatalf("psql, run %d: %v\n%s", run, err, out)
		}
		if got := catalog(t, ctx, scripted); !slices.Equal(got, want) {
			t.Fatalf("run %d: the script made\n%s\nMigrate makes\n%s", run, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if err := payment.Migrate(ctx, scripted); err != nil {
		t.Fatal(err)
	}
	if got := catalog(t, ctx, scripted); !slices.Equal(got, want) {
		t.Fatalf("Migrate changed the script's schema to\n%s", strings.Join(got, "\n"))
	}

	// Duplicates: the script stops before the index, as Migrate does.
	if _, err := scripted.Exec(ctx, `DROP INDEX `+payment.UniqueIndex+`;
		INSERT INTO services VALUES (1, 'api');
		INSERT INTO payments (service_id, line_item_id) VALUES (1, 'li_1'), (1, 'li_1')`); err != nil {
		t.Fatal(err)
	}
	out, err := psqlScript(t, ctx, url)
	if err == nil || !strings.Contains(out, "payments holds duplicate (service_id, line_item_id) rows") {
		t.Fatalf("psql on duplicates: %v\n%s", err, out)
	}
	if oid, _ := paytest.UniqueIndex(t, scripted); oid != 0 {
		t.Fatal("the script built an index on duplicates")
	}

	// A failed build leaves an INVALID index, which IF NOT EXISTS would keep.
	if _, err := scripted.Exec(ctx, "CREATE UNIQUE INDEX CONCURRENTLY "+payment.UniqueIndex+" ON payments (service_id, line_item_id)"); err == nil {
		t.Fatal("the index was built on duplicates")
	}
	if _, err := scripted.Exec(ctx, "DELETE FROM payments WHERE id = (SELECT max(id) FROM payments)"); err != nil {
		t.Fatal(err)
	}
	out, err = psqlScript(t, ctx, url)
	if err == nil || !strings.Contains(out, "index "+payment.UniqueIndex+" is INVALID") {
		t.Fatalf("psql on an INVALID index: %v\n%s", err, out)
	}
}
