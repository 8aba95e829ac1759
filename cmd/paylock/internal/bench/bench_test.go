package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code = Main(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestMainUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--strategies", "nope"},
		{"--workloads", "lukewarm"},
		{"--workers", "0"},
		{"--workers", "2", "--processes", "3"},
		{"extra"},
		{"--pgbench-mode", "simple"},
	} {
		code, _, stderr := runMain(t, args...)
		if code != 2 || !strings.Contains(stderr, "paylock bench:") {
			t.Errorf("Main(%q) = %d, stderr %q; want 2 and one line naming the problem", args, code, stderr)
		}
	}
}

// TestMainEscapes: a hostile flag or database name reaches stderr escaped and
// on one line, never as raw control characters.
func TestMainEscapes(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus\x1b[31mRED"},
		{"--database-url", "postgres://u@127.0.0.1:1/x%1b%5b31mRED%e2%80%ae?connect_timeout=2", "--duration", "1ms"},
	} {
		code, _, stderr := runMain(t, args...)
		last := stderr[strings.LastIndex(strings.TrimSuffix(stderr, "\n"), "\n")+1:]
		if code == 0 || strings.ContainsAny(stderr, "\x1b\u202e") || !strings.Contains(last, `\x1b[31mRED`) {
			t.Errorf("Main(%q) = %d, stderr %q; want a failure naming \\x1b[31mRED escaped, no raw ESC or U+202E", args, code, stderr)
		}
	}
}

// TestMainHot runs every strategy on a hot key briefly: the check after each
// run finds no duplicate and no lost update for the strategies that lock,
// and finds them for naive — proof that the check can fail.
func TestMainHot(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runMain(t, "--database-url", pgtest.DB(t), "--workloads", "hot", "--workers", "6",
		"--duration", "400ms", "--rounds", "1", "--json")
	if code != 0 {
		t.Fatalf("Main = %d: %s", code, stderr)
	}
	var rep Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if rep.SynchronousCommit == "" || rep.ServerVersion == "" {
		t.Errorf("report lacks the server's settings: %+v", rep)
	}
	seen := map[string]bool{}
	for _, r := range rep.Rows {
		seen[r.Strategy] = true
		t.Logf("%s: %.0f ops/s, p99 %.2f ms, %d duplicates, %d lost, %d errors, %d retries",
			r.Strategy, r.OpsPerSec, r.P99Ms, r.Duplicates, r.Lost, r.Errors, r.Retries)
		if r.Ops == 0 || r.OpsPerSec <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms {
			t.Errorf("%s: implausible figures %+v", r.Strategy, r)
		}
		switch r.Strategy {
		case "naive":
			if r.Duplicates+r.Lost == 0 {
				t.Errorf("naive with 6 workers on one key lost no update and made no duplicate: the check is blind")
			}
		default:
			if r.Duplicates != 0 || r.Lost != 0 || r.Errors != 0 {
				t.Errorf("%s: %d duplicates, %d lost updates, %d errors (%s)", r.Strategy, r.Duplicates, r.Lost, r.Errors, r.FirstError)
			}
		}
		if r.Strategy == "rowlock" && r.VsRowlock != 1 {
			t.Errorf("rowlock's ratio to itself is %v", r.VsRowlock)
		}
	}
	for _, s := range strategies {
		if !seen[s.name] {
			t.Errorf("no row for %s", s.name)
		}
	}
	if findPgbench() != "" && !seen[pgbenchName] {
		t.Error("pgbench is installed but has no row")
	}
}

// TestMainLatencyTable runs two strategies on new keys through the latency
// proxy and prints the table.
func TestMainLatencyTable(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runMain(t, "--database-url", pgtest.DB(t), "--workloads", "cold,warm", "--workers", "4",
		"--strategies", "rowlock,paylock", "--no-pgbench", "--duration", "300ms", "--rounds", "2", "--latency", "1ms")
	if code != 0 {
		t.Fatalf("Main = %d: %s", code, stderr)
	}
	t.Log("\n" + stdout)
	for _, want := range []string{"latency=1ms", "x rowlock", "cold", "warm", "paylock"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(stdout, "pgbench  ") || strings.Contains(stdout, "first error") {
		t.Errorf("unexpected row or error:\n%s", stdout)
	}
}

func TestHistQuantile(t *testing.T) {
	var h hist
	for i := 1; i <= 100; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}} {
		got := h.quantile(c.q)
		if got < c.want || float64(got) > float64(c.want)*histGrowth*histGrowth {
			t.Errorf("quantile(%v) = %v, want %v within 2 buckets", c.q, got, c.want)
		}
	}
	var empty hist
	if empty.quantile(0.5) != 0 {
		t.Error("quantile of an empty histogram is not 0")
	}
}
