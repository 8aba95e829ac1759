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
	for _, want := range []string{"usage: paylock bench [flags]", "  paylock ", "-strategies", "-database-url", "CREATE DATABASE"} {
		if !strings.Contains(out, want) {
			t.Errorf("paylock bench --help lacks %q:\n%s", want, out)
		}
	}
}
