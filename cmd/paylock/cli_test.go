package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/cmd/paylock/internal/dedupe"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// paylock runs the CLI with args and returns its exit code and output.
func paylock(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// watch runs a --watch command until it has written reports reports, then
// ends its ctx as Ctrl-C would, and returns its exit code and output. It
// waits for the reports however slow the machine is; only a hang (no report
// within a minute) ends it sooner, with the output so far.
func watch(t *testing.T, ctx context.Context, reports int, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out := &countingWriter{after: reports, done: cancel}
	var errOut bytes.Buffer
	code = run(ctx, args, out, &errOut)
	if out.writes < reports {
		t.Fatalf("paylock %s wrote %d reports before %v, want %d\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), out.writes, ctx.Err(), reports, out.String(), errOut.String())
	}
	return code, out.String(), errOut.String()
}

// countingWriter counts the writes to it (a watch loop writes each report
// at once) and calls done once it has seen after of them.
type countingWriter struct {
	bytes.Buffer
	writes, after int
	done          func()
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes == w.after {
		defer w.done()
	}
	return w.Buffer.Write(p)
}

// mustRun runs the CLI and fails the test unless it exits 0.
func mustRun(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	code, out, errOut := paylock(ctx, args...)
	if code != 0 {
		t.Fatalf("paylock %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// mask replaces what changes from run to run (pids, times, durations,
// database names, ports) with fixed words, so output can be compared with a
// golden file.
func mask(s string, extra ...string) string {
	for i := 0; i+1 < len(extra); i += 2 {
		s = regexp.MustCompile(`\b`+regexp.QuoteMeta(extra[i])+`\b`).ReplaceAllString(s, extra[i+1])
	}
	for _, r := range []struct{ re, with string }{
		{`\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ`, "TIME"},
		{`\bpid \d+`, "pid PID"},
		{`blocked by \[[\d ]+\]`, "blocked by [PIDS]"},
		{`\b\d+(\.\d+)?(ns|µs|ms|s|m)\b`, "DUR"},
		{`\bt\d+_\d+\b`, "DB"},
		{`\d+(\.\d+)? ops/s`, "N ops/s"},
	} {
		s = regexp.MustCompile(r.re).ReplaceAllString(s, r.with)
	}
	return s
}

func TestUsage(t *testing.T) {
	ctx := pgtest.Context(t, 10*time.Second)
	for _, tt := range []struct {
		args []string
		code int
		out  string // substring of stdout
		err  string // substring of stderr, which must be one line
	}{
		{nil, 2, "", "Usage: paylock COMMAND"},
		{[]string{"help"}, 0, "Commands:", ""},
		{[]string{"nope"}, 2, "", `unknown command "nope"`},
		{[]string{"locks", "--help"}, 0, "JSON (--json) fields", ""},
		{[]string{"help", "dedupe"}, 0, "payment_duplicates", ""},
		{[]string{"locks", "--bogus"}, 2, "", "unknown flag --bogus"},
		{[]string{"locks", "payments"}, 2, "", "did you mean --key payments"},
		{[]string{"locks", "--watch=1ns"}, 2, "", "the interval must be from 100ms to 24h"},
		{[]string{"key"}, 2, "", "missing NAMESPACE"},
		{[]string{"key", "Payments", "7"}, 2, "", "only a-z"},
		{[]string{"key", "payments/%zz"}, 2, "", "bad escape"},
		// An argument's control characters are escaped on stderr, like every
		// string paylock prints.
		{[]string{"locks", "--\x1b[2Kx"}, 2, "", `unknown flag --\x1b[2Kx`},
		{[]string{"key", "Pay\x1bments", "7"}, 2, "", `Pay\x1bments`},
		{[]string{"dedupe", "--batch", "0"}, 2, "", "--batch"},
		{[]string{"migrate", "--database-url", "postgres://nobody@127.0.0.1:1/x?connect_timeout=2"}, 1, "", "paylock migrate: connect"},
	} {
		code, out, errOut := paylock(ctx, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
			t.Errorf("paylock %q = %d\nstdout: %s\nstderr: %s\nwant %d, stdout with %q, stderr with %q",
				tt.args, code, out, errOut, tt.code, tt.out, tt.err)
		}
		if strings.ContainsRune(errOut, 0x1b) {
			t.Errorf("paylock %q: stderr has a raw ESC: %q", tt.args, errOut)
		}
		if tt.code != 0 && strings.Count(strings.TrimSuffix(errOut, "\n"), "\n") > 0 && tt.args != nil {
			t.Errorf("paylock %q: stderr is not one line: %q", tt.args, errOut)
		}
	}
}

func contains(s, sub string) bool            { return strings.Contains(s, sub) }
func joinWords(w []string) string            { return strings.Join(w, " ") }
func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func itoa(n int) string { return strconv.Itoa(n) }

func dedupeProgress(pass, done, total int) dedupe.Progress {
	return dedupe.Progress{Pass: pass, KeysDone: done, KeysTotal: total, RowsMoved: int64(done), Batches: done}
}
