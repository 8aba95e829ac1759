// Package entityopt holds the options of package entity that are not part of
// its API: they exist for the module's own tools, to measure entity. An
// option here is assignable to entity.Option.
package entityopt

// Config is what an entity.Option sets. Package entity implements it; an
// option of this package calls it.
type Config interface {
	// DisableKeyQueue turns off the Repository's per-key queue.
	DisableKeyQueue()
}

// WithoutKeyQueue returns an entity.Option that turns off the per-key queue:
// every With call takes a pool connection at once and waits for the key's
// lock at PostgreSQL, so callers of one hot key can take the whole pool. It
// exists to measure what the queue buys (`paylock bench`, strategy
// paylock-noqueue); there is no other reason to use it.
func WithoutKeyQueue() func(Config) { return func(c Config) { c.DisableKeyQueue() } }
