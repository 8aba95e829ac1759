package payment_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// The misuse scripts call each example's with the ways a caller can get
// wrong and print one line per case; TestInteropMisuse compares the lines.

// serviceIDInputs are the service ids each script canonicalizes, in order;
// serviceIDWant what each must print for them.
const (
	serviceIDInputsPy = `[7, "07", "7", "010", "1_000", " 7", "0x10", "\u0667", "9223372036854775808", "0"]`
	serviceIDWant     = "service ids 7 7 7 10 refused refused refused refused refused refused"
	// The settings each example applies, read inside fn.
	showBounds = "SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout'), " +
		"current_setting('statement_timeout'), current_setting('transaction_isolation'), current_setting('transaction_read_only')"
	myLock = "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
)

const misusePy = `
import os, sys, threading
sys.path.insert(0, sys.argv[1])
import psycopg
from poller import ReentrantError, service_id_text, with_payment

url = os.environ["DATABASE_URL"]
with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as conn2:
    try:
        with_payment(conn, 7, "li_nested", lambda p: with_payment(conn, 7, "li_nested", lambda q: None))
        print("nested returned")
    except psycopg.ProgrammingError as e:
        print("nested refused", type(e).__name__)
    try:
        with_payment(conn, 7, "li_nested", lambda p: with_payment(conn2, 7, "li_nested", lambda q: None))
        print("nested on another connection returned")
    except ReentrantError as e:
        print("nested on another connection refused", type(e).__name__)
    try:
        with conn.transaction():
            with_payment(conn, 7, "li_outer", lambda p: None)
        print("in a transaction returned")
    except psycopg.ProgrammingError:
        print("in a transaction refused")
    try:
        with_payment(conn, 99, "li_unknown", lambda p: None)
        print("unknown service returned")
    except psycopg.errors.ForeignKeyViolation as e:
        print("unknown service", e.sqlstate)
    with psycopg.connect(url, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(paylock_key_id('payments', '7', 'li_busy'))")
        try:
            with_payment(conn, 7, "li_busy", lambda p: None, lock_timeout_ms=100)
            print("lock timeout returned")
        except psycopg.errors.LockNotAvailable as e:
            n = conn.execute("SELECT count(*) FROM payments WHERE line_item_id = 'li_busy'").fetchone()[0]
            print("lock timeout", e.sqlstate, "rows", n)
    held = []
    with_payment(conn, "07", "li_text", lambda p: held.extend(r[0] for r in conn.execute(MYLOCK)))
    print("text service id locked", *held)

    def canon(x):
        try:
            return service_id_text(x)
        except ValueError:
            return "refused"

    print("service ids", *(canon(x) for x in INPUTS))
    print("python reads loosely", int("1_000"), int(" 7"), int("\u0667"))
    got = []
    with_payment(conn, 7, "li_bounds", lambda p: got.append(conn.execute(SHOW).fetchone()))
    with_payment(conn, 7, "li_bounds", lambda p: got.append(conn.execute(SHOW).fetchone()),
                 lock_timeout_ms=250, idle_timeout_ms=2000, statement_timeout_ms=5000)
    for g in got:
        print("bounds", *g)

    def outer(p):
        p["amount_cents"] += 1
        def inner():
            with psycopg.connect(url, autocommit=True) as c:
                with_payment(c, 7, "li_thread", lambda q: q.update(amount_cents=q["amount_cents"] + 10))
        t = threading.Thread(target=inner)
        t.start()
        t.join()

    try:
        with psycopg.connect(url, autocommit=True) as c:
            with_payment(c, 7, "li_thread", outer, idle_timeout_ms=2000)
        print("nested in a thread returned")
    except psycopg.Error:
        amount = conn.execute("SELECT amount_cents FROM payments WHERE service_id = 7 AND line_item_id = 'li_thread'").fetchone()[0]
        print("nested in a thread: outer failed, amount", amount)
`

const misuseRb = `
require_relative ARGV[0]
ActiveRecord::Base.establish_connection(url: ENV.fetch("DATABASE_URL"))
begin
  Payment.with(line_item_id: "li_nested", service_id: 7) { Payment.with(line_item_id: "li_nested", service_id: 7) {} }
  puts "nested returned"
rescue ActiveRecord::TransactionIsolationError => e
  puts "nested refused #{e.class.name.split("::").last}"
end
begin
  ActiveRecord::Base.transaction { Payment.with(line_item_id: "li_outer", service_id: 7) {} }
  puts "in a transaction returned"
rescue ActiveRecord::TransactionIsolationError
  puts "in a transaction refused"
end
begin
  Payment.with(line_item_id: "li_unknown", service_id: 99) {}
  puts "unknown service returned"
rescue PG::ForeignKeyViolation => e # from the raw connection's insert
  puts "unknown service #{e.result.error_field(PG::PG_DIAG_SQLSTATE)}"
end
blocker = PG.connect(ENV.fetch("DATABASE_URL"))
blocker.exec("SELECT pg_advisory_lock(paylock_key_id('payments', '7', 'li_busy'))")
begin
  Payment.with(line_item_id: "li_busy", service_id: 7, lock_timeout_ms: 100) {}
  puts "lock timeout returned"
rescue PG::LockNotAvailable => e
  puts "lock timeout #{e.result.error_field(PG::PG_DIAG_SQLSTATE)} rows #{Payment.where(line_item_id: "li_busy").count}"
end
blocker.close
held = []
Payment.with(line_item_id: "li_text", service_id: "07") { held = Payment.connection.select_values(MYLOCK) }
puts "text service id locked #{held.join(" ")}"
canon = INPUTS.map do |x|
  Payment.service_id_text(x)
rescue ArgumentError
  "refused"
end
puts "service ids #{canon.join(" ")}"
puts "ruby reads loosely #{Integer("010")} #{Integer("1_000", 10)} #{Integer(" 7", 10)} #{"7abc".to_i}"
got = []
Payment.with(line_item_id: "li_bounds", service_id: 7) { got << Payment.connection.select_rows(SHOW).first }
Payment.with(line_item_id: "li_bounds", service_id: 7, lock_timeout_ms: 250, idle_timeout_ms: 2000, statement_timeout_ms: 5000) do
  got << Payment.connection.select_rows(SHOW).first
end
got.each { |g| puts "bounds #{g.join(" ")}" }
begin
  Payment.with(line_item_id: "li_thread", service_id: 7, idle_timeout_ms: 2000) do |p|
    p.amount_cents += 1
    Thread.new { Payment.with(line_item_id: "li_thread", service_id: 7) { |q| q.amount_cents += 10 } }.join
  end
  puts "nested in a thread returned"
rescue ActiveRecord::ActiveRecordError
  amount = Thread.new { Payment.where(service_id: 7, line_item_id: "li_thread").pick(:amount_cents) }.value
  puts "nested in a thread: outer failed, amount #{amount}"
end
`

const misuseJS = `
const { withPayment, serviceIdText, ReentrantError } = require(process.argv[1])
const { Pool } = require(require.resolve('pg', { paths: [require('node:path').dirname(process.argv[1])] }))
async function main () {
  const pool = new Pool({ connectionString: process.env.DATABASE_URL })
  try {
    await withPayment(pool, '7', 'li_nested', () => withPayment(pool, '7', 'li_nested', () => {}))
    console.log('nested returned')
  } catch (e) {
    if (!(e instanceof ReentrantError)) throw e
    console.log('nested refused ReentrantError')
  }
  try {
    await withPayment(pool, '99', 'li_unknown', () => {})
    console.log('unknown service returned')
  } catch (e) {
    if (e.code !== '23503') throw e
    console.log('unknown service', e.code)
  }
  const blocker = await pool.connect()
  await blocker.query("SELECT pg_advisory_lock(paylock_key_id('payments', '7', 'li_busy'))")
  try {
    await withPayment(pool, '7', 'li_busy', () => {}, { lockTimeoutMs: 100 })
    console.log('lock timeout returned')
  } catch (e) {
    if (e.code !== '55P03') throw e
    const { rows } = await pool.query("SELECT count(*)::int AS n FROM payments WHERE line_item_id = 'li_busy'")
    console.log('lock timeout', e.code, 'rows', rows[0].n)
  }
  blocker.release(true)
  let held = []
  await withPayment(pool, '07', 'li_text', async (p, client) => { held = (await client.query({ text: MYLOCK, rowMode: 'array' })).rows.map(r => r[0]) })
  console.log('text service id locked', ...held)
  const canon = x => { try { return serviceIdText(x) } catch (e) { if (e instanceof RangeError) return 'refused'; throw e } }
  console.log('service ids', ...INPUTS.map(canon), canon(2 ** 53 + 1), canon(2n ** 53n + 1n))
  console.log('javascript reads loosely', Number('0x10'), String(BigInt('0x10')), String(9007199254740993))
  const got = []
  const show = async (p, client) => { got.push((await client.query({ text: SHOW, rowMode: 'array' })).rows[0]) }
  await withPayment(pool, 7, 'li_bounds', show)
  await withPayment(pool, 7, 'li_bounds', show, { lockTimeoutMs: 250, idleTimeoutMs: 2000, statementTimeoutMs: 5000 })
  for (const g of got) console.log('bounds', ...g)
  await pool.end()
}
main().catch(e => { console.error(e); process.exitCode = 1 })
`

// misuseScript fills in the constants a misuse script shares with the test.
func misuseScript(src string) string {
	return strings.NewReplacer("MYLOCK", fmt.Sprintf("%q", myLock), "SHOW", fmt.Sprintf("%q", showBounds),
		"INPUTS", serviceIDInputsPy).Replace(src)
}

// goBounds returns the settings payment.With applies with opts, as the
// scripts print them: "bounds LOCK IDLE STATEMENT ISOLATION READ_ONLY".
func goBounds(t *testing.T, ctx context.Context, repo *payment.Repository) string {
	t.Helper()
	var v [5]string
	err := repo.With(ctx, payment.Key{ServiceID: 7, LineItemID: "li_go"}, func(ctx context.Context, tx pgx.Tx, _ *payment.Payment) error {
		return tx.QueryRow(ctx, showBounds).Scan(&v[0], &v[1], &v[2], &v[3], &v[4])
	})
	if err != nil {
		t.Fatal(err)
	}
	return "bounds " + strings.Join(v[:], " ")
}

// TestInteropMisuse: the examples take the bounds Go's payment.With takes,
// by default and when given (lock_timeout, idle_in_transaction_session_timeout,
// statement_timeout, read committed, read write), on a database whose
// defaults differ (lock_timeout 7s, serializable, statement_timeout 30s,
// read only). They refuse to
// run nested on the payment their fn holds, or inside the caller's
// transaction, where the lock and the row lock would last until that
// transaction ends and a nested call's update would be lost under the outer
// one's. A service with no services row fails with the foreign key's
// SQLSTATE 23503; past lock_timeout a call fails with 55P03 and writes
// nothing. A nested call they can't see (another thread, on its own
// connection) waits until the server ends the idle outer transaction
// (idle_in_transaction_session_timeout, here 2s): the outer call fails and
// only the inner call's change stays. A service id is canonical: "07" takes
// the lock of Go's key ("payments", "7", line item), and what the language
// would read loosely ("010" as 8, "1_000", " 7", "0x10", a non-ASCII digit,
// a Number above 2^53) is refused; the scripts show each language reading
// them so.
func TestInteropMisuse(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	pool := paytest.Pool(t)
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (7, 'acme')"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DO $$BEGIN
		EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = serializable', current_database());
		EXECUTE format('ALTER DATABASE %I SET lock_timeout = ''7s''', current_database());
		EXECUTE format('ALTER DATABASE %I SET statement_timeout = ''30s''', current_database());
		EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database());
		END$$`); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // the settings apply to new sessions
	dsn := pool.Config().ConnString()
	bounds := []string{
		goBounds(t, ctx, payment.NewRepository(pool)),
		goBounds(t, ctx, payment.NewRepository(pool, entity.WithLockOptions(lock.Options{
			LockTimeout: 250 * time.Millisecond, IdleTimeout: 2 * time.Second, StatementTimeout: 5 * time.Second}))),
	}
	if want := []string{"bounds 0 1min 30s read committed off", "bounds 250ms 2s 5s read committed off"}; !slices.Equal(bounds, want) {
		t.Fatalf("Go's bounds are %q, want %q", bounds, want)
	}
	unknown := "unknown service 23503"
	timeout := "lock timeout 55P03 rows 0"
	locked := fmt.Sprint("text service id locked ", lock.NewKey("payments", "7", "li_text").ID())
	thread := "nested in a thread: outer failed, amount 10"
	for _, tt := range []struct {
		l    lang
		flag string   // the interpreter's flag for a script given inline
		src  string   // the script
		lib  []string // what the script loads, under examples/
		want []string
	}{
		{pythonLang, "-c", misusePy, []string{"python"}, []string{"nested refused ProgrammingError",
			"nested on another connection refused ReentrantError", "in a transaction refused",
			unknown, timeout, locked, serviceIDWant, "python reads loosely 1000 7 7", bounds[0], bounds[1], thread}},
		{rubyLang, "-e", misuseRb, []string{"ruby", "payment.rb"}, []string{"nested refused TransactionIsolationError",
			"in a transaction refused", unknown, timeout, locked, serviceIDWant, "ruby reads loosely 8 1000 7 7",
			bounds[0], bounds[1], thread}},
		{nodeLang, "-e", misuseJS, []string{"node", "payment.js"}, []string{"nested refused ReentrantError",
			unknown, timeout, locked, serviceIDWant + " refused 9007199254740993",
			"javascript reads loosely 16 16 9007199254740992", bounds[0], bounds[1]}},
	} {
		t.Run(tt.l.name, func(t *testing.T) {
			cmd := script(ctx, dsn, "misuse", tt.l.interp(t), tt.flag, misuseScript(tt.src), example(t, tt.lib...))
			if got := output(t, cmd); !slices.Equal(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
		if _, err := pool.Exec(ctx, "BEGIN READ WRITE; TRUNCATE payments; COMMIT"); err != nil {
			t.Fatal(err)
		}
	}
}
