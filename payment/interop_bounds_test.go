package payment_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// The bounds scripts call each example's with once per combination of
// BOUNDS, a JSON list of [lock, idle, statement], each "omit" (the keyword
// or option left out), null (None, nil, null: given as nothing) or a number
// of milliseconds, and print the settings inside the transaction.

const boundsPy = `
import json, os, sys
sys.path.insert(0, sys.argv[1])
import psycopg
from poller import with_payment

names = ("lock_timeout_ms", "idle_timeout_ms", "statement_timeout_ms")
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    for combo in json.loads(sys.argv[2]):
        got = []
        with_payment(conn, 7, "li_bounds", lambda p: got.append(conn.execute(SHOW).fetchone()),
                     **{n: v for n, v in zip(names, combo) if v != "omit"})
        print("bounds", *got[0])
`

const boundsRb = `
require "json"
require_relative ARGV[0]
ActiveRecord::Base.establish_connection(url: ENV.fetch("DATABASE_URL"))
names = %i[lock_timeout_ms idle_timeout_ms statement_timeout_ms]
JSON.parse(ARGV[1]).each do |combo|
  got = nil
  kw = names.zip(combo).reject { |_, v| v == "omit" }.to_h
  Payment.with(line_item_id: "li_bounds", service_id: 7, **kw) { got = Payment.connection.select_rows(SHOW).first }
  puts "bounds #{got.join(" ")}"
end
`

const boundsJS = `
const { withPayment } = require(process.argv[1])
const { Pool } = require(require.resolve('pg', { paths: [require('node:path').dirname(process.argv[1])] }))
async function main () {
  const pool = new Pool({ connectionString: process.env.DATABASE_URL })
  const names = ['lockTimeoutMs', 'idleTimeoutMs', 'statementTimeoutMs']
  for (const combo of JSON.parse(process.argv[2])) {
    const opts = Object.fromEntries(names.map((n, i) => [n, combo[i]]).filter(([, v]) => v !== 'omit'))
    let got
    await withPayment(pool, 7, 'li_bounds', async (p, client) => { got = (await client.query({ text: SHOW, rowMode: 'array' })).rows[0] }, opts)
    console.log('bounds', ...got)
  }
  await pool.end()
}
main().catch(e => { console.error(e); process.exitCode = 1 })
`

// TestInteropBoundsCombinations: every combination of the three bounds
// left out, given as nothing (None, nil, null) or given a value runs valid
// SQL (None for all three used to send a bare "SELECT ") and applies, in
// the transaction, Go's default for a bound left out (lock_timeout 0,
// idle_in_transaction_session_timeout 1min, statement_timeout the
// server's), the server's for one given as nothing, and the value given,
// on a database whose own settings differ from Go's defaults.
func TestInteropBoundsCombinations(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	pool := paytest.Pool(t)
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (7, 'acme')"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DO $$BEGIN
		EXECUTE format('ALTER DATABASE %I SET lock_timeout = ''7s''', current_database());
		EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout = ''45s''', current_database());
		EXECUTE format('ALTER DATABASE %I SET statement_timeout = ''30s''', current_database());
		END$$`); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // the settings apply to new sessions
	dsn := pool.Config().ConnString()
	given := [3]int{250, 2000, 5000}
	shown := [3]string{"250ms", "2s", "5s"}
	goDefault := [3]string{"0", "1min", "30s"} // statement_timeout: not set, the server's
	server := [3]string{"7s", "45s", "30s"}
	var combos [][3]any
	var want []string
	for i := range 27 {
		var c [3]any
		var w [3]string
		for b, d := 0, i; b < 3; b, d = b+1, d/3 {
			switch d % 3 {
			case 0:
				c[b], w[b] = "omit", goDefault[b]
			case 1:
				c[b], w[b] = nil, server[b]
			case 2:
				c[b], w[b] = given[b], shown[b]
			}
		}
		combos = append(combos, c)
		want = append(want, fmt.Sprintf("bounds %s %s %s read committed off", w[0], w[1], w[2]))
	}
	arg, err := json.Marshal(combos)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		l    lang
		flag string
		src  string
		lib  []string
	}{
		{pythonLang, "-c", boundsPy, []string{"python"}},
		{rubyLang, "-e", boundsRb, []string{"ruby", "payment.rb"}},
		{nodeLang, "-e", boundsJS, []string{"node", "payment.js"}},
	} {
		t.Run(tt.l.name, func(t *testing.T) {
			cmd := script(ctx, dsn, "bounds", tt.l.interp(t), tt.flag, misuseScript(tt.src), example(t, tt.lib...), string(arg))
			if got := output(t, cmd); !slices.Equal(got, want) {
				t.Errorf("combinations %s:\ngot\n%s\nwant\n%s", arg, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}
