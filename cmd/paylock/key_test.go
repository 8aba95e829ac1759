package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestKey checks that `paylock key` names the row pg_locks shows for a lock
// taken with lock.Acquire, and that its psql query finds it.
func TestKey(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	pool := pgtest.Pool(t, nil)
	key := lock.NewKey("payments", "7", "li 1/é")

	var info keyInfo
	out := mustRun(t, ctx, "key", "--json", "payments", "7", "li 1/é")
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != key.ID() || info.Key != "payments/7/li%201%2F%C3%A9" || info.ObjSubID != 1 ||
		info.Fields["line_item_id"] != "li 1/é" {
		t.Fatalf("key --json = %+v", info)
	}
	// The escaped form names the same key.
	if again := mustRun(t, ctx, "key", "--json", info.Key); again != out {
		t.Fatalf("key %s differs from key NAMESPACE PART...:\n%s\n%s", info.Key, again, out)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := lock.Acquire(ctx, tx, key); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var classID, objID uint32
	var sub int
	err = pool.QueryRow(ctx, `SELECT classid, objid, objsubid FROM pg_locks WHERE locktype = 'advisory' AND pid = $1`,
		pid).Scan(&classID, &objID, &sub)
	if err != nil {
		t.Fatal(err)
	}
	if classID != info.ClassID || objID != info.ObjID || sub != info.ObjSubID {
		t.Fatalf("pg_locks shows %d/%d/%d, paylock key printed %d/%d/%d", classID, objID, sub, info.ClassID, info.ObjID, info.ObjSubID)
	}
	var gotPID int
	var granted bool
	var rest [8]any
	if err := pool.QueryRow(ctx, strings.TrimSuffix(info.Query, ";")).Scan(&gotPID, &granted,
		&rest[0], &rest[1], &rest[2], &rest[3], &rest[4], &rest[5], &rest[6], &rest[7]); err != nil {
		t.Fatalf("the printed query: %v\n%s", err, info.Query)
	}
	if gotPID != pid || !granted {
		t.Fatalf("the printed query found pid %d granted %v, want %d granted", gotPID, granted, pid)
	}

	text := mustRun(t, ctx, "key", "payments", "7", "li 1/é")
	golden(t, "key.golden", text)
}

// TestKeyJSONEscapesControls: the parts of a key come from the command line
// (often pasted from a log); --json escapes the C1 controls and bidi
// overrides encoding/json leaves raw, as `paylock locks --json` does, and
// the document still decodes to the same parts.
func TestKeyJSONEscapesControls(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 10*time.Second)
	part := "li\u009b31m\u202eX\u2066"
	out := mustRun(t, ctx, "key", "--json", "payments", "7", part)
	for _, raw := range []string{"\u009b", "\u202e", "\u2066"} {
		if strings.Contains(out, raw) {
			t.Errorf("key --json printed %q raw:\n%s", raw, out)
		}
	}
	var info keyInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if info.Fields["line_item_id"] != part || len(info.Parts) != 2 || info.Parts[1] != part {
		t.Fatalf("key --json decodes to %+v, want line_item_id %q", info, part)
	}
}

// TestKeyNotesPaymentKeysNobodyLocks: `paylock key` and `paylock locks --key`
// compute the id of the key as given, but for a payments key no payment.Key
// makes ("07" for service 7, an empty line item id) they say so on stderr,
// naming the key Go's callers lock; a payment.Key's own key gets no note.
func TestKeyNotesPaymentKeysNobodyLocks(t *testing.T) {
	ctx := context.Background()
	for args, want := range map[string]string{
		"payments 07 li_123":  "payment.Key{ServiceID: 7} locks payments/7/li_123 (id 1856902557913729806), not this key",
		"payments/+7/li_123":  "payment.Key{ServiceID: 7} locks payments/7/li_123",
		"payments 0 li_123":   "service_id 0 must be positive",
		"payments 7 ":         "empty line_item_id",
		"payments seven li_1": `service_id "seven" is not a number`,
		"payments 7 li_123":   "",
		"invoices 07 li_123":  "",
	} {
		args := strings.Split(args, " ")
		code, out, errOut := paylock(ctx, append([]string{"key"}, args...)...)
		if code != 0 || !strings.HasPrefix(out, "key ") {
			t.Errorf("paylock key %q = %d, stdout %q, stderr %q", args, code, out, errOut)
		}
		if want == "" && errOut != "" || want != "" && (!strings.HasPrefix(errOut, "note: ") || !strings.Contains(errOut, want) || strings.Count(errOut, "\n") != 1) {
			t.Errorf("paylock key %q: stderr %q, want one note with %q (none if empty)", args, errOut, want)
		}
	}
	// locks --key says it before it connects: a usage of its own.
	ctxc, cancel := context.WithCancel(ctx)
	cancel()
	_, _, errOut := paylock(ctxc, "locks", "--database-url", "postgres://nobody@127.0.0.1:1/x", "--key", "payments", "07", "li_123")
	if !strings.HasPrefix(errOut, "note: a payment's key holds its service id in canonical decimal") {
		t.Errorf("paylock locks --key payments 07 li_123: stderr %q, want the note first", errOut)
	}
}
