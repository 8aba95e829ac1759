// Package history records the calls of a concurrent run against counters
// (one per key, each call reading a value and writing value+1) and checks
// with porcupine that the run is linearizable per key: that some order of the
// calls, consistent with their real-time order, explains every value read.
//
// A lost update (two calls that read the same value and both commit) or a
// call acknowledged but not applied has no such order, so Check rejects it.
package history

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/paylock/paylock/lock"
)

// Outcome is how a call ended.
type Outcome int

const (
	// OK: the call committed.
	OK Outcome = iota
	// Failed: the call returned an error that means nothing was committed.
	Failed
	// Unknown: the call returned lock.ErrCommitUnknown; it may have
	// committed, possibly after it returned.
	Unknown
)

func (o Outcome) String() string {
	return [...]string{"ok", "failed", "unknown"}[o]
}

// Op is one recorded call. Times are Unix nanoseconds, so operations
// recorded by different processes on one machine can be merged.
type Op struct {
	Key          string
	Call, Return int64
	// Ran reports whether the call's function ran, and so read Read. A
	// committed call wrote Read+1.
	Ran     bool
	Read    int64
	Outcome Outcome
}

// Recorder collects Ops. It is safe for concurrent use.
type Recorder struct {
	mu  sync.Mutex
	ops []Op
}

// Call is one call in progress; see Recorder.Begin.
type Call struct {
	r  *Recorder
	op Op
}

// Begin records the start of a call on key. Call Read from the call's
// function with the value it read (the last call counts: a retried call's
// function runs again), and End with the call's error.
func (r *Recorder) Begin(key string) *Call {
	return &Call{r: r, op: Op{Key: key, Call: time.Now().UnixNano()}}
}

// Read records the value the call's function read.
func (c *Call) Read(v int64) { c.op.Ran, c.op.Read = true, v }

// End records the end of the call with its error and returns the Op.
func (c *Call) End(err error) Op {
	c.op.Return = time.Now().UnixNano()
	switch {
	case err == nil:
		c.op.Outcome = OK
	case errors.Is(err, lock.ErrCommitUnknown):
		c.op.Outcome = Unknown
	default:
		c.op.Outcome = Failed
	}
	c.r.Add(c.op)
	return c.op
}

// Add records an op made elsewhere (by a worker process, say).
func (r *Recorder) Add(ops ...Op) {
	r.mu.Lock()
	r.ops = append(r.ops, ops...)
	r.mu.Unlock()
}

// Ops returns a copy of the recorded ops.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

// Model is the porcupine model of one key's counter: it starts at 0; a call
// whose function ran read the current value (under the lock nothing else
// happens between that read and the commit); a committed call then set it to
// Read+1, a failed one left it alone, and one of unknown outcome did either.
var Model = porcupine.NondeterministicModel{
	Init: func() []any { return []any{int64(0)} },
	Step: func(state, input, _ any) []any {
		v, op := state.(int64), input.(Op)
		if op.Ran && op.Read != v {
			return nil
		}
		switch op.Outcome {
		case OK:
			return []any{v + 1}
		case Unknown:
			return []any{v, v + 1}
		}
		return []any{v}
	},
	DescribeOperation: func(input, _ any) string {
		op := input.(Op)
		if !op.Ran {
			return fmt.Sprintf("%s: %s, fn did not run", op.Key, op.Outcome)
		}
		return fmt.Sprintf("%s: read %d, %s", op.Key, op.Read, op.Outcome)
	},
}

// Check reports whether ops are linearizable, key by key. An op of unknown
// outcome may take effect at any time after its call. When they are not, or
// when the check of a key ran out of time, ok is false and why names the key.
func Check(ops []Op, timeout time.Duration) (ok bool, why string) {
	byKey := map[string][]porcupine.Operation{}
	for i, op := range ops {
		if op.Outcome == Failed && !op.Ran {
			continue // it touched nothing
		}
		ret := op.Return
		if op.Outcome == Unknown {
			ret = math.MaxInt64
		}
		byKey[op.Key] = append(byKey[op.Key], porcupine.Operation{ClientId: i, Input: op, Call: op.Call, Return: ret})
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	model := Model.ToModel()
	for _, k := range keys {
		switch porcupine.CheckOperationsTimeout(model, byKey[k], timeout) {
		case porcupine.Illegal:
			return false, fmt.Sprintf("key %s: its %d ops are not linearizable (a lost update, or an acknowledged call not applied)", k, len(byKey[k]))
		case porcupine.Unknown:
			return false, fmt.Sprintf("key %s: the check of %d ops did not finish within %v", k, len(byKey[k]), timeout)
		}
	}
	return true, ""
}
