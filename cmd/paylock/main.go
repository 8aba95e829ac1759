// Command paylock inspects and prepares a database for the paylock library:
// it shows advisory locks and who waits for them, prints a key's lock id,
// applies the schema, merges duplicate payments and runs a demo. Run
// `paylock help` for the commands; docs/CLI.md shows each with real output.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/paylock/paylock/internal/tools/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	worker.Serve(ctx) // a process of `paylock demo --processes` or `paylock bench --processes`
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
