// Package keyqueue queues callers in one process that want the same key, so a
// hot key can't take every connection of a pool.
//
// A Queue lets at most Width callers per key through at once; the rest wait in
// arrival order (FIFO), in memory, without holding a connection. With a width
// of 2 the caller holding a key's advisory lock and the next in line — already
// waiting at PostgreSQL, so the handoff costs no round trip — are all the
// connections that key takes. Per-key entries are reference counted and
// removed when their last caller leaves, so memory is bounded by the number of
// callers inside Acquire or holding a slot, however many keys pass through.
package keyqueue

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// Queue is a set of per-key FIFO queues. The zero value is not usable; a nil
// *Queue lets every caller through at once. It is safe for concurrent use.
type Queue struct {
	width int64
	mu    sync.Mutex
	keys  map[int64]*entry
}

type entry struct {
	sem  *semaphore.Weighted // FIFO: a waiter is never overtaken
	refs int                 // callers waiting or holding; guarded by Queue.mu
}

// New returns a Queue that lets width callers per key through at once; width
// below 1 means 1.
func New(width int) *Queue {
	return &Queue{width: int64(max(width, 1)), keys: make(map[int64]*entry)}
}

// Acquire blocks until the caller may go on with key: fewer than the queue's
// width of callers hold it and every caller that came earlier has gone
// through. It returns a release function to call exactly once when done, or,
// if ctx is done first, ctx.Err() (the caller then holds nothing and leaves
// the queue at once, letting the next one in).
func (q *Queue) Acquire(ctx context.Context, key int64) (release func(), err error) {
	if q == nil {
		return func() {}, nil
	}
	q.mu.Lock()
	e := q.keys[key]
	if e == nil {
		e = &entry{sem: semaphore.NewWeighted(q.width)}
		q.keys[key] = e
	}
	e.refs++
	q.mu.Unlock()

	if err := e.sem.Acquire(ctx, 1); err != nil {
		q.leave(key, e)
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			e.sem.Release(1)
			q.leave(key, e)
		})
	}, nil
}

// leave drops a reference to e and forgets it when it was the last.
func (q *Queue) leave(key int64, e *entry) {
	q.mu.Lock()
	if e.refs--; e.refs == 0 {
		delete(q.keys, key)
	}
	q.mu.Unlock()
}

// Len returns the number of keys with a caller waiting or holding a slot.
func (q *Queue) Len() int {
	if q == nil {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.keys)
}
