package main

import (
	"context"
	"flag"

	"github.com/paylock/paylock/cmd/paylock/internal/bench"
)

var cmdBench = &command{
	name:    "bench",
	summary: "measure paylock against the naive code (see cmd/paylock/internal/bench)",
	help:    bench.Help(),
	flags: func(fs *flag.FlagSet) any {
		o := new(bench.Options)
		o.Flags(fs)
		return o
	},
	validate: func(c *call) error {
		if err := c.flags.(*bench.Options).Validate(c.args); err != nil {
			return usageError{err.Error()}
		}
		return nil
	},
	run: func(ctx context.Context, c *call) (err error) {
		connString, _, stop, err := c.serverOrThrowaway(ctx, c.stderr)
		if err != nil {
			return err
		}
		defer stop(&err)
		return bench.Run(ctx, c.flags.(*bench.Options), connString, c.argv, c.stdout, c.stderr)
	},
}
