package history_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/history"
)

func op(key string, call, ret, read int64, o history.Outcome) history.Op {
	return history.Op{Key: key, Call: call, Return: ret, Ran: true, Read: read, Outcome: o}
}

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		name string
		ops  []history.Op
		ok   bool
	}{
		{"Sequential", []history.Op{op("a", 0, 1, 0, history.OK), op("a", 2, 3, 1, history.OK), op("a", 4, 5, 2, history.OK)}, true},
		{"OverlappingButSerialized", []history.Op{op("a", 0, 10, 1, history.OK), op("a", 1, 5, 0, history.OK), op("a", 11, 12, 2, history.OK)}, true},
		{"KeysAreIndependent", []history.Op{op("a", 0, 1, 0, history.OK), op("b", 0, 1, 0, history.OK), op("b", 2, 3, 1, history.OK)}, true},
		{"FailedWritesNothing", []history.Op{op("a", 0, 1, 0, history.Failed), op("a", 2, 3, 0, history.OK)}, true},
		{"UnknownThatCommitted", []history.Op{op("a", 0, 1, 0, history.Unknown), op("a", 2, 3, 1, history.OK)}, true},
		{"UnknownThatDidNot", []history.Op{op("a", 0, 1, 0, history.Unknown), op("a", 2, 3, 0, history.OK)}, true},
		{"FnDidNotRun", []history.Op{{Key: "a", Call: 0, Return: 1, Outcome: history.Failed}, op("a", 2, 3, 0, history.OK)}, true},

		// Two overlapping calls both read 0 and both committed: one update
		// is lost, whatever the order.
		{"LostUpdateIsRejected", []history.Op{op("a", 0, 10, 0, history.OK), op("a", 1, 11, 0, history.OK), op("a", 12, 13, 1, history.OK)}, false},
		// An acknowledged call that the next one does not see.
		{"AcknowledgedButNotAppliedIsRejected", []history.Op{op("a", 0, 1, 0, history.OK), op("a", 2, 3, 0, history.OK)}, false},
		// A failed call whose write shows up anyway.
		{"FailedButAppliedIsRejected", []history.Op{op("a", 0, 1, 0, history.Failed), op("a", 2, 3, 1, history.OK)}, false},
		// A stale read after the write had returned.
		{"StaleReadIsRejected", []history.Op{op("a", 0, 1, 0, history.OK), op("a", 2, 3, 1, history.OK), op("a", 4, 5, 1, history.Failed)}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ok, why := history.Check(tt.ops, 5*time.Second)
			if ok != tt.ok {
				t.Fatalf("Check = %v (%s), want %v", ok, why, tt.ok)
			}
		})
	}
}

// TestCheckManyOverlapping: 16 clients on one key, every call overlapping
// the others (as when all wait for one lock), stays fast to check.
func TestCheckManyOverlapping(t *testing.T) {
	var ops []history.Op
	for i := range int64(2000) {
		ops = append(ops, op(fmt.Sprint("k", i%3), i, i+16, i/3, history.OK))
	}
	start := time.Now()
	if ok, why := history.Check(ops, 10*time.Second); !ok {
		t.Fatal(why)
	}
	t.Logf("checked %d ops in %v", len(ops), time.Since(start))
}
