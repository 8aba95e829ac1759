package keyqueue

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCancelAtHandover: callers whose ctx ends while the slot passes to
// them, releases called twice, several keys whose entries are pooled and
// reused: never more than width holders of a key, and once all have left no
// slot is lost (a fresh caller gets through at once) and no entry remains.
func TestCancelAtHandover(t *testing.T) {
	const width, keys, callers, rounds = 2, 3, 16, 200
	q := New(width)
	var holders [keys]atomic.Int32
	for round := range rounds {
		var wg sync.WaitGroup
		for c := range callers {
			key := int64((c + round) % keys)
			ctx, cancel := context.WithCancel(context.Background())
			wg.Add(2)
			go func() {
				defer wg.Done()
				if c%3 == 0 {
					cancel() // often just as the slot is handed over
				}
			}()
			go func() {
				defer wg.Done()
				defer cancel()
				release, err := q.Acquire(ctx, key)
				if err != nil {
					return
				}
				if n := holders[key].Add(1); n > width {
					t.Errorf("key %d: %d holders, width %d", key, n, width)
				}
				holders[key].Add(-1)
				release()
				release() // twice: the second must do nothing
			}()
		}
		wg.Wait()
		if n := q.Len(); n != 0 {
			t.Fatalf("round %d: %d keys left", round, n)
		}
	}
	// No lost slot: width callers of each key get through at once (a lost
	// slot would block the last of them forever).
	for key := range int64(keys) {
		for range width {
			r, err := q.Acquire(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			defer r()
		}
		if e := q.keys[key]; e == nil || e.held != width || len(e.waiters) != 0 {
			t.Fatalf("key %d: entry %+v after %d fresh acquires", key, e, width)
		}
	}
}
