package payment_test

import (
	"testing"

	"github.com/paylock/paylock/internal/schema"
	"github.com/paylock/paylock/payment"
)

// TestConstantsAreMigrates: payment states its constants as values, for go
// doc; Migrate (internal/schema, shared with paylock dedupe) uses its own
// copies.
func TestConstantsAreMigrates(t *testing.T) {
	if payment.UniqueIndex != schema.UniqueIndex {
		t.Errorf("payment.UniqueIndex = %q, Migrate builds %q", payment.UniqueIndex, schema.UniqueIndex)
	}
	if payment.MigrateLockTimeout != schema.LockTimeout {
		t.Errorf("payment.MigrateLockTimeout = %v, Migrate sets %v", payment.MigrateLockTimeout, schema.LockTimeout)
	}
}
