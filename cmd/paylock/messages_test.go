package main

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// goFlagWording is what Go's flag package says in its errors; the CLI says
// it in its own words (flagError).
var goFlagWording = []string{"flag provided but not defined", "invalid boolean value", "invalid value",
	"for -", "flag needs an argument", "bad flag syntax", "parse error", "strconv."}

// TestFlagErrorsInOurWords: a bad flag or flag value gets one line naming the
// flag as the docs do (--watch), with what is wanted, and none of Go's flag
// package wording; --watch takes its interval with or without '='.
func TestFlagErrorsInOurWords(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a usage error is found before anything connects
	for _, tt := range []struct {
		line, want string
	}{
		{"locks --watch 0s", `--watch "0s": out of range: the interval must be from 100ms to 24h`},
		{"locks --watch=0s", `--watch "0s": out of range: the interval must be from 100ms to 24h`},
		{"locks --watch -1s", `--watch "-1s": out of range: the interval must be from 100ms to 24h`},
		{"locks --watch=soon", `--watch "soon": not a duration: want an interval such as 2s, 500ms or 0.5 (seconds), from 100ms to 24h`},
		// Without --key no argument can follow --watch: the word after it is its interval.
		{"locks --watch abc", `--watch "abc": not a duration: want an interval such as 2s, 500ms or 0.5 (seconds), from 100ms to 24h`},
		{"locks --json --watch abc", `--watch "abc": not a duration`},
		{"locks --watch nan", `--watch "nan": not a duration`},
		// Too long for a time.Duration: out of range, not wrapped around to a negative one.
		{"locks --watch 1e10", `--watch "1e10": out of range: the interval must be from 100ms to 24h`},
		{"locks --watch=1e400", `--watch "1e400": out of range`},
		{"locks --watch inf", `--watch "inf": out of range`},
		{"locks --watch 9999999h", `--watch "9999999h": out of range`},
		{"locks --watch -9999999h", `--watch "-9999999h": out of range`},
		{"locks --watch 25h", `--watch "25h": out of range: the interval must be from 100ms to 24h`},
		{"locks --watch 86401", `--watch "86401": out of range`},
		{"locks --bogus", "unknown flag --bogus"},
		{"locks --json=maybe", `--json "maybe": want true or false`},
		{"locks ---x", `malformed flag "---x"`},
		{"demo --pollers x", `--pollers "x": want a whole number`},
		{"demo --work 5x", `--work "5x": want a duration such as 5s or 500ms`},
		{"demo --pollers", "--pollers needs a value"},
		{"bench --duration 1", `--duration "1": want a duration such as 5s or 500ms`},
		{"key --jsn payments 7", "unknown flag --jsn"},
		{"key payments -1 li_1", "unknown flag -1: an argument that begins with '-' goes after --"},
		{"locks --key payments 7 -_x", "unknown flag -_x: an argument that begins with '-' goes after --"},
		{"key --database-url postgres:///x payments 7", "--database-url: paylock key needs no database"},
		{"dedupe --lock-timeout 0s", "--lock-timeout 0s: must be at least 1ms"},
		{"dedupe --lock-timeout -1s", "--lock-timeout -1s: must be at least 1ms"},
		{"dedupe --lock-timeout 500us", "--lock-timeout 500µs: must be at least 1ms"},
	} {
		args := strings.Fields(tt.line)
		code, out, errOut := paylock(ctx, args...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, tt.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("paylock %s = %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.line, code, out, errOut, tt.want)
		}
		for _, w := range goFlagWording {
			if strings.Contains(errOut, w) {
				t.Errorf("paylock %s: stderr %q has Go's flag wording %q", tt.line, errOut, w)
			}
		}
	}
	// The interval parses in every form the help names.
	for _, line := range []string{"locks --watch 5s", "locks --watch=500ms", "locks --watch 0.5", "locks --watch",
		"locks --watch 2s --key payments 7 li_1", "locks --key payments 7 li_1 --watch", "locks --watch 24h", "locks --watch 100ms",
		"locks --watch 86400", "locks --key --watch payments 7 li_1"} {
		if err := checkCommandLine(strings.Fields(line)); err != nil {
			t.Errorf("paylock %s: %v", line, err)
		}
	}
}

// TestHelpFormat: every command's --help has the same shape — usage line,
// summary, flags, then the details — and lists --database-url exactly when
// the command connects.
func TestHelpFormat(t *testing.T) {
	for _, cmd := range commands {
		if cmd.hidden {
			continue
		}
		out := mustRun(t, context.Background(), cmd.name, "--help")
		head := "Usage: paylock " + cmd.name + " [flags]"
		if !strings.HasPrefix(out, head) || !strings.Contains(out, "\n\n"+cmd.summary+"\n\nFlags:\n") {
			t.Errorf("paylock %s --help does not start with %q, the summary and Flags:\n%s", cmd.name, head, out)
		}
		if m := regexp.MustCompile(`(?m)^ +-[^-].*$`).FindString(out); m != "" {
			t.Errorf("paylock %s --help names a flag in Go's wording, not as --name: %q", cmd.name, m)
		}
		if has := strings.Contains(out, "--database-url"); has == cmd.noDatabase {
			t.Errorf("paylock %s --help: lists --database-url = %v, but the command connects = %v", cmd.name, has, !cmd.noDatabase)
		}
	}
	if out := mustRun(t, context.Background(), "key", "--help"); !strings.Contains(out, "No database is needed.") {
		t.Errorf("paylock key --help:\n%s", out)
	}
}

// TestLocksOneLock: one lock is "1 advisory lock".
func TestLocksOneLock(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	url := pgtest.DB(t)
	s := openSession(t, ctx, url, "holder")
	if err := lock.Acquire(ctx, s.tx, lock.NewKey("payments", "7", "li_1")); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, ctx, "locks", "--database-url", url)
	if first, _, _ := strings.Cut(out, "\n"); !strings.Contains(first, ": 1 advisory lock (1 paylock, 0 other, 0 unknown)") {
		t.Errorf("first line %q, want 1 advisory lock, singular", first)
	}
}

// clearDatabaseVars unsets every variable that says where a database is, for
// the rest of t.
func clearDatabaseVars(t *testing.T) {
	for _, v := range []string{"DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE", "PGUSER", "PGPASSWORD"} {
		t.Setenv(v, "") // restored when the test ends
		os.Unsetenv(v)
	}
}

// TestNothingConfigured: a command that needs a database, run with none
// configured, fails naming the flag and the variables to set.
func TestNothingConfigured(t *testing.T) { // not parallel: it clears the database variables
	clearDatabaseVars(t)
	// Whether or not a server listens where libpq looks by default, this
	// makes the connection fail: the server refuses an unknown setting.
	t.Setenv("PGOPTIONS", "-c paylock_no_such_setting=1")
	ctx := pgtest.Context(t, 30*time.Second)
	for _, cmd := range []string{"locks", "migrate", "dedupe"} {
		code, out, errOut := paylock(ctx, cmd)
		if code != exitFailure || out != "" || strings.Count(errOut, "\n") != 1 {
			t.Errorf("paylock %s = %d, stdout %q, stderr %q; want exit 1 and one line", cmd, code, out, errOut)
		}
		for _, want := range []string{"paylock " + cmd + ": no database configured: set --database-url or DATABASE_URL", "PGHOST", "PGDATABASE"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("paylock %s: stderr %q lacks %q", cmd, errOut, want)
			}
		}
	}
}

// TestBenchHonoursPGVariables: with only the PG* variables set, bench runs
// on the server they name, as every command does, and starts no throwaway
// server.
func TestBenchHonoursPGVariables(t *testing.T) { // not parallel: it sets the database variables
	ctx := pgtest.Context(t, 2*time.Minute)
	url := pgtest.DB(t)
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	clearDatabaseVars(t)
	t.Setenv("PGHOST", cfg.Host)
	t.Setenv("PGPORT", strconv.Itoa(int(cfg.Port)))
	t.Setenv("PGUSER", cfg.User)
	t.Setenv("PGPASSWORD", cfg.Password)
	t.Setenv("PGDATABASE", cfg.Database)
	code, out, errOut := paylock(ctx, "bench", "--workloads", "hot", "--strategies", "naive", "--no-pgbench",
		"--workers", "2", "--rounds", "1", "--duration", "100ms")
	if code != 0 || strings.Contains(errOut, "throwaway") || !strings.Contains(out, "naive") {
		t.Fatalf("paylock bench with PG* = %d\nstdout:\n%s\nstderr:\n%s\nwant a run on the server PG* names", code, out, errOut)
	}
}

// TestWatchDefault: --watch without an interval refreshes every 2s, as
// --help and docs/CLI.md say; --watch 5s and --watch=500ms set it.
func TestWatchDefault(t *testing.T) {
	for line, want := range map[string]time.Duration{
		"locks --watch":                     2 * time.Second,
		"locks --watch --key payments 7 li": 2 * time.Second,
		"locks --watch 5s":                  5 * time.Second,
		"locks --watch=500ms":               500 * time.Millisecond,
	} {
		c, err := parseCall(strings.Fields(line))
		if err != nil {
			t.Fatalf("paylock %s: %v", line, err)
		}
		if w := c.flags.(*locksFlags).watch; !w.on || w.interval != want {
			t.Errorf("paylock %s: watch %+v, want on every %s", line, w, want)
		}
	}
}

// TestDedupeErrorReadsOnce: a dedupe that can't take a key's lock in
// --lock-timeout says dedupe and lock once each (it said "paylock dedupe:
// dedupe: merge 1 keys ...: lock: acquire 1 keys: lock: lock_timeout
// expired"), and every count agrees with its noun.
func TestDedupeErrorReadsOnce(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	url := pgtest.DB(t)
	s := openSession(t, ctx, url, "holder")
	if _, err := s.tx.Exec(ctx, `CREATE TABLE services (id bigint PRIMARY KEY, name text NOT NULL);
		INSERT INTO services VALUES (1, 'a');
		CREATE TABLE payments (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
			service_id bigint NOT NULL REFERENCES services, line_item_id text NOT NULL,
			amount_cents bigint NOT NULL DEFAULT 0, currency text NOT NULL DEFAULT '',
			status text NOT NULL DEFAULT '', data jsonb, created_at timestamptz NOT NULL DEFAULT now(),
			updated_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO payments (service_id, line_item_id) VALUES (1, 'li_1'), (1, 'li_1'), (1, 'li_2')`); err != nil {
		t.Fatal(err)
	}
	if err := s.tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := lock.Acquire(ctx, tx, lock.NewKey("payments", "1", "li_1")); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := paylock(ctx, "dedupe", "--lock-timeout", "50ms", "--database-url", url)
	if code != exitFailure || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "paylock dedupe: merge 1 key from ") ||
		!strings.Contains(errOut, ": lock: acquire 1 key: lock_timeout expired while waiting for the lock: ") ||
		strings.Count(errOut, "dedupe") != 1 || strings.Count(errOut, "lock: acquire") != 1 || strings.Contains(errOut, "lock: lock_timeout") {
		t.Errorf("dedupe = %d, stderr %q; want exit 1 and one line saying dedupe and 'lock:' once each, merge 1 key, acquire 1 key", code, errOut)
	}
	for _, want := range []string{"payments: 3 rows; 1 key has duplicates, 1 row beyond the first of their key\n", "       1 key with 2 rows\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("dedupe's report lacks %q:\n%s", want, out)
		}
	}
}

// TestReadOnce: readOnce keeps a package's prefix where it first appears,
// drops the command's own, and leaves anything else, a last part that is a
// prefix's word included.
func TestReadOnce(t *testing.T) {
	for _, tt := range []struct{ name, msg, want string }{
		{"dedupe", "dedupe: merge 1 key from (1, \"li_1\"): lock: acquire 1 key: lock: lock_timeout expired",
			"merge 1 key from (1, \"li_1\"): lock: acquire 1 key: lock_timeout expired"},
		{"migrate", "payment: migrate: lock: run x: lock: acquire x: lock: deadlock detected", "payment: migrate: lock: run x: acquire x: deadlock detected"},
		{"locks", "connect: dial: lock", "connect: dial: lock"},
	} {
		if got := readOnce(tt.name, tt.msg); got != tt.want {
			t.Errorf("readOnce(%q, %q) = %q, want %q", tt.name, tt.msg, got, tt.want)
		}
	}
}

// TestBadDatabaseURLInEnvironment: a DATABASE_URL (or PG* variable) that
// does not parse is a configuration error naming it, exit 1, not a usage
// error with "run 'paylock X --help'": the command line was fine. The same
// string given as --database-url is the command line's mistake, exit 2.
func TestBadDatabaseURLInEnvironment(t *testing.T) { // not parallel: it sets the environment
	ctx := context.Background()
	const bad = "postgres://u:s3cret@127.0.0.1:notaport/x"
	lines := [][]string{{"locks"}, {"locks", "--watch", "1s"}, {"migrate"}, {"dedupe"}, {"demo"}, {"bench", "--workloads", "hot", "--duration", "1s"}}
	check := func(env string, want string) {
		t.Helper()
		for _, args := range lines {
			code, out, errOut := paylock(ctx, args...)
			if code != exitFailure || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, want) ||
				strings.Contains(errOut, "--help") || strings.Contains(errOut, "s3cret") {
				t.Errorf("%s, paylock %s = %d, stdout %q, stderr %q; want exit 1 and one line naming %s, without --help or the password",
					env, strings.Join(args, " "), code, out, errOut, want)
			}
		}
	}
	t.Setenv("DATABASE_URL", bad)
	check("DATABASE_URL "+bad, "configuration error: DATABASE_URL does not parse: ")
	t.Setenv("DATABASE_URL", "")
	t.Setenv("PGPORT", "notaport")
	check("PGPORT notaport", "configuration error: the PG* variables (PGHOST, PGPORT, ...) do not parse: ")
	code, _, errOut := paylock(ctx, "locks", "--database-url", bad)
	if code != exitUsage || !strings.Contains(errOut, "paylock locks: --database-url: ") || strings.Contains(errOut, "s3cret") {
		t.Errorf("paylock locks --database-url %s = %d, stderr %q; want exit 2 naming --database-url", bad, code, errOut)
	}
}
