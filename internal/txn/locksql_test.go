package txn_test

import (
	"testing"

	"github.com/paylock/paylock/internal/txn"
)

// TestLockSQL pins the text of every lock statement: pg_stat_activity shows
// them, `paylock locks` and docs/CLI.md quote them, and a prepared one is
// named by its text, so a change must be deliberate.
func TestLockSQL(t *testing.T) {
	for _, c := range []struct{ name, got, want string }{
		{"Acquire", txn.AcquireSQL("$1", "payments/7/li_1"), "SELECT pg_advisory_xact_lock($1) /*paylock_key='payments/7/li_1'*/"},
		{"AcquireNoKey", txn.AcquireSQL("$1::bigint"), "SELECT pg_advisory_xact_lock($1::bigint)"},
		{"AcquireLiteral", txn.AcquireSQL("42", "x"), "SELECT pg_advisory_xact_lock(42) /*paylock_key='x'*/"},
		{"TryAcquire", txn.TryAcquireSQL("$1", "x"), "SELECT pg_try_advisory_xact_lock($1) /*paylock_key='x'*/"},
		{"TryAcquireNoKey", txn.TryAcquireSQL("$1::bigint"), "SELECT pg_try_advisory_xact_lock($1::bigint)"},
		{"TryAcquireRow", txn.TryAcquireRowSQL("-42", "x"), "SELECT 1 WHERE pg_try_advisory_xact_lock(-42) /*paylock_key='x'*/"},
		{"AcquireAll", txn.AcquireAllSQL("a", "b"), "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k /*paylock_key='a,b'*/"},
		{"Wait", txn.WaitSQL("$1::bigint", "payments/7/li_123"), "SELECT clock_timestamp() - statement_timestamp() FROM pg_advisory_xact_lock($1::bigint) /*paylock_key='payments/7/li_123'*/"},
		{"Try", txn.TrySQL, "SELECT 1 / pg_try_advisory_xact_lock($1::bigint)::int"},
		{"TryOrFail", txn.TryOrFailSQL(":k::bigint"), "SELECT 1 / pg_try_advisory_xact_lock(:k::bigint)::int"},
	} {
		if c.got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, c.got, c.want)
		}
	}
}
