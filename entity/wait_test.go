package entity_test

import (
	"errors"
	"testing"
	"time"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// TestHooksLockTimeoutIsNotAGrant: a call whose wait for the lock ended in a
// lock timeout is reported as never granted, having waited at least the
// lock timeout, and as holding nothing.
func TestHooksLockTimeoutIsNotAGrant(t *testing.T) {
	t.Parallel()
	pool, ctx := setup(t)
	const timeout = 200 * time.Millisecond
	var rec recorder
	repo := entity.New(pool, counters{}, entity.WithHooks(rec.hooks()),
		entity.WithLockOptions(lock.Options{LockTimeout: timeout}))
	key := "li_timeout_event"
	holdKey(t, ctx, pool, key)
	if err := repo.With(ctx, key, noop); !errors.Is(err, lock.ErrLockTimeout) {
		t.Fatalf("With = %v, want a lock timeout", err)
	}
	ev := rec.last(t)
	if ev.Outcome != entity.OutcomeTimeout || !ev.Granted.IsZero() || ev.Hold != 0 || ev.Wait < timeout || ev.RoundTrip < ev.Wait {
		t.Fatalf("event: outcome %s, granted %v, wait %v, hold %v, round trip %v; want a timeout never granted, holding nothing, after a wait of at least %v",
			ev.Outcome, ev.Granted, ev.Wait, ev.Hold, ev.RoundTrip, timeout)
	}
}
