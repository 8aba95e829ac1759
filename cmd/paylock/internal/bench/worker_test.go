package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/worker"
)

// TestWorkerProcessError: a bench worker process that fails says so as
// `paylock bench` does, in one escaped line, and exits 1.
func TestWorkerProcessError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := worker.Command(ctx, workerName, "x\x1b[31m")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	const want = "paylock bench: invalid character 'x' looking for beginning of value\n"
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || stderr.String() != want {
		t.Fatalf("bench worker process: %v, stderr %q; want exit code 1 and stderr %q", err, stderr.String(), want)
	}
}

// TestRunProcesses: with --processes the workers run in worker processes
// (this binary again) and their ops add up in the report.
func TestRunProcesses(t *testing.T) {
	t.Parallel()
	stdout, err := runBench(t, pgtest.DB(t), "--workloads", "hot", "--workers", "2", "--processes", "2",
		"--strategies", "paylock,naive", "--no-pgbench", "--duration", "200ms", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var rep Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if rep.Processes != 2 || len(rep.Rows) != 2 {
		t.Fatalf("report: %d processes, %d rows; want 2 and 2: %s", rep.Processes, len(rep.Rows), stdout)
	}
	for _, r := range rep.Rows {
		if r.Ops == 0 || r.Errors != 0 || (r.Strategy == "paylock" && (r.Duplicates != 0 || r.Lost != 0)) {
			t.Errorf("%s: %d ops, %d errors, %d duplicates, %d lost", r.Strategy, r.Ops, r.Errors, r.Duplicates, r.Lost)
		}
	}
}
