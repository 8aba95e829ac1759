package payment_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// holdPy, holdRb and holdJS call each example's with on payment (1,
// li_hung) with idle_timeout_ms from the command line, and an fn that adds
// 100, prints "holding" and hangs until a line comes on stdin; then they
// print "holder committed" or "holder failed"; Node's then whether its pool
// still works (withPayment gives a broken client back as such).
const holdPy = `
import os, sys
sys.path.insert(0, sys.argv[1])
import psycopg
from poller import with_payment

def hang(p):
    p["amount_cents"] += 100
    print("holding", flush=True)
    sys.stdin.readline()

with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    try:
        with_payment(conn, 1, "li_hung", hang, idle_timeout_ms=int(sys.argv[2]))
        print("holder committed")
    except psycopg.Error:
        print("holder failed")
`

const holdRb = `
require_relative ARGV[0]
ActiveRecord::Base.establish_connection(url: ENV.fetch("DATABASE_URL"))
$stdout.sync = true
begin
  Payment.with(service_id: 1, line_item_id: "li_hung", idle_timeout_ms: Integer(ARGV[1])) do |p|
    p.amount_cents += 100
    puts "holding"
    $stdin.gets
  end
  puts "holder committed"
rescue ActiveRecord::ActiveRecordError
  puts "holder failed"
end
`

const holdJS = `
const { withPayment } = require(process.argv[1])
const { Pool } = require(require.resolve('pg', { paths: [require('node:path').dirname(process.argv[1])] }))
const pool = new Pool({ connectionString: process.env.DATABASE_URL })
withPayment(pool, '1', 'li_hung', async p => {
  p.amount_cents += 100n
  console.log('holding')
  await new Promise(resolve => process.stdin.once('data', resolve))
}, { idleTimeoutMs: Number(process.argv[2]) }).then(() => console.log('holder committed'), () => console.log('holder failed'))
  .then(() => pool.query('SELECT 1')) // on the client withPayment gave back, if the pool kept it
  .then(() => console.log('pool works'), e => console.log('pool broken', e.message))
  .finally(() => { process.stdin.pause(); return pool.end() })
`

// holdArgs are the interpreter arguments that run a hold script of l.
func holdArgs(t *testing.T, l lang, idleMillis int) []string {
	switch l.name {
	case "Python":
		return []string{"-c", holdPy, example(t, "python"), fmt.Sprint(idleMillis)}
	case "Ruby":
		return []string{"-e", holdRb, example(t, "ruby", "payment.rb"), fmt.Sprint(idleMillis)}
	}
	return []string{"-e", holdJS, example(t, "node", "payment.js"), fmt.Sprint(idleMillis)}
}

// lineReader is a running script's stdin and its stdout, line by line.
type lineReader struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // closed at EOF
}

func startScript(t *testing.T, cmd *exec.Cmd) *lineReader {
	t.Helper()
	r := &lineReader{cmd: cmd, lines: make(chan string, 16)}
	var err error
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			r.lines <- s.Text()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if err := cmd.Wait(); err != nil && stderr.Len() > 0 {
			t.Logf("%s: %v: %s", cmd.Args[0], err, stderr.String())
		}
	})
	return r
}

// next returns the script's next line, failing t if it ended first or ctx
// did.
func (r *lineReader) next(t *testing.T, ctx context.Context) string {
	t.Helper()
	select {
	case line, ok := <-r.lines:
		if !ok {
			t.Fatalf("%s ended without a line", r.cmd.Args[0])
		}
		return line
	case <-ctx.Done():
		t.Fatalf("%s printed no line: %v", r.cmd.Args[0], ctx.Err())
	}
	return ""
}

// awaitWaiter waits until the backend of application app waits for a lock
// and returns its query, the lock's type and, for an advisory lock, its id.
func awaitWaiter(t *testing.T, ctx context.Context, pool *pgxpool.Pool, app string) (query, locktype string, id int64) {
	t.Helper()
	for {
		err := pool.QueryRow(ctx, `SELECT a.query, l.locktype, coalesce((l.classid::bigint << 32) | l.objid::bigint, 0)
			FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
			WHERE a.application_name = $1 AND NOT l.granted`, app).Scan(&query, &locktype, &id)
		if err == nil {
			return query, locktype, id
		}
		if err != pgx.ErrNoRows {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never waited for a lock: %v", app, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// goHolder runs payment.With on key in the background, creating its row if
// it is missing, with an fn that waits for release; it returns once fn runs.
// release ends fn and returns With's error.
func goHolder(t *testing.T, ctx context.Context, repo *payment.Repository, key payment.Key) (release func() error) {
	t.Helper()
	holding, released, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- repo.With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error {
			close(holding)
			<-released
			return nil
		})
	}()
	select {
	case <-holding:
	case err := <-done:
		t.Fatal(err)
	}
	return func() error {
		close(released)
		return <-done
	}
}

// TestInteropHungHolder: a holder in each language whose fn hangs while it
// holds a payment loses it when its transaction has sat idle for the bound
// the example applies (idle_in_transaction_session_timeout, here 2s; 60s by
// default, as in Go): the server ends its session, the next caller (Go)
// gets the payment without the holder's change, and the holder, once its fn
// returns, fails. Without the bound nothing would end it: the server's own
// default is 0, no limit. Before that, while each waits behind Go, its lock
// statement carries the paylock_key comment with the key of the id it
// waits for, which `paylock locks` reads.
func TestInteropHungHolder(t *testing.T) {
	t.Parallel()
	const idle = 2000 // ms
	for _, l := range languages {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			ctx := pgtest.Context(t, time.Minute)
			pool := paytest.Pool(t)
			var serverDefault string
			if err := pool.QueryRow(ctx, "SHOW idle_in_transaction_session_timeout").Scan(&serverDefault); err != nil || serverDefault != "0" {
				t.Fatalf("the server's idle_in_transaction_session_timeout is %q (%v), want 0", serverDefault, err)
			}
			// Before the Go holder starts: a language that is missing skips
			// here, not with a holder the pool would wait for at Close.
			interp, args := l.interp(t), holdArgs(t, l, idle)
			repo := payment.NewRepository(pool)
			key := payment.Key{ServiceID: 1, LineItemID: "li_hung"}
			release := goHolder(t, ctx, repo, key)

			app := "hung " + l.name
			holder := startScript(t, script(ctx, pool.Config().ConnString(), app, interp, args...))
			query, locktype, id := awaitWaiter(t, ctx, pool, app)
			comment := "/*paylock_key='" + key.LockKey().String() + "'*/"
			if locktype != "advisory" || id != key.LockKey().ID() || !strings.Contains(query, comment) {
				t.Errorf("%s waits for a %s lock %d with %q; want the advisory lock %d with %s", l.name, locktype, id, query, key.LockKey().ID(), comment)
			}
			if err := release(); err != nil {
				t.Fatal(err)
			}
			if line := holder.next(t, ctx); line != "holding" {
				t.Fatalf("%s printed %q, want holding", l.name, line)
			}

			start := time.Now()
			var read int64
			err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				read, p.AmountCents = p.AmountCents, p.AmountCents+1
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("FIGURE %s: Go got the payment a hung %s holder had %v after it printed holding (idle bound %dms)",
				l.name, l.name, time.Since(start).Round(time.Millisecond), idle)
			if read != 0 {
				t.Errorf("Go read amount %d, want 0: the hung holder's change was committed", read)
			}
			if _, err := io.WriteString(holder.stdin, "\n"); err != nil {
				t.Fatal(err)
			}
			if line := holder.next(t, ctx); line != "holder failed" {
				t.Errorf("the hung holder printed %q once its fn returned, want holder failed", line)
			}
			if l.name == nodeLang.name {
				if line := holder.next(t, ctx); line != "pool works" {
					t.Errorf("after the hung holder failed its pool: %q, want pool works", line)
				}
			}
			p, err := repo.Get(ctx, key)
			if err != nil || p.AmountCents != 1 {
				t.Errorf("payment = %+v, %v; want amount 1", p, err)
			}
		})
	}
}

// wrongIDPy runs with_payment of examples/python once, on payment (1,
// argv[3]), adding 1, with the right key id or (argv[2] "wrong") with an id
// off by one; it prints "created ID" or "found ID".
const wrongIDPy = `
import os, sys
sys.path.insert(0, sys.argv[1])
import psycopg
import poller

if sys.argv[2] == "wrong":
    right = poller.key_id
    poller.key_id = lambda namespace, *parts: right(namespace, *parts) ^ 1
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    p, created = poller.with_payment(conn, 1, sys.argv[3], lambda p: p.update(amount_cents=p["amount_cents"] + 1))
    print("created" if created else "found", p["id"])
`

// TestInteropWrongID: what the advisory lock adds over the unique index,
// and why only a table without the index tells a wrong id. A Python client
// comes while Go holds a new payment (its row inserted, not committed):
//   - with the right id it waits for the advisory lock, then finds Go's row;
//   - with a wrong id, on a table without the unique index (a rollout's
//     first step), it waits for nothing and inserts a second row;
//   - with the same wrong id on a table with the index, it waits for Go's
//     insert (a transactionid lock) and finds Go's row: the index hides the
//     mistake, so a race on a migrated database passes with a wrong id.
func TestInteropWrongID(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	py := python(t)
	pool := paytest.Pool(t)
	repo := payment.NewRepository(pool)
	if _, err := pool.Exec(ctx, "DROP INDEX "+payment.UniqueIndex); err != nil {
		t.Fatal(err)
	}
	rows := func(li string) int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments WHERE service_id = 1 AND line_item_id = $1", li).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	run := func(id, li string) *lineReader {
		return startScript(t, script(ctx, pool.Config().ConnString(), "wrongid "+li, py, "-c", wrongIDPy, example(t, "python"), id, li))
	}

	// The right id, no index: it waits for the advisory lock.
	release := goHolder(t, ctx, repo, payment.Key{ServiceID: 1, LineItemID: "li_right"})
	client := run("right", "li_right")
	if _, locktype, _ := awaitWaiter(t, ctx, pool, "wrongid li_right"); locktype != "advisory" {
		t.Errorf("with the right id the client waits for a %s lock, want advisory", locktype)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if line := client.next(t, ctx); !strings.HasPrefix(line, "found ") || rows("li_right") != 1 {
		t.Errorf("with the right id: %q, %d rows; want found, 1 row", line, rows("li_right"))
	}

	// A wrong id, no index: it doesn't wait, and duplicates the payment.
	release = goHolder(t, ctx, repo, payment.Key{ServiceID: 1, LineItemID: "li_wrong"})
	line := run("wrong", "li_wrong").next(t, ctx) // while Go holds the payment
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "created ") || rows("li_wrong") != 2 {
		t.Errorf("with a wrong id and no unique index: %q, %d rows; want created, 2 rows", line, rows("li_wrong"))
	}

	// The same wrong id with the index: the insert waits for Go's, and the
	// mistake stays hidden.
	if _, err := pool.Exec(ctx, "TRUNCATE payments"); err != nil {
		t.Fatal(err)
	}
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	release = goHolder(t, ctx, repo, payment.Key{ServiceID: 1, LineItemID: "li_hidden"})
	client = run("wrong", "li_hidden")
	if _, locktype, _ := awaitWaiter(t, ctx, pool, "wrongid li_hidden"); locktype != "transactionid" {
		t.Errorf("with a wrong id and the index the client waits for a %s lock, want transactionid (Go's insert)", locktype)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if line := client.next(t, ctx); !strings.HasPrefix(line, "found ") || rows("li_hidden") != 1 {
		t.Errorf("with a wrong id and the index: %q, %d rows; want found, 1 row", line, rows("li_hidden"))
	}
}
