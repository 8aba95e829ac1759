package entity

import "testing"

// TestGroupCommitRequeueAfterWatchStopped: a leader popped the only
// queued caller, and then its idle watch (time.AfterFunc, on a goroutine of
// its own) ended its gathering: nobody leads the key, which is forgotten.
// The leader then could not take the caller (its keep-alive failed) and
// puts it back. It must lead the next transaction; before the fix requeue
// found no key and panicked (nil pointer), and the caller waited for its
// turn for good.
func TestGroupCommitRequeueAfterWatchStopped(t *testing.T) {
	gs := &groups[int, int]{max: 8, keys: map[int64]*groupKey[int, int]{}}
	if !gs.arrive(1, &member[int, int]{}) {
		t.Fatal("the first caller does not lead")
	}
	m := &member[int, int]{}
	if gs.arrive(1, m) {
		t.Fatal("a caller behind the leader leads")
	}
	if gs.pop(1) != m {
		t.Fatal("pop did not return the queued caller")
	}
	gs.stopLeading(1) // the idle watch, after the pop
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("requeue panicked: %v", p)
			}
		}()
		gs.requeue(1, m)
	}()
	select {
	case g := <-m.turn:
		if g != nil {
			t.Fatal("the caller put back was handed a group, want to lead")
		}
	default:
		t.Fatal("the caller put back got no turn: its call would wait for good")
	}
	if gs.arrive(1, &member[int, int]{}) {
		t.Error("a new caller leads while the caller put back does")
	}

	// Another caller arrived after the watch stopped the gathering, and
	// leads: the caller put back queues first behind it.
	gs = &groups[int, int]{max: 8, keys: map[int64]*groupKey[int, int]{}}
	gs.arrive(2, &member[int, int]{})
	m = &member[int, int]{}
	gs.arrive(2, m)
	gs.pop(2)
	gs.stopLeading(2)
	if !gs.arrive(2, &member[int, int]{}) {
		t.Fatal("a caller arriving after the gathering ended does not lead")
	}
	later := &member[int, int]{}
	gs.arrive(2, later)
	gs.requeue(2, m)
	if got := gs.pop(2); got != m {
		t.Error("the caller put back is not first in the queue")
	}
	if got := gs.pop(2); got != later {
		t.Error("the caller queued later is not second")
	}
}
