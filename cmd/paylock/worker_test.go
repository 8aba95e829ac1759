package main

import (
	"bytes"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/worker"
)

// TestDemoWorkerExit: a demo-worker process ends as `paylock demo-worker`
// would: the command's exit code (2 for a usage error) and its one line on
// stderr, nothing added by the re-exec.
func TestDemoWorkerExit(t *testing.T) {
	ctx := pgtest.Context(t, time.Minute)
	cmd := worker.Command(ctx, "paylock", "demo-worker", "--mode", "x")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	_, _, wantStderr := paylock(ctx, "demo-worker", "--mode", "x")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || stderr.String() != wantStderr {
		t.Fatalf("demo-worker process: %v, stderr %q; want exit code %d and stderr %q", err, stderr.String(), exitUsage, wantStderr)
	}
}
