package main

import (
	"context"
	"testing"

	"github.com/paylock/paylock/payment"
)

// TestMigratePrintSQL: `paylock migrate --print-sql` prints
// payment.SchemaScript (which payment's TestSchemaScript runs with psql and
// compares with Migrate's schema) and needs no database: the URL given
// points nowhere.
func TestMigratePrintSQL(t *testing.T) {
	t.Parallel()
	code, out, errOut := paylock(context.Background(), "migrate", "--print-sql", "--database-url", "postgres://nobody@127.0.0.1:1/x")
	if code != 0 || errOut != "" || out != payment.SchemaScript() {
		t.Fatalf("exit %d, stderr %q, stdout equal to payment.SchemaScript: %v", code, errOut, out == payment.SchemaScript())
	}
	if code, _, _ := paylock(context.Background(), "migrate", "--print-sql", "extra"); code != exitUsage {
		t.Fatalf("migrate --print-sql extra: exit %d, want %d", code, exitUsage)
	}
}
