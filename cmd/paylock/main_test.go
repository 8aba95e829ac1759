package main

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Workers{
		// paylock runs the CLI in a re-executed test binary, as the real
		// binary would run (demo --processes re-executes itself).
		"paylock": func(ctx context.Context, args []string) error {
			if code := run(ctx, args, os.Stdout, os.Stderr); code != 0 {
				return fmt.Errorf("exit code %d", code)
			}
			return nil
		},
	})
}
