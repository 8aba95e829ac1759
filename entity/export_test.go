package entity

import "github.com/paylock/paylock/lock"

// Queued returns how many callers of k wait in r's group commit queue.
func Queued[K, V any](r *Repository[K, V], k lock.Key) int {
	r.groups.mu.Lock()
	defer r.groups.mu.Unlock()
	if gk := r.groups.keys[k.ID()]; gk != nil {
		return len(gk.queue)
	}
	return 0
}

// Limits the tests check.
const (
	ConnsPerKey = connsPerKey
	MaxGroupSQL = maxGroupSQL
)
