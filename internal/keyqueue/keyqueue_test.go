package keyqueue

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// refs returns how many callers wait for or hold key.
func (q *Queue) refs(key int64) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e := q.keys[key]; e != nil {
		return e.refs
	}
	return 0
}

// waitRefs waits until n callers wait for or hold key.
func waitRefs(t *testing.T, q *Queue, key int64, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for q.refs(key) != n {
		if time.Now().After(deadline) {
			t.Fatalf("key %d: %d callers, want %d", key, q.refs(key), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAcquire(t *testing.T) {
	t.Run("AtMostWidthCallersPerKey", func(t *testing.T) {
		q := New(2)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var inside, most atomic.Int32
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				release, err := q.Acquire(ctx, 7)
				if err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				release()
			})
		}
		wg.Wait()
		if got := most.Load(); got != 2 {
			t.Errorf("at most %d callers inside at once, want exactly 2", got)
		}
		if q.Len() != 0 {
			t.Errorf("%d keys left in the queue", q.Len())
		}
	})

	t.Run("OtherKeysDoNotWait", func(t *testing.T) {
		q := New(1)
		ctx := context.Background()
		release, err := q.Acquire(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		ctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang: key 2 must not wait at all
		defer cancel()
		r2, err := q.Acquire(ctx, 2)
		if err != nil {
			t.Fatalf("key 2 waited for key 1: %v", err)
		}
		r2()
	})

	t.Run("FIFO", func(t *testing.T) {
		q := New(1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		first, err := q.Acquire(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var order []int
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				release, err := q.Acquire(ctx, 1)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				release()
			})
			waitRefs(t, q, 1, i+2) // the holder and i+1 queued, in order
		}
		first()
		wg.Wait()
		for i, got := range order {
			if got != i {
				t.Fatalf("went through in order %v, want arrival order", order)
			}
		}
	})

	t.Run("CancelWhileQueued", func(t *testing.T) {
		q := New(1)
		ctx := context.Background()
		holder, err := q.Acquire(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			release, err := q.Acquire(cctx, 1)
			if err == nil {
				release()
			}
			done <- err
		}()
		waitRefs(t, q, 1, 2)
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Acquire after cancel: %v, want context.Canceled", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("Acquire still waiting a minute after its ctx was cancelled")
		}
		if n := q.refs(1); n != 1 {
			t.Errorf("%d callers on the key after the cancelled one left, want 1 (the holder)", n)
		}
		// The cancelled caller took no slot: the next one goes through as
		// soon as the holder leaves.
		next := make(chan struct{})
		go func() {
			release, err := q.Acquire(ctx, 1)
			if err == nil {
				release()
			}
			close(next)
		}()
		waitRefs(t, q, 1, 2)
		holder()
		select {
		case <-next:
		case <-time.After(time.Minute):
			t.Fatal("the next caller did not get the key a minute after the holder released it")
		}
		if q.Len() != 0 {
			t.Errorf("%d keys left", q.Len())
		}
	})

	t.Run("ReleaseTwiceIsHarmless", func(t *testing.T) {
		q := New(1)
		release, err := q.Acquire(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		release()
		release()
		if q.Len() != 0 {
			t.Fatalf("%d keys left", q.Len())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang
		defer cancel()
		r, err := q.Acquire(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		r()
	})

	t.Run("NilQueueLetsEveryoneThrough", func(t *testing.T) {
		var q *Queue
		for range 3 {
			if _, err := q.Acquire(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestNoLeak passes 100k distinct keys through the queue, some concurrently
// and some cancelled while queued, and checks that no entry is left behind and
// the heap does not keep them.
func TestNoLeak(t *testing.T) {
	q := New(2)
	ctx := context.Background()
	const keys = 100_000

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for k := w; k < keys; k += 8 {
				release, err := q.Acquire(ctx, int64(k))
				if err != nil {
					t.Error(err)
					return
				}
				if k%10 == 0 { // a third caller that gives up while queued
					a, _ := q.Acquire(ctx, int64(k))
					cctx, cancel := context.WithCancel(ctx)
					cancel()
					if _, err := q.Acquire(cctx, int64(k)); err == nil {
						t.Error("a third caller on a width-2 key got through")
					}
					a()
				}
				release()
			}
		})
	}
	wg.Wait()
	if n := q.Len(); n != 0 {
		t.Fatalf("%d of %d keys left in the queue", n, keys)
	}

	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	// 100k live entries would be about 15 MB (entry, semaphore, map slot);
	// allow 4 MB of noise.
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 4<<20 {
		t.Errorf("heap grew by %d bytes after 100k keys came and went", grew)
	}
}

// TestWaitSettled: the caller let through second waits in WaitSettled until
// the one let through alone settles, or releases; a caller let through
// behind one that was not alone doesn't wait; ctx ends the wait.
func TestWaitSettled(t *testing.T) {
	q := New(2)
	ctx := context.Background()
	waits := func(key int64) chan error {
		done := make(chan error, 1)
		go func() { done <- q.WaitSettled(ctx, key) }()
		return done
	}
	pending := func(done chan error) bool {
		select {
		case <-done:
			return false
		case <-time.After(20 * time.Millisecond):
			return true
		}
	}

	releaseA, alone, err := q.AcquireAlone(ctx, 1)
	if err != nil || !alone {
		t.Fatalf("first caller: alone %v, %v; want alone", alone, err)
	}
	releaseB, alone, err := q.AcquireAlone(ctx, 1)
	if err != nil || alone {
		t.Fatalf("second caller: alone %v, %v; want not alone", alone, err)
	}
	done := waits(1)
	if !pending(done) {
		t.Fatal("WaitSettled returned before the caller let through alone settled")
	}
	q.Settle(1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := q.WaitSettled(ctx, 1); err != nil { // settled: at once
		t.Fatal(err)
	}
	releaseA()
	releaseB()

	// Release settles too.
	releaseA, _, _ = q.AcquireAlone(ctx, 2)
	releaseB, _, _ = q.AcquireAlone(ctx, 2)
	done = waits(2)
	if !pending(done) {
		t.Fatal("WaitSettled returned before the caller let through alone released")
	}
	releaseA()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	releaseB()

	// ctx ends the wait.
	releaseA, _, _ = q.AcquireAlone(ctx, 3)
	releaseB, _, _ = q.AcquireAlone(ctx, 3)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := q.WaitSettled(cctx, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitSettled with a ctx that ends = %v, want DeadlineExceeded", err)
	}
	releaseA()
	releaseB()
	if n := q.Len(); n != 0 {
		t.Errorf("%d keys left in the queue", n)
	}
}
