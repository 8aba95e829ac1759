package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/tools/worker"
)

// runProcesses spreads spec over n worker processes (this program again, as
// the worker workerName), starts them together once all are connected, and adds up
// what they measured.
func runProcesses(ctx context.Context, spec loadSpec, n int) (loadResult, error) {
	type child struct {
		cmd   *exec.Cmd
		in    io.WriteCloser
		out   *bufio.Reader
		share loadSpec
	}
	children := make([]*child, n)
	defer func() {
		for _, c := range children {
			if c != nil && c.cmd.Process != nil {
				c.cmd.Process.Kill()
				c.cmd.Wait()
			}
		}
	}()
	for i := range n {
		share := spec
		share.Workers = spec.Workers / n
		if i < spec.Workers%n {
			share.Workers++
		}
		if spec.Pool > 0 {
			share.Pool = spec.Pool
		}
		share.KeyPrefix = fmt.Sprintf("%sp%d-", spec.KeyPrefix, i)
		b, _ := json.Marshal(share)
		cmd := worker.Command(ctx, workerName, string(b))
		in, err := cmd.StdinPipe()
		if err != nil {
			return loadResult{}, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return loadResult{}, err
		}
		if err := cmd.Start(); err != nil {
			return loadResult{}, err
		}
		children[i] = &child{cmd: cmd, in: in, out: bufio.NewReader(out), share: share}
	}
	for i, c := range children {
		if line, err := c.out.ReadString('\n'); err != nil || line != "ready\n" {
			return loadResult{}, fmt.Errorf("worker process %d did not get ready (%q, %v); does main call worker.Serve?", i, line, err)
		}
	}
	for _, c := range children {
		io.WriteString(c.in, "go\n")
	}
	var total loadResult
	for i, c := range children {
		var r loadResult
		if err := json.NewDecoder(c.out).Decode(&r); err != nil {
			return loadResult{}, fmt.Errorf("worker process %d: %w", i, err)
		}
		if err := c.cmd.Wait(); err != nil {
			return loadResult{}, fmt.Errorf("worker process %d: %w", i, err)
		}
		total.merge(&r)
	}
	return total, nil
}

// workerName names the worker that runs one process's share of a run.
const workerName = "bench"

func init() {
	worker.Register(workerName, func(ctx context.Context, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("want one argument, the load spec; got %d", len(args))
		}
		if err := workerMain(ctx, args[0], os.Stdin, os.Stdout); err != nil {
			// As `paylock bench` reports its errors: one line, escaped.
			fmt.Fprintln(os.Stderr, "paylock bench:", term.Visible(oneLine(err.Error())))
			return worker.ExitCode(1)
		}
		return nil
	})
}

// workerMain is a worker process: connect, say ready, wait for go, run,
// print the result as JSON.
func workerMain(ctx context.Context, specJSON string, stdin io.Reader, stdout io.Writer) error {
	var spec loadSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	pool, do, err := openLoad(ctx, spec)
	if err != nil {
		return err
	}
	defer pool.Close()
	fmt.Fprintln(stdout, "ready")
	if _, err := bufio.NewReader(stdin).ReadString('\n'); err != nil {
		return err
	}
	res := runLoad(ctx, spec, do)
	return json.NewEncoder(stdout).Encode(res)
}
