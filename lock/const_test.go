package lock_test

import (
	"testing"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// TestDefaultIdleTimeoutIsTheEngines: lock states its default as a value,
// for go doc; the engine, which lock imports, applies its own copy.
func TestDefaultIdleTimeoutIsTheEngines(t *testing.T) {
	if lock.DefaultIdleTimeout != txn.DefaultIdleTimeout {
		t.Errorf("lock.DefaultIdleTimeout = %v, the engine applies %v", lock.DefaultIdleTimeout, txn.DefaultIdleTimeout)
	}
}
