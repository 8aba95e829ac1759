package main

import (
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestLocksTakenFromSQL: locks taken by non-Go clients with the SQL function
// paylock_key_id, which `paylock migrate` installs, are shown like Go's. A
// statement with the documented comment (docs/INTEROP.md) is named by it;
// one without the comment is named from the function's literal arguments,
// or, with bind parameters, shown as unknown, never as another program's.
// A plain bigint lock stays "other".
func TestLocksTakenFromSQL(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	url := pgtest.DB(t)
	mustRun(t, ctx, "migrate", "--database-url", url)
	monitor := openSession(t, ctx, url, "monitor").conn

	commented := lock.NewKey("payments", "7", "li 'x'*/ü")
	literal := lock.NewKey("payments", "8", "it's")
	bound := lock.NewKey("payments", "9", "li_9")
	const lockSQL = "SELECT pg_advisory_xact_lock(paylock_key_id('payments', $1::text, $2::text))"
	for _, tt := range []struct {
		key    lock.Key
		sql    string
		args   []any
		origin string
	}{
		{commented, lockSQL + " /*paylock_key='" + commented.String() + "'*/", []any{"7", "li 'x'*/ü"}, "paylock"},
		{literal, "SELECT pg_advisory_xact_lock(paylock_key_id('payments', 8::text, 'it''s'))", nil, "paylock"},
		{bound, lockSQL, []any{"9", "li_9"}, "unknown"},
		{lock.NewKey("x"), "SELECT pg_advisory_xact_lock($1)", []any{lock.NewKey("x").ID()}, "other"},
		// A quoted function name, a schema, upper case, newlines, an
		// integer with leading zeros, and a comment that names another key
		// than the call locks: the call's key, checked against the id.
		{lock.NewKey("payments", "10", "li_10"), `SELECT pg_advisory_xact_lock("paylock_key_id"('payments', '10', 'li_10'))`, nil, "paylock"},
		{lock.NewKey("payments", "11", "li_11"), "SELECT pg_advisory_xact_lock(PUBLIC.Paylock_Key_Id (\n 'payments' ,\n 011::text , 'li_11' ))", nil, "paylock"},
		{lock.NewKey("payments", "12", "li_12"), "SELECT pg_advisory_xact_lock(paylock_key_id('payments', '12', 'li_12')) /*paylock_key='payments/13/li_13'*/", nil, "paylock"},
		// An id computed by the client (examples/python's key_id) is named
		// by its comment; without one it is "other", as the row with key x.
		{lock.NewKey("payments", "14", "li_14"), "SELECT pg_advisory_xact_lock($1) /*paylock_key='payments/14/li_14'*/",
			[]any{lock.NewKey("payments", "14", "li_14").ID()}, "paylock"},
	} {
		holder := openSession(t, ctx, url, "ruby-holder")
		if _, err := holder.tx.Exec(ctx, tt.sql, tt.args...); err != nil {
			t.Fatal(err)
		}
		if _, err := holder.tx.Exec(ctx, "SELECT 'moved on'"); err != nil {
			t.Fatal(err)
		}
		waiter := openSession(t, ctx, url, "ruby-waiter")
		done := make(chan error, 1)
		go func() {
			_, err := waiter.tx.Exec(ctx, tt.sql, tt.args...)
			done <- err
		}()
		waitWaiters(t, ctx, monitor, tt.key.ID(), 1)

		r := decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--database-url", url))
		l := findLock(r, tt.key.ID(), 1)
		switch {
		case l == nil:
			t.Errorf("%s: no lock with id %d", tt.sql, tt.key.ID())
		case l.Origin != tt.origin:
			t.Errorf("%s: origin %q, want %q", tt.sql, l.Origin, tt.origin)
		case tt.origin == "paylock" && (l.Key != tt.key.String() || l.KeyFrom != "waiter" || l.Fields["line_item_id"] != tt.key.Parts()[1]):
			t.Errorf("%s: key %q from %q, fields %v; want %q from the waiter", tt.sql, l.Key, l.KeyFrom, l.Fields, tt.key.String())
		case tt.origin != "paylock" && l.Key != "":
			t.Errorf("%s: key %q, want none", tt.sql, l.Key)
		}
		if err := holder.tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		waiter.tx.Rollback(ctx)
	}
}
