// Package bench implements `paylock bench`.
package bench

import (
	"context"
	"fmt"
	"io"
)

// Main runs `paylock bench` with args and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "paylock bench: coming in the performance work")
	return 1
}
