package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// session is one connection with its own application_name, in a transaction.
type session struct {
	conn *pgx.Conn
	tx   pgx.Tx
	pid  int
}

func openSession(t *testing.T, ctx context.Context, url, app string) *session {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = app
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	s := &session{conn: conn, pid: int(conn.PgConn().PID())}
	if s.tx, err = conn.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// acquireAsync takes key in s's transaction in the background.
func (s *session) acquireAsync(ctx context.Context, key lock.Key) <-chan error {
	done := make(chan error, 1)
	go func() { done <- lock.Acquire(ctx, s.tx, key) }()
	return done
}

// waitWaiters blocks until n backends wait for the lock with id.
func waitWaiters(t *testing.T, ctx context.Context, conn *pgx.Conn, id int64, n int) {
	t.Helper()
	for {
		var got int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1`, id).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d waiters for lock %d never appeared (%d)", n, id, got)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func decodeLocks(t *testing.T, out string) locksReport {
	t.Helper()
	var r locksReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json output is not a report: %v\n%s", err, out)
	}
	return r
}

func findLock(r locksReport, id int64, sub int) *lockInfo {
	for i := range r.Locks {
		if r.Locks[i].ID == id && r.Locks[i].ObjSubID == sub {
			return &r.Locks[i]
		}
	}
	return nil
}

func pids(bs []backend) (p []int) {
	for _, b := range bs {
		p = append(p, b.PID)
	}
	return p
}

// TestLocks takes locks on other connections — a holder and two waiters on a
// payment's key, a lock held with nobody waiting, and another program's int4
// lock — and checks what `paylock locks` reports.
func TestLocks(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	url := pgtest.DB(t)
	key := lock.NewKey("payments", "7", "li_1")
	quiet := lock.NewKey("payments", "8", "li 'x'*/")

	monitor := openSession(t, ctx, url, "monitor").conn
	holder := openSession(t, ctx, url, "holder")
	if err := lock.Acquire(ctx, holder.tx, key); err != nil {
		t.Fatal(err)
	}
	if err := lock.Acquire(ctx, holder.tx, quiet); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.tx.Exec(ctx, "SELECT 'moved on'"); err != nil {
		t.Fatal(err)
	}
	other := openSession(t, ctx, url, "other-program")
	if _, err := other.tx.Exec(ctx, "SELECT pg_advisory_xact_lock(42, 7)"); err != nil {
		t.Fatal(err)
	}
	w1 := openSession(t, ctx, url, "waiter-1")
	done1 := w1.acquireAsync(ctx, key)
	waitWaiters(t, ctx, monitor, key.ID(), 1)
	w2 := openSession(t, ctx, url, "waiter-2")
	done2 := w2.acquireAsync(ctx, key)
	waitWaiters(t, ctx, monitor, key.ID(), 2)
	time.Sleep(20 * time.Millisecond) // a visible wait time

	t.Run("JSON", func(t *testing.T) {
		r := decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--database-url", url))
		if len(r.Locks) != 3 {
			t.Fatalf("%d locks, want 3: %+v", len(r.Locks), r.Locks)
		}
		l := findLock(r, key.ID(), 1)
		if l == nil {
			t.Fatalf("no lock with id %d", key.ID())
		}
		if l.Origin != "paylock" || l.Key != "payments/7/li_1" || l.KeyFrom != "waiter" || l.Namespace != "payments" ||
			!slices.Equal(l.Parts, []string{"7", "li_1"}) || l.Fields["service_id"] != "7" || l.Fields["line_item_id"] != "li_1" {
			t.Errorf("key fields = %+v", l)
		}
		if l.ClassID != key.ClassID() || l.ObjID != key.ObjID() {
			t.Errorf("classid/objid = %d/%d, want %d/%d", l.ClassID, l.ObjID, key.ClassID(), key.ObjID())
		}
		if len(l.Holders) != 1 || l.Holders[0].PID != holder.pid || l.Holders[0].ApplicationName != "holder" ||
			l.Holders[0].State != "idle in transaction" || l.Holders[0].Query != "SELECT 'moved on'" ||
			l.Holders[0].Mode != "ExclusiveLock" || l.Holders[0].XactAgeS <= 0 || l.Holders[0].ClientAddr != "127.0.0.1" {
			t.Errorf("holders = %+v, want pid %d idle in transaction", l.Holders, holder.pid)
		}
		if got := pids(l.Waiters); !slices.Equal(got, []int{w1.pid, w2.pid}) {
			t.Fatalf("waiters = %v, want %v in queue order", got, []int{w1.pid, w2.pid})
		}
		for i, w := range l.Waiters {
			if w.ApplicationName != "waiter-"+strconv.Itoa(i+1) || w.WaitingS <= 0 || w.State != "active" ||
				!slices.Contains(w.BlockedBy, holder.pid) || w.WaitEvent != "Lock:advisory" {
				t.Errorf("waiter %d = %+v", i+1, w)
			}
		}
		if l.Waiters[0].WaitingS < l.Waiters[1].WaitingS {
			t.Errorf("first waiter waited %vs, less than the second's %vs", l.Waiters[0].WaitingS, l.Waiters[1].WaitingS)
		}
		if q := findLock(r, quiet.ID(), 1); q == nil || q.Origin != "unknown" || q.Key != "" || len(q.Waiters) != 0 {
			t.Errorf("lock held with nobody waiting = %+v, want origin unknown, no key", q)
		}
		if o := findLock(r, 42<<32|7, 2); o == nil || o.Origin != "other" || o.Holders[0].PID != other.pid {
			t.Errorf("int4 lock = %+v, want origin other held by %d", o, other.pid)
		}
	})

	t.Run("StableJSONFieldNames", func(t *testing.T) {
		var raw struct {
			Locks []map[string]json.RawMessage `json:"locks"`
		}
		out := mustRun(t, ctx, "locks", "--json", "--database-url", url, "--key", "payments", "7", "li_1")
		if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw.Locks) != 1 {
			t.Fatalf("%v: %s", err, out)
		}
		var lockFields, backendFields []string
		for k := range raw.Locks[0] {
			lockFields = append(lockFields, k)
		}
		var holders []map[string]json.RawMessage
		json.Unmarshal(raw.Locks[0]["holders"], &holders)
		for k := range holders[0] {
			backendFields = append(backendFields, k)
		}
		slices.Sort(lockFields)
		slices.Sort(backendFields)
		golden(t, "locks-json-fields.golden", "lock: "+joinWords(lockFields)+"\nholder: "+joinWords(backendFields)+"\n")
	})

	t.Run("Text", func(t *testing.T) {
		out := mustRun(t, ctx, "locks", "--database-url", url)
		golden(t, "locks.golden", mask(out,
			strconv.Itoa(holder.pid), "HOLDER", strconv.Itoa(w1.pid), "WAITER1", strconv.Itoa(w2.pid), "WAITER2",
			strconv.Itoa(other.pid), "OTHER"))
	})

	t.Run("OnlyKey", func(t *testing.T) {
		r := decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--key", "payments", "8", "li 'x'*/", "--database-url", url))
		if len(r.Locks) != 1 || r.Locks[0].ID != quiet.ID() || r.Locks[0].Key != quiet.String() || r.Locks[0].KeyFrom != "argument" {
			t.Fatalf("--key = %+v, want only %s with its key from the argument", r.Locks, quiet)
		}
		out := mustRun(t, ctx, "locks", "--key", "payments/9/none", "--database-url", url)
		if want := "nobody holds or waits for payments/9/none"; !contains(out, want) {
			t.Fatalf("--key of a free lock:\n%s\nwant %q", out, want)
		}
	})

	t.Run("HolderThatWaitsShowsItsChain", func(t *testing.T) {
		// The holder now waits for a key a fourth session holds.
		blocker := openSession(t, ctx, url, "blocker")
		next := lock.NewKey("payments", "7", "li_2")
		if err := lock.Acquire(ctx, blocker.tx, next); err != nil {
			t.Fatal(err)
		}
		doneHolder := holder.acquireAsync(ctx, next)
		waitWaiters(t, ctx, monitor, next.ID(), 1)
		r := decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--database-url", url))
		l := findLock(r, key.ID(), 1)
		if l == nil || len(l.Holders) != 1 || len(l.Holders[0].WaitsFor) != 1 || l.Holders[0].WaitsFor[0].PID != blocker.pid ||
			l.Holders[0].WaitsFor[0].ApplicationName != "blocker" || !slices.Equal(l.Holders[0].BlockedBy, []int{blocker.pid}) {
			t.Fatalf("holder of %s = %+v, want it shown waiting for the blocker (pid %d)", key, l, blocker.pid)
		}
		if n := findLock(r, next.ID(), 1); n == nil || n.Key != next.String() || n.Waiters[0].PID != holder.pid {
			t.Fatalf("lock %s = %+v, want the holder among its waiters", next, n)
		}
		text := mustRun(t, ctx, "locks", "--database-url", url, "--key", "payments", "7", "li_1")
		if want := "itself waits (Lock:advisory): -> pid " + strconv.Itoa(blocker.pid) + ` ("blocker"`; !contains(text, want) {
			t.Errorf("text output lacks %q:\n%s", want, text)
		}
		blocker.tx.Rollback(ctx)
		if err := <-doneHolder; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("AcquireAllWaiterNamesItsKeys", func(t *testing.T) {
		// A waiter in AcquireAll names all its keys in one comment; with 60
		// keys the comment is longer than pg_stat_activity keeps (1kB), and
		// the key it waits for has no other waiter to name it.
		first := lock.NewKey("payments", "9", "x")
		holderX := openSession(t, ctx, url, "holder-x")
		if err := lock.Acquire(ctx, holderX.tx, first); err != nil {
			t.Fatal(err)
		}
		keys := []lock.Key{first}
		for i := range 59 {
			keys = append(keys, lock.NewKey("payments", "7", "li_many_"+strconv.Itoa(i)))
		}
		all := openSession(t, ctx, url, "acquire-all")
		allCtx, cancelAll := context.WithCancel(ctx)
		defer cancelAll()
		doneAll := make(chan error, 1)
		go func() { doneAll <- lock.AcquireAll(allCtx, all.tx, keys...) }()
		waitWaiters(t, ctx, monitor, first.ID(), 1)
		r := decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--database-url", url))
		l := findLock(r, first.ID(), 1)
		if l == nil || l.Origin != "paylock" || l.Key != first.String() || l.KeyFrom != "waiter" ||
			len(l.Waiters) != 1 || l.Waiters[0].PID != all.pid || len(l.Waiters[0].Query) > 1100 {
			t.Fatalf("lock %s with a truncated AcquireAll waiter = %+v", first, l)
		}
		// The keys AcquireAll already holds (those with a lower id) are
		// named by its own, still running, statement as far as the cut
		// comment goes; none is taken for another program's.
		held := 0
		for _, l := range r.Locks {
			if len(l.Holders) == 1 && l.Holders[0].PID == all.pid {
				held++
				if l.Origin == "other" || (l.Key != "" && l.KeyFrom != "holder") {
					t.Errorf("lock held by AcquireAll = %+v", l)
				}
			}
		}
		if held == 0 {
			t.Fatalf("AcquireAll holds no lock yet; the test needs keys below %s", first)
		}
		cancelAll() // pgx cancels the wait
		if err := <-doneAll; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled AcquireAll = %v", err)
		}
		holderX.tx.Rollback(ctx)
	})

	t.Run("Watch", func(t *testing.T) {
		code, out, errOut := watch(t, ctx, 2, "locks", "--watch", "100ms", "--json", "--database-url", url)
		if code != 0 {
			t.Fatalf("--watch exit %d: %s", code, errOut)
		}
		docs := 0
		for dec := json.NewDecoder(stringsReader(out)); dec.More(); docs++ {
			var r locksReport
			if err := dec.Decode(&r); err != nil {
				t.Fatal(err)
			}
		}
		if docs != 2 {
			t.Fatalf("--watch 100ms wrote %d JSON documents in 2 reports, want 2", docs)
		}
	})

	holder.tx.Rollback(ctx)
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	w1.tx.Rollback(ctx)
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
}

// sqlASCIIDB creates, next to the database at dbURL, a SQL_ASCII database,
// dropped when t ends, and returns its URL. The server checks nothing there,
// so its sessions can send, and pg_stat_activity shows, invalid UTF-8.
func sqlASCIIDB(t *testing.T, ctx context.Context, dbURL string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := conn.Config().Database + "_ascii"
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), dbURL)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	u, err := neturl.Parse(dbURL)
	if err != nil || u.Scheme == "" {
		t.Fatalf("pgtest URL %q is not a URL: %v", dbURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

// rawControls lists, as Go escapes, the characters of s that a terminal
// acts on or that reorder text around them: C0 controls but the newline,
// DEL, C1 controls, bidi marks, embeddings, overrides and isolates, and
// bytes of invalid UTF-8.
func rawControls(s string) []string {
	var bad []string
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			bad = append(bad, fmt.Sprintf("byte %#x at %d", s[i], i))
		case r < 0x20 && r != '\n', r == 0x7f, r >= 0x80 && r <= 0x9f,
			r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
			bad = append(bad, fmt.Sprintf("%U at %d", r, i))
		}
		i += size
	}
	return bad
}

// TestLocksEscapesServerStrings: other sessions choose their
// application_name, their queries and the keys they lock, and `paylock
// locks` prints them all on the reader's terminal. None of their control
// characters (ESC sequences erase and forge lines, \r returns to the start
// of one, bidi overrides reorder it) may reach it raw, in text, --watch or
// --json output; in text they show as Go escapes.
func TestLocksEscapesServerStrings(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	url := sqlASCIIDB(t, ctx, pgtest.DB(t))
	// What a hostile session puts in a key part, its application_name and a query.
	part := "li\x1b[2K\r\nFORGED KEY\u202eevil\u2066\x7f\u009b"
	key := lock.NewKey("payments", "7\x1b[2K", part)
	query := "SELECT '\x1b[2K\x1b[1A\rFORGED QUERY\nFORGED LINE \u202egnp.exe\u2069 \x7f \u009b31m \x9b31m \xff' AS x"

	holder := openSession(t, ctx, url, "holder\x1b[2K\r\u202e")
	if err := lock.Acquire(ctx, holder.tx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.tx.Exec(ctx, query); err != nil {
		t.Fatal(err)
	}
	monitor := openSession(t, ctx, url, "monitor").conn
	waiter := openSession(t, ctx, url, "waiter\x1b]0;title\x07")
	done := waiter.acquireAsync(ctx, key)
	waitWaiters(t, ctx, monitor, key.ID(), 1)

	check := func(t *testing.T, what, out string) {
		t.Helper()
		if bad := rawControls(out); len(bad) > 0 {
			t.Errorf("%s output has raw control characters %v:\n%q", what, bad, out)
		}
	}
	checkText := func(t *testing.T, what, out string) {
		t.Helper()
		check(t, what, out)
		for _, want := range []string{
			// the key, from the waiter's comment
			`payments service_id="7\x1b[2K" line_item_id="li\x1b[2K\r\nFORGED KEY\u202eevil\u2066\x7f\u009b"  [paylock]`,
			// the holder's query, its line break folded, the rest escaped
			`query: SELECT '\x1b[2K\x1b[1A\rFORGED QUERY FORGED LINE \u202egnp.exe\u2069 \x7f \u009b31m \x9b31m \xff' AS x`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s output lacks %s:\n%s", what, want, out)
			}
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "FORGED") {
				t.Errorf("%s output has a forged line %q", what, line)
			}
		}
	}

	t.Run("Text", func(t *testing.T) {
		out := mustRun(t, ctx, "locks", "--database-url", url)
		checkText(t, "text", out)
	})
	t.Run("Watch", func(t *testing.T) {
		code, out, errOut := watch(t, ctx, 2, "locks", "--watch", "100ms", "--database-url", url)
		if code != 0 || !strings.Contains(out, "refreshing every 100ms") {
			t.Fatalf("--watch exit %d: %s\n%s", code, errOut, out)
		}
		checkText(t, "--watch", out)
	})
	t.Run("JSON", func(t *testing.T) {
		for _, args := range [][]string{{"--json"}, {"--json", "--watch", "100ms"}} {
			args := append([]string{"locks", "--database-url", url}, args...)
			code, out, errOut := watch(t, ctx, 1, args...)
			if code != 0 {
				t.Fatalf("%v exit %d: %s", args, code, errOut)
			}
			check(t, strings.Join(args, " "), out)
			// The escapes decode to the same strings.
			var r locksReport
			if err := json.NewDecoder(strings.NewReader(out)).Decode(&r); err != nil {
				t.Fatal(err)
			}
			l := findLock(r, key.ID(), 1)
			if l == nil || !slices.Equal(l.Parts, key.Parts()) || len(l.Holders) != 1 ||
				l.Holders[0].Query != strings.ToValidUTF8(query, "\uFFFD") {
				t.Errorf("%v: lock = %+v, want parts %q and the holder's query", args, l, key.Parts())
			}
		}
	})

	holder.tx.Rollback(ctx)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestVisible(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`SELECT 'a\b' AS "x"`, `SELECT 'a\b' AS "x"`}, // backslashes and quotes stay
		{"é ü 日本", "é ü 日本"},
		{"\x1b[2K\r\t\x00\x7f", `\x1b[2K\r\t\x00\x7f`},
		{"\u0085\u009b\u200e\u202a\u202e\u2066\u2069\u061c\u2028\ufeff", `\u0085\u009b\u200e\u202a\u202e\u2066\u2069\u061c\u2028\ufeff`},
		{"\U000e0001", `\U000e0001`},
		{"a\xffb\xc3", `a\xffb\xc3`},
	} {
		if got := term.Visible(tt.in); got != tt.want {
			t.Errorf("term.Visible(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"SELECT\n  1,\r\n\t2\r3", 100, `SELECT 1, 2\r3`},
		{"  é日本語 ", 3, "é日本..."}, // whole characters, never half of one
		{"\x1b\x1bx", 2, `\x1b\x1b...`},
	} {
		if got := shorten(tt.in, tt.n); got != tt.want {
			t.Errorf("shorten(%q, %d) = %s, want %s", tt.in, tt.n, got, tt.want)
		}
	}
	in := map[string]string{"q": "\x1b \x7f \u009b \u202e \U000e0001 é \xff"}
	doc, _ := json.Marshal(in)
	out := term.EscapeJSON(doc)
	if want := `{"q":"\u001b \u007f \u009b \u202e \udb40\udc01 é \ufffd"}`; string(out) != want {
		t.Errorf("escapeJSONControls = %s, want %s", out, want)
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || back["q"] != strings.ToValidUTF8(in["q"], "\ufffd") {
		t.Errorf("escaped JSON decodes to %q, %v", back, err)
	}
}

// TestLocksHiddenSessions: to a role without pg_read_all_stats, PostgreSQL
// hides other roles' queries ("<insufficient privilege>"), the comment that
// names the key included. A lock such a session waits for is then
// "unknown", never "other" (not taken by paylock), and its client and
// transaction age are "?", not a local socket and 0s.
func TestLocksHiddenSessions(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	url := pgtest.DB(t)
	holder := openSession(t, ctx, url, "holder")
	waiter := openSession(t, ctx, url, "waiter")
	key := lock.NewKey("payments", "7", "li_hidden")
	if err := lock.Acquire(ctx, holder.tx, key); err != nil {
		t.Fatal(err)
	}
	done := waiter.acquireAsync(ctx, key)
	waitWaiters(t, ctx, holder.conn, key.ID(), 1)

	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	role := fmt.Sprintf("paylock_viewer_%d", time.Now().UnixNano()%1e9)
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Skipf("can't create a role here: %v", err)
	}
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP ROLE "+role) })
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	u.User = neturl.User(role)
	viewer := u.String()
	if c, err := pgx.Connect(ctx, viewer); err != nil {
		t.Skipf("the role can't log in here: %v", err)
	} else {
		c.Close(ctx)
	}

	r := decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--database-url", viewer))
	l := findLock(r, key.ID(), 1)
	if l == nil || len(l.Waiters) != 1 || l.Waiters[0].Query != hiddenQuery {
		t.Fatalf("lock %d as the viewer: %+v; want one waiter with its query hidden", key.ID(), l)
	}
	if l.Origin != "unknown" {
		t.Errorf("origin %q with the waiter's query hidden, want unknown", l.Origin)
	}
	out := mustRun(t, ctx, "locks", "--database-url", viewer)
	for _, want := range []string{"0 other, 1 unknown", "key unknown: this role can't read the waiters' queries (pg_read_all_stats)  [unknown]",
		"client ?", "xact ?"} {
		if !strings.Contains(out, want) {
			t.Errorf("paylock locks as the viewer lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not taken by paylock") || strings.Contains(out, "client local") {
		t.Errorf("paylock locks as the viewer says what it can't know:\n%s", out)
	}
	// The same call by a role that may read the queries names the key.
	r = decodeLocks(t, mustRun(t, ctx, "locks", "--json", "--database-url", url))
	if l := findLock(r, key.ID(), 1); l == nil || l.Origin != "paylock" || l.Key != key.String() {
		t.Errorf("as the owner: %+v, want origin paylock and key %s", l, key)
	}
	if err := holder.tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestLocksHelpListsJSONFields: every field of `paylock locks --json` is
// named in `paylock locks --help`, which docs/CLI.md points to for them.
func TestLocksHelpListsJSONFields(t *testing.T) {
	help := mustRun(t, context.Background(), "locks", "--help")
	_, list, ok := strings.Cut(help, "JSON (--json) fields:")
	if !ok {
		t.Fatalf("paylock locks --help lists no JSON fields:\n%s", help)
	}
	words := map[string]bool{}
	for _, w := range strings.FieldsFunc(list, func(r rune) bool {
		return !(r == '_' || r >= 'a' && r <= 'z')
	}) {
		words[w] = true
	}
	for _, v := range []any{locksReport{}, lockInfo{}, backend{}, chainLink{}} {
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name != "" && name != "-" && !words[name] {
				t.Errorf("paylock locks --help does not name the JSON field %s (%s.%s)", name, typ.Name(), typ.Field(i).Name)
			}
		}
	}
}
