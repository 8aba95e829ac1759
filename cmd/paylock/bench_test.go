package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

func TestBenchUsage(t *testing.T) {
	ctx := pgtest.Context(t, time.Minute)
	for _, args := range [][]string{
		{"--strategies", "nope"},
		{"--workloads", "lukewarm"},
		{"--workers", "0"},
		{"--workers", "2", "--processes", "3"},
		{"extra"},
		{"--pgbench-mode", "simple"},
	} {
		code, _, stderr := paylock(ctx, append([]string{"bench"}, args...)...)
		if code != 2 || !strings.Contains(stderr, "paylock bench:") {
			t.Errorf("paylock bench %q = %d, stderr %q; want 2 and one line naming the problem", args, code, stderr)
		}
	}
}

// TestBenchEscapes: a hostile flag or database name reaches stderr escaped
// and on one line, never as raw control characters.
func TestBenchEscapes(t *testing.T) {
	ctx := pgtest.Context(t, time.Minute)
	for _, args := range [][]string{
		{"--bogus\x1b[31mRED"},
		{"--database-url", "postgres://u@127.0.0.1:1/x%1b%5b31mRED%e2%80%ae?connect_timeout=2", "--duration", "1ms"},
	} {
		code, _, stderr := paylock(ctx, append([]string{"bench"}, args...)...)
		last := stderr[strings.LastIndex(strings.TrimSuffix(stderr, "\n"), "\n")+1:]
		if code == 0 || strings.ContainsAny(stderr, "\x1b\u202e") || !strings.Contains(last, `\x1b[31mRED`) {
			t.Errorf("paylock bench %q = %d, stderr %q; want a failure naming \\x1b[31mRED escaped, no raw ESC or U+202E", args, code, stderr)
		}
	}
}

// TestBenchHelp: bench's --help lists its strategies and its own flags.
func TestBenchHelp(t *testing.T) {
	out := mustRun(t, context.Background(), "bench", "--help")
	for _, want := range []string{"Usage: paylock bench [flags]", "  paylock ", "-strategies", "-database-url", "CREATE DATABASE", "throwaway"} {
		if !strings.Contains(out, want) {
			t.Errorf("paylock bench --help lacks %q:\n%s", want, out)
		}
	}
}

// TestBenchHelpHidesDatabaseURL: bench's --help names $DATABASE_URL as the
// default without printing its value, which may hold a password.
func TestBenchHelpHidesDatabaseURL(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:s3cret@127.0.0.1:1/x?connect_timeout=2")
	for _, args := range [][]string{{"bench", "--help"}, {"help", "bench"}} {
		code, stdout, stderr := paylock(context.Background(), args...)
		if code != 0 || strings.Contains(stdout+stderr, "s3cret") || !strings.Contains(stdout, "$DATABASE_URL") {
			t.Errorf("paylock %q = %d, output %q; want the help naming $DATABASE_URL, not its value", args, code, stdout+stderr)
		}
	}
	// The variable is still where bench connects.
	code, _, stderr := paylock(context.Background(), "bench", "--duration", "1ms", "--workloads", "hot", "--strategies", "naive", "--no-pgbench")
	if code != 1 || !strings.Contains(stderr, "127.0.0.1") || strings.Contains(stderr, "throwaway") {
		t.Errorf("paylock bench with $DATABASE_URL unreachable = %d, stderr %q; want a failure to connect there", code, stderr)
	}
}
