package pgtest

import (
	"context"
	"os/exec"

	"github.com/paylock/paylock/internal/tools/worker"
)

// Command returns a command that re-executes the test binary as the named
// worker (see Workers) with args, for tests that need separate OS processes:
// worker.Command, under the name the tests know. The worker's stderr goes
// to the test's.
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return worker.Command(ctx, name, args...)
}
