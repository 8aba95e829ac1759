package payment

import (
	"context"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
)

// connsPerKey is how many With calls of one Repository may hold a pool
// connection for the same key at once: the one holding the key's lock, and
// the next in line, already waiting for the lock at PostgreSQL so that it
// runs as soon as the holder commits, with no round trip in between. Later
// callers wait in the Repository's queue, in arrival order, without a
// connection, so a hot payment leaves the rest of the pool to other
// payments.
const connsPerKey = 2

// WithoutKeyQueue turns off the per-key queue: every With call takes a pool
// connection at once and waits for the key's lock at PostgreSQL, so callers
// of one hot payment can take the whole pool. It exists to measure what the
// queue buys; there is no other reason to use it.
func WithoutKeyQueue() Option {
	return func(r *Repository) { r.queue = nil }
}

// enqueue waits, honouring ctx, for lk's turn in r's queue. A call nested
// in another With or lock.Run (ctx holds a lock) skips the queue: its wait
// belongs at PostgreSQL, whose deadlock detector sees a cycle of nested
// calls that an in-process queue would hide.
func (r *Repository) enqueue(ctx context.Context, lk lock.Key) (release func(), err error) {
	if txn.HoldsAny(ctx) {
		return func() {}, nil
	}
	return r.queue.Acquire(ctx, lk.ID())
}
