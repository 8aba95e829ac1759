package main

import (
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
