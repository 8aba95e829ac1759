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
	"sync/atomic"
)

// Queue is a set of per-key FIFO queues. The zero value is not usable; a nil
// *Queue lets every caller through at once. It is safe for concurrent use.
type Queue struct {
	width int
	mu    sync.Mutex
	keys  map[int64]*entry
	free  sync.Pool // of *entry, so that a key seen once costs no allocation
}

// entry is one key's queue; its fields are guarded by Queue.mu.
type entry struct {
	held    int             // callers through, at most width
	waiters []chan struct{} // in arrival order; closed when the caller is let through
	refs    int             // callers waiting or holding
	// unsettled: the caller let through alone has not settled (see
	// Settle); settled, made by a caller that waits for that, is closed
	// when it does.
	unsettled bool
	settled   chan struct{}
}

// New returns a Queue that lets width callers per key through at once; width
// below 1 means 1.
func New(width int) *Queue {
	return &Queue{width: max(width, 1), keys: make(map[int64]*entry)}
}

// Acquire blocks until the caller may go on with key: fewer than the queue's
// width of callers hold it and every caller that came earlier has gone
// through. It returns a release function to call exactly once when done, or,
// if ctx is done first, ctx.Err() (the caller then holds nothing and leaves
// the queue at once, letting the next one in).
func (q *Queue) Acquire(ctx context.Context, key int64) (release func(), err error) {
	release, _, err = q.AcquireAlone(ctx, key)
	return release, err
}

// AcquireAlone is Acquire that also reports whether the caller was let
// through at once with no other caller of key holding or waiting: the key
// was cold in this process, as far as the queue knows (a nil Queue knows
// nothing, and reports false).
func (q *Queue) AcquireAlone(ctx context.Context, key int64) (release func(), alone bool, err error) {
	if q == nil {
		return func() {}, false, nil
	}
	done := ctx.Done()
	q.mu.Lock()
	if done != nil && ctx.Err() != nil {
		q.mu.Unlock()
		return nil, false, ctx.Err()
	}
	e := q.keys[key]
	if e == nil {
		e, _ = q.free.Get().(*entry)
		if e == nil {
			e = &entry{}
		}
		q.keys[key] = e
	}
	e.refs++
	if e.held < q.width && len(e.waiters) == 0 {
		alone = e.held == 0
		e.held++
		e.unsettled = e.unsettled || alone
		q.mu.Unlock()
		return q.releaser(key, e, alone), alone, nil
	}
	ready := make(chan struct{})
	e.waiters = append(e.waiters, ready)
	q.mu.Unlock()

	select {
	case <-ready:
		return q.releaser(key, e, false), false, nil
	case <-done:
	}
	q.mu.Lock()
	select {
	case <-ready: // let through meanwhile: pass the slot on
		q.mu.Unlock()
		q.release(key, e)
		return nil, false, ctx.Err()
	default:
	}
	for i, w := range e.waiters {
		if w == ready {
			e.waiters = append(e.waiters[:i], e.waiters[i+1:]...)
			break
		}
	}
	q.leave(key, e)
	q.mu.Unlock()
	return nil, false, ctx.Err()
}

// releaser returns the release function of a caller let through on e;
// alone: one that AcquireAlone let through alone, which settles too.
func (q *Queue) releaser(key int64, e *entry, alone bool) func() {
	var once atomic.Bool
	return func() {
		if !once.Swap(true) {
			if alone {
				q.Settle(key)
			}
			q.release(key, e)
		}
	}
}

// Settle is called by a caller AcquireAlone let through alone once the
// others of its key may go on to the server (it holds the lock there, or
// its wait for it is sent); release settles too. Until then WaitSettled
// waits: a caller alone first tries the lock, and, if another session
// holds it, waits for it in a second round trip, where the caller behind
// it would otherwise get ahead of it at the server.
func (q *Queue) Settle(key int64) {
	if q == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if e := q.keys[key]; e != nil && e.unsettled {
		e.unsettled = false
		if e.settled != nil {
			close(e.settled)
			e.settled = nil
		}
	}
}

// WaitSettled waits until the caller of key let through alone, if one has
// not settled, does (see Settle), or ctx is done. Call it while holding
// key.
func (q *Queue) WaitSettled(ctx context.Context, key int64) error {
	if q == nil {
		return nil
	}
	q.mu.Lock()
	e := q.keys[key]
	if e == nil || !e.unsettled {
		q.mu.Unlock()
		return nil
	}
	if e.settled == nil {
		e.settled = make(chan struct{})
	}
	settled := e.settled
	q.mu.Unlock()
	select {
	case <-settled:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release gives a slot of e back: to the first waiter, if any.
func (q *Queue) release(key int64, e *entry) {
	q.mu.Lock()
	if len(e.waiters) > 0 {
		close(e.waiters[0]) // the slot passes on: held is unchanged
		e.waiters[0] = nil
		e.waiters = e.waiters[1:]
	} else {
		e.held--
	}
	q.leave(key, e)
	q.mu.Unlock()
}

// leave drops a reference to e and forgets it when it was the last. q.mu is
// held.
func (q *Queue) leave(key int64, e *entry) {
	if e.refs--; e.refs == 0 {
		delete(q.keys, key)
		*e = entry{waiters: e.waiters[:0]} // unsettled: false; settled: nil, closed by Settle
		q.free.Put(e)
	}
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
