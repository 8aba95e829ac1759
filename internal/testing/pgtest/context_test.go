package pgtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestContext: the ctx ends after d, never after the test binary's deadline,
// and is cancelled when its test ends.
func TestContext(t *testing.T) {
	t.Run("EndsAfterD", func(t *testing.T) {
		ctx := pgtest.Context(t, time.Millisecond)
		<-ctx.Done()
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("ctx.Err() = %v, want DeadlineExceeded", ctx.Err())
		}
	})

	t.Run("BoundedByTheTestDeadline", func(t *testing.T) {
		end, ok := t.Deadline()
		if !ok {
			t.Skip("no test deadline (go test -timeout 0)")
		}
		got, ok := pgtest.Context(t, 1000*time.Hour).Deadline()
		if !ok || got.After(end) {
			t.Fatalf("ctx deadline %v (%v); want one before the test deadline %v", got, ok, end)
		}
	})

	var ctx context.Context
	t.Run("CancelledWhenTheTestEnds", func(t *testing.T) {
		ctx = pgtest.Context(t, time.Hour)
		if ctx.Err() != nil {
			t.Fatalf("ctx.Err() = %v during the test", ctx.Err())
		}
	})
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("after the test: ctx.Err() = %v, want Canceled", ctx.Err())
	}
}
