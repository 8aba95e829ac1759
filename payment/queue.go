package payment

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
