package pgtest

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"
)

// Context returns a context for the body of t: it ends after five times d,
// or a little before the test binary's deadline (go test -timeout) when that
// comes first, so a hung statement fails the test with a context error
// instead of a panic that hides which test it was. It is cancelled when t
// ends.
//
// d bounds a hang, never a verdict: a test waits for the event it checks,
// and d is what the test takes on a quiet machine, with room to spare. A
// machine busy with other work runs a test many times slower, so the
// context gets five times d (PAYLOCK_TEST_SLACK=n: n times).
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), slack*d)
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

// slack is how many times its quiet-machine bound a test's Context lasts:
// PAYLOCK_TEST_SLACK if it holds a positive integer, else 5.
var slack = func() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("PAYLOCK_TEST_SLACK")); err == nil && n > 0 {
		return time.Duration(n)
	}
	return 5
}()
