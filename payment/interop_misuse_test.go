package payment_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// misusePy calls with_payment of docs/INTEROP.md the ways a caller can get
// wrong: nested in its own fn, inside the caller's transaction, and with the
// service id as text. It prints one line per case.
const misusePy = `
import os, sys
sys.path.insert(0, sys.argv[1])
import psycopg
from paylock_interop import with_payment

MYLOCK = """SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid()"""

with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    def inner(p):
        p["amount_cents"] += 10

    def outer(p):
        p["amount_cents"] += 1
        with_payment(conn, 7, "li_nested", inner)

    try:
        with_payment(conn, 7, "li_nested", outer)
        print("nested returned")
    except psycopg.ProgrammingError:
        print("nested refused")
    try:
        with conn.transaction():
            with_payment(conn, 7, "li_outer", inner)
        print("in a transaction returned")
    except psycopg.ProgrammingError:
        print("in a transaction refused")
    held = []
    with_payment(conn, "07", "li_text", lambda p: held.extend(r[0] for r in conn.execute(MYLOCK)))
    print("text service id locked", *held)
    iso = []
    with_payment(conn, 7, "li_iso", lambda p: iso.append(conn.execute("SHOW transaction_isolation").fetchone()[0]))
    print("isolation", iso[0])
`

// misuseRb does the same with Payment.with of examples/ruby/payment.rb.
const misuseRb = `
require_relative ARGV[0]
ActiveRecord::Base.establish_connection(url: ENV.fetch("DATABASE_URL"))
MYLOCK = "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
begin
  Payment.with(line_item_id: "li_nested", service_id: 7) { Payment.with(line_item_id: "li_nested", service_id: 7) {} }
  puts "nested returned"
rescue ActiveRecord::TransactionIsolationError
  puts "nested refused"
end
begin
  ActiveRecord::Base.transaction { Payment.with(line_item_id: "li_outer", service_id: 7) {} }
  puts "in a transaction returned"
rescue ActiveRecord::TransactionIsolationError
  puts "in a transaction refused"
end
held = []
Payment.with(line_item_id: "li_text", service_id: "07") { held = Payment.connection.select_values(MYLOCK) }
puts "text service id locked #{held.join(" ")}"
Payment.with(line_item_id: "li_iso", service_id: 7) { puts "isolation #{Payment.connection.select_value("SHOW transaction_isolation")}" }
`

// TestInteropMisuse: the Ruby and Python clients refuse to run nested or
// inside the caller's transaction, where their lock and row lock would last
// until that transaction ends and a nested call's update would be lost
// under the outer one's; and a service id given as text ("07") takes the
// lock of Go's key for that payment, ("payments", "7", line item). Both run
// READ COMMITTED on a database whose default is SERIALIZABLE.
func TestInteropMisuse(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (7, 'acme')"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = serializable', current_database()); END$$"); err != nil {
		t.Fatal(err)
	}
	dsn := pool.Config().ConnString()
	want := []string{"nested refused", "in a transaction refused",
		fmt.Sprint("text service id locked ", lock.NewKey("payments", "7", "li_text").ID()), "isolation read committed"}
	check := func(t *testing.T, lines []string) {
		if !slices.Equal(lines, want) {
			t.Errorf("got\n%q\nwant\n%q", lines, want)
		}
	}
	t.Run("Python", func(t *testing.T) {
		check(t, output(t, script(ctx, dsn, python(t), "-c", misusePy, pythonSnippet(t))))
	})
	t.Run("Ruby", func(t *testing.T) {
		rb, err := filepath.Abs(filepath.Join("..", "examples", "ruby", "payment.rb"))
		if err != nil {
			t.Fatal(err)
		}
		check(t, output(t, script(ctx, dsn, ruby(t), "-e", misuseRb, rb)))
	})
}
