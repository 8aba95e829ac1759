package main

import (
	"context"

	"github.com/paylock/paylock/cmd/paylock/internal/bench"
)

var cmdBench = &command{
	name:    "bench",
	usage:   "[bench flags]",
	summary: "measure paylock against the naive code (see cmd/paylock/internal/bench)",
	raw:     true,
	check:   bench.Parse,
	run: func(ctx context.Context, c *call) error {
		// bench parses its own flags, --help and --database-url included.
		if code := bench.Main(ctx, c.args, c.stdout, c.stderr); code != 0 {
			return exitCode(code)
		}
		return nil
	},
}
