// Package entityopt holds the options of package entity that are not part of
// its API: they exist for the module's own tools, to measure entity.
//
// entity.Option is opaque, and this package can't build one: entity imports
// it, so it can't import entity. Package entity fills in the options here
// when it is initialized, and the module's code that imports entity reads
// them with a type assertion:
//
//	entityopt.WithoutKeyQueue.(entity.Option)
package entityopt

// WithoutKeyQueue is an entity.Option, set by package entity, that turns off
// the per-key queue: every With call takes a pool connection at once and
// waits for the key's lock at PostgreSQL, so callers of one hot key can take
// the whole pool. It exists to measure what the queue buys (`paylock bench`,
// strategy paylock-noqueue); there is no other reason to use it.
var WithoutKeyQueue any
