package main

import (
	"context"
	"flag"

	"github.com/paylock/paylock/cmd/paylock/internal/bench"
)

var cmdBench = &command{
	name:    "bench",
	usage:   "[bench flags]",
	summary: "measure paylock against the naive code (see cmd/paylock/internal/bench)",
	flags: func(fs *flag.FlagSet) any {
		o := new(bench.Options)
		o.Flags(fs) // --database-url included: bench's own, with its own default
		return o
	},
	printHelp: bench.PrintHelp,
	validate: func(c *call) error {
		if err := c.flags.(*bench.Options).Validate(c.args); err != nil {
			return usageError{err.Error()}
		}
		return nil
	},
	run: func(ctx context.Context, c *call) error {
		return bench.Run(ctx, c.flags.(*bench.Options), c.argv, c.stdout, c.stderr)
	},
}
