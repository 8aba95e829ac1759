package payment

import "github.com/paylock/paylock/entity"

// WithoutKeyQueue turns off the per-key queue (see entity.WithoutKeyQueue):
// every With call takes a pool connection at once and waits for the key's
// lock at PostgreSQL, so callers of one hot payment can take the whole pool.
// It exists to measure what the queue buys.
func WithoutKeyQueue() Option { return entity.WithoutKeyQueue() }
