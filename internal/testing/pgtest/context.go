package pgtest

import (
	"context"
	"testing"
	"time"
)

// Context returns a context for the body of t: it ends after d, or a little
// before the test binary's deadline (go test -timeout) when that comes
// first, so a hung statement fails the test with a context error instead of
// a panic that hides which test it was. It is cancelled when t ends.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if end, ok := dt.Deadline(); ok {
			// Leave a margin for the test to report and clean up.
			margin := time.Until(end) / 20
			if margin > 5*time.Second {
				margin = 5 * time.Second
			}
			ctx2, cancel2 := context.WithDeadline(ctx, end.Add(-margin))
			prev := cancel
			ctx, cancel = ctx2, func() { cancel2(); prev() }
		}
	}
	t.Cleanup(cancel)
	return ctx
}
