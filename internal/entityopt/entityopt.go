// Package entityopt holds the options of package entity that are not part of
// its API: they exist for the module's own tools, to measure entity. An
// option here is assignable to entity.Option.
package entityopt

// Token is what a Config method takes to prove that the option calling it
// is one of this package's. Only this package makes a valid Token: its
// field is unexported, and the package, internal, can't be imported from
// outside the module. Code there can still make an entity.Option (reflect,
// or a generic function whose type arguments are inferred) and hand it a
// zero Token, which is not valid.
type Token struct{ valid bool }

// Valid reports whether t was made by this package.
func (t Token) Valid() bool { return t.valid }

// Config is what an entity.Option sets. Package entity implements it,
// ignoring a call with an invalid Token; an option of this package calls it.
type Config interface {
	// DisableKeyQueue turns off the Repository's per-key queue.
	DisableKeyQueue(Token)
}

// WithoutKeyQueue returns an entity.Option that turns off the per-key queue:
// every With call takes a pool connection at once and waits for the key's
// lock at PostgreSQL, so callers of one hot key can take the whole pool. It
// exists to measure what the queue buys (`paylock bench`, strategy
// paylock-noqueue); there is no other reason to use it.
func WithoutKeyQueue() func(Config) {
	return func(c Config) { c.DisableKeyQueue(Token{valid: true}) }
}
