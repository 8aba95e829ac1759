package dedupe

import (
	"testing"
	"time"
)

// TestLockTimeoutSetting: a batch's wait is sent to PostgreSQL in whole
// milliseconds, rounded up, so that no positive wait becomes 0, which
// lock_timeout reads as no limit.
func TestLockTimeoutSetting(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Nanosecond:                         "1",
		500 * time.Microsecond:                  "1",
		time.Millisecond:                        "1",
		time.Millisecond + time.Microsecond:     "2",
		30 * time.Second:                        "30000",
		1500*time.Millisecond + time.Nanosecond: "1501",
	} {
		if got := lockTimeoutSetting(d); got != want {
			t.Errorf("lockTimeoutSetting(%s) = %q, want %q", d, got, want)
		}
	}
}

// TestOptionsDefaults: the defaults docs/CLI.md states: batches of 100 keys,
// a 30s wait for a batch's locks, up to 5 passes.
func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.Batch != 100 || o.LockTimeout != 30*time.Second || o.MaxPasses != 5 {
		t.Errorf("Options{} defaults to %+v; want Batch 100, LockTimeout 30s, MaxPasses 5 (docs/CLI.md)", o)
	}
}
