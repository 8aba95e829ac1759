package pgtest

import (
	"context"
	"os"
	"os/exec"
	"strings"
)

// Command returns a command that re-executes the test binary as the named
// worker (see Workers) with args, for tests that need separate OS processes.
// The worker's stderr goes to the test's.
func Command(ctx context.Context, worker string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envWorker+"="+worker, envWorker+"_ARGS="+strings.Join(args, "\x1f"))
	cmd.Stderr = os.Stderr
	return cmd
}
