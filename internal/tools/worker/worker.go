// Package worker runs the current binary again as a named worker: a separate
// OS process that runs one registered function instead of main or the tests.
//
// A program registers its workers (Register), calls Serve first thing in
// main or TestMain, and starts a worker with Command. The worker's name and
// arguments travel in the environment, so the binary's own command line and
// flags (a test binary's -test.* included) play no part.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
)

// env names the variable holding the worker's name and arguments, as JSON.
const env = "PAYLOCK_WORKER"

// Func is a worker: it runs with the arguments Command was given, and its
// error makes the process exit with code 1, or with the code of an
// [ExitCode].
type Func func(ctx context.Context, args []string) error

// ExitCode, returned by a Func (or wrapped in its error), makes the process
// exit with that code and print nothing: the worker has already said why.
type ExitCode int

func (e ExitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

var (
	mu      sync.Mutex
	workers = map[string]Func{}
)

// Register makes fn the worker called name. It panics if name is taken.
func Register(name string, fn Func) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := workers[name]; dup {
		panic("worker: Register called twice for " + name)
	}
	workers[name] = fn
}

type call struct {
	Name string   `json:"name"`
	Args []string `json:"args"`
}

// Command returns a command that runs this binary again as the worker name
// with args. Its stderr is this process's; the caller may change that, and
// set up stdin and stdout, before starting it.
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	b, _ := json.Marshal(call{Name: name, Args: args}) // strings always marshal
	// Serve ignores the command line. The one argument is for a binary that
	// doesn't call Serve: a test binary then runs no test (rather than all,
	// each test that starts a worker starting more), and the worker's
	// caller sees it fail.
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+string(b))
	cmd.Stderr = os.Stderr
	return cmd
}

// Serve returns at once unless this process was started by Command; then it
// runs the worker named there with ctx and exits: 0 when it returns nil,
// the code of an [ExitCode] error, 1 on any other error (printed on
// stderr), 2 when the worker is unknown.
func Serve(ctx context.Context) {
	v, ok := os.LookupEnv(env)
	if !ok {
		return
	}
	os.Exit(serve(ctx, v))
}

func serve(ctx context.Context, v string) int {
	var c call
	if err := json.Unmarshal([]byte(v), &c); err != nil {
		fmt.Fprintf(os.Stderr, "worker: $%s: %v\n", env, err)
		return 2
	}
	mu.Lock()
	fn, ok := workers[c.Name]
	mu.Unlock()
	if !ok {
		fmt.Fprintf(os.Stderr, "worker: unknown worker %q\n", c.Name)
		return 2
	}
	err := fn(ctx, c.Args)
	var code ExitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	default:
		fmt.Fprintf(os.Stderr, "worker %s: %v\n", c.Name, err)
		return 1
	}
}
