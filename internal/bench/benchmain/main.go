// Command benchmain runs `paylock bench` on its own, for development:
//
//	go run ./internal/bench/benchmain bench --workers 32 --latency 1ms
package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/paylock/paylock/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "bench" {
		args = args[1:]
	}
	os.Exit(bench.Main(ctx, args, os.Stdout, os.Stderr))
}
