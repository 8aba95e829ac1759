package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/paylock/paylock/internal/tools/worker"
)

func TestMain(m *testing.M) {
	worker.Register("echo", func(ctx context.Context, args []string) error {
		fmt.Printf("%q\n", args)
		return nil
	})
	worker.Register("fail", func(ctx context.Context, args []string) error { return errors.New("boom") })
	worker.Register("code", func(ctx context.Context, args []string) error {
		return fmt.Errorf("said so already: %w", worker.ExitCode(3))
	})
	worker.Serve(context.Background())
	os.Exit(m.Run())
}

func TestCommand(t *testing.T) {
	ctx := context.Background()
	t.Run("Args", func(t *testing.T) {
		args := []string{"a b", "", "--flag", "x\x1fy", "é\n"}
		out, err := worker.Command(ctx, "echo", args...).Output()
		if want := fmt.Sprintf("%q\n", args); err != nil || string(out) != want {
			t.Fatalf("echo worker: %q, %v; want %q", out, err, want)
		}
	})
	for name, want := range map[string]int{"fail": 1, "nosuch": 2} {
		t.Run(name, func(t *testing.T) {
			cmd := worker.Command(ctx, name)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != want || !strings.Contains(stderr.String(), name) {
				t.Fatalf("worker %s: %v, stderr %q; want exit code %d naming it", name, err, stderr.String(), want)
			}
		})
	}
}

// TestExitCode: a worker's ExitCode is the process's exit code, and
// nothing is added to what the worker printed.
func TestExitCode(t *testing.T) {
	cmd := worker.Command(context.Background(), "code")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || stderr.Len() != 0 {
		t.Fatalf("worker code: %v, stderr %q; want exit code 3 and nothing on stderr", err, stderr.String())
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("a second Register of one name did not panic")
		}
	}()
	worker.Register("echo", nil)
}

// TestCommandWithoutServe: a binary that never calls Serve, started by
// Command, runs nothing: a test binary runs no tests (not all of them, each
// test that starts a worker starting more), and fails to be a worker.
func TestCommandWithoutServe(t *testing.T) {
	if os.Getenv("WORKER_TEST_CHILD") != "" {
		t.Skip("in the child")
	}
	cmd := worker.Command(context.Background(), "echo", "x")
	env := []string{"WORKER_TEST_CHILD=1"}
	for _, kv := range cmd.Env {
		if !strings.HasPrefix(kv, "PAYLOCK_WORKER=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env // as if this binary did not call Serve
	cmd.Stderr = nil
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no tests to run") {
		t.Fatalf("test binary started by Command without Serve: %v, output %q; want it to run no tests", err, out)
	}
}
