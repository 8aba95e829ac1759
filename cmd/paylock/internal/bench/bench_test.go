package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/txn"
)

// runBench parses args as `paylock bench` does and runs bench with them.
func runBench(t *testing.T, adminURL string, args ...string) (stdout string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var o Options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	o.Flags(fs)
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if err := o.Validate(fs.Args()); err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	err = Run(ctx, &o, adminURL, args, &out, &errb)
	if err != nil {
		err = fmt.Errorf("%w; stderr: %s", err, errb.String())
	}
	return out.String(), err
}

// TestRunHot runs every strategy on a hot key briefly: the check after each
// run finds no duplicate and no lost update for the strategies that lock,
// and finds them for naive — proof that the check can fail.
func TestRunHot(t *testing.T) {
	t.Parallel()
	stdout, err := runBench(t, pgtest.DB(t), "--workloads", "hot", "--workers", "6",
		"--duration", "400ms", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("Run: %v", err)
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

// TestRunLatencyTable runs two strategies on new keys through the latency
// proxy and prints the table.
func TestRunLatencyTable(t *testing.T) {
	t.Parallel()
	stdout, err := runBench(t, pgtest.DB(t), "--workloads", "cold,warm", "--workers", "4",
		"--strategies", "rowlock,paylock", "--no-pgbench", "--duration", "300ms", "--rounds", "2", "--latency", "1ms")
	if err != nil {
		t.Fatalf("Run: %v", err)
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

// TestPgbenchScriptSendsWithsStatements: the pgbench row is the server-side
// limit of With's own statements, so its script sends each statement With
// sends besides the table's, in the same round trip: BEGIN, the settings and
// the lock in the first (on cold keys the try that With sends for a key cold
// in its process), the commit check and COMMIT in the second.
func TestPgbenchScriptSendsWithsStatements(t *testing.T) {
	t.Parallel()
	for _, workload := range []string{"hot", "warm", "cold"} {
		pipelines := strings.Split(pgbenchScript(workload, pgbenchTarget{connCheck: true}), `\startpipeline`)
		if len(pipelines) != 3 {
			t.Fatalf("%s: %d pipelines, want 2", workload, len(pipelines)-1)
		}
		for _, want := range []struct {
			pipeline int
			sql      string
		}{
			{1, txn.SQLBegin + ";"},
			{1, txn.Settings{IdleTimeout: txn.DefaultIdleTimeout, ConnCheck: true}.SetSQL() + ";"},
			{1, map[string]string{"hot": "pg_advisory_xact_lock(", "warm": "pg_advisory_xact_lock(", "cold": "1 / pg_try_advisory_xact_lock(:k::bigint)::int;"}[workload]},
			{2, txn.CheckSQL + ";"},
			{2, "COMMIT;"},
		} {
			if !strings.Contains(pipelines[want.pipeline], want.sql) {
				t.Errorf("%s: pipeline %d lacks %q", workload, want.pipeline, want.sql)
			}
		}
	}
}
