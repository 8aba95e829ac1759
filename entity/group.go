package entity

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// Group commit: the callers of one key that wait behind the transaction in
// progress run in the next one, one after another, each fn on its caller's
// goroutine, and commit together. See WithGroupCommit.

// maxGroupSQL is the most callers with a savepoint (a subtransaction: fn
// ran SQL, or its row was written; the savepoints fn begins on tx count
// too) that one group transaction takes: PostgreSQL
// keeps the ids of 64 subtransactions per backend in shared memory
// (PGPROC_MAX_CACHED_SUBXIDS); beyond that every snapshot taken anywhere in
// the cluster has to look further.
const maxGroupSQL = 64

// ErrGroupRolledBack: fn returned nil, but another caller run in the same
// group transaction (see [WithGroupCommit]) broke that transaction, so it was
// rolled back before COMMIT: nothing of this call was committed, and
// lock.Retry may run it again. The error also says why.
var ErrGroupRolledBack = errors.New("entity: another call broke the group transaction: rolled back")

// Cloner is implemented by a Table whose rows [WithGroupCommit] may hand from
// one caller to the next within one transaction.
type Cloner[V any] interface {
	// Clone returns a deep copy of v, sharing nothing fn could change in
	// place (slices, maps, pointers) with it, as Scan would have returned it
	// with the given created.
	Clone(v *V, created bool) *V
}

// WithGroupCommit turns group commit on, with at most max callers per
// transaction: callers of one key in one Repository that wait behind the
// key's transaction in progress run in the next transaction together, in
// arrival order, and commit once. Each fn runs on its caller's goroutine
// with its caller's ctx, in a savepoint of its own. A lone caller runs
// exactly as without the option.
//
// The contract: a set of calls that share a transaction ends exactly as the
// same calls run one by one in arrival order — each call's outcome (nil,
// fn's own error, its panic, another error), the final row, and every SQL
// side effect of fn — except for latency, and except that a failure of the
// shared COMMIT (or of the connection) reaches every member whose fn
// succeeded, with nothing committed ([ErrGroupRolledBack] when another
// member broke the connection). Two more exceptions: a member whose ctx
// ends after its fn returned, before its group's outcome, gets
// [lock.ErrCommitUnknown] with ctx's error and its part may commit (alone,
// nothing would); and when the Table's Scan panics, other calls fail than
// one by one. docs/DESIGN.md, "Where a group still differs", lists the
// rest.
//
// The package doc, "Group commit", says what follows for ctx, idle members,
// savepoints and bounds. It needs a Table that implements [Cloner]; with any
// other Table, and with max below 2, it changes nothing.
func WithGroupCommit(max int) Option { return option(func(c *config) { c.group = max }) }

// groups is a Repository's group commit state: for each key, whether a
// leader is gathering callers for its transaction, and the callers queued.
type groups[K, V any] struct {
	max  int
	mu   sync.Mutex
	keys map[int64]*groupKey[K, V]
}

type groupKey[K, V any] struct {
	// leading: a caller leads the key's next transaction, which has not
	// stopped taking callers; later callers queue.
	leading bool
	queue   []*member[K, V]
}

// member is one caller in a group.
type member[K, V any] struct {
	ctx  context.Context // the caller's, as the hooks' Start returned it
	fn   func(ctx context.Context, tx pgx.Tx, v *V) error
	ev   *Event
	turn chan *group[K, V] // nil: lead; else run in that group
	done chan error        // the group's outcome, for a member whose fn succeeded
	// handoff: whether a leader that took the member from the queue may
	// still hand it its turn (see claim and abandon).
	handoff atomic.Int32
}

// A queued member's handoff.
const (
	handoffOpen    int32 = iota // queued, or taken from the queue and not handed a turn yet
	handoffClaimed              // a leader hands it its turn (or makes it the next leader)
	handoffGone                 // its ctx ended after a leader took it, before its turn: it left
)

// claim reports whether m is still there to be handed its turn, and keeps it
// there: it can no longer leave but by its turn.
func (m *member[K, V]) claim() bool {
	return m.handoff.CompareAndSwap(handoffOpen, handoffClaimed)
}

// abandon reports whether m, taken from the queue and not claimed yet,
// leaves: its ctx ended before its turn, and the leader skips it.
func (m *member[K, V]) abandon() bool {
	return m.handoff.CompareAndSwap(handoffOpen, handoffGone)
}

// arrive enqueues m for key, or makes it the leader when no leader is
// gathering and nobody waits: a lone caller leads at once.
func (gs *groups[K, V]) arrive(key int64, m *member[K, V]) (lead bool) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil {
		gk = &groupKey[K, V]{}
		gs.keys[key] = gk
	}
	if !gk.leading && len(gk.queue) == 0 {
		gk.leading = true
		return true
	}
	m.turn, m.done = make(chan *group[K, V], 1), make(chan error, 1) // a lone caller needs neither
	gk.queue = append(gk.queue, m)
	return false
}

// leave takes m out of key's queue if it is still there (reporting whether it
// was); otherwise a leader took it, and its turn is in m.turn.
func (gs *groups[K, V]) leave(key int64, m *member[K, V]) bool {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil {
		return false
	}
	for i, q := range gk.queue {
		if q == m {
			gk.queue = append(gk.queue[:i], gk.queue[i+1:]...)
			gs.forget(key, gk)
			return true
		}
	}
	return false
}

// pop takes the first queued caller of key, nil if none.
func (gs *groups[K, V]) pop(key int64) *member[K, V] {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil || len(gk.queue) == 0 {
		return nil
	}
	m := gk.queue[0]
	gk.queue[0] = nil
	gk.queue = gk.queue[1:]
	return m
}

// requeue puts m, which the leader claimed, back at the head of key's
// queue: a leader popped it but could not take it into its transaction. If
// nobody leads the key any more (the leader's idle watch ended its
// gathering after it popped m, and nobody was queued), m leads.
func (gs *groups[K, V]) requeue(key int64, m *member[K, V]) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	if gk == nil {
		gk = &groupKey[K, V]{}
		gs.keys[key] = gk
	}
	if !gk.leading {
		gk.leading = true
		m.turn <- nil // buffered: never blocks
		return
	}
	m.handoff.Store(handoffOpen) // queued again: it may leave as any queued caller
	gk.queue = append([]*member[K, V]{m}, gk.queue...)
}

// stopLeading ends the current leader's gathering: the first queued caller,
// if any, becomes the leader of the next transaction and goes to wait for the
// lock at PostgreSQL while this one commits (two connections per key, as
// with the key queue).
func (gs *groups[K, V]) stopLeading(key int64) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	gk := gs.keys[key]
	for len(gk.queue) > 0 {
		m := gk.queue[0]
		gk.queue[0] = nil
		gk.queue = gk.queue[1:]
		if m.claim() { // else it left (put back, then its ctx ended)
			m.turn <- nil // buffered: never blocks
			return
		}
	}
	gk.leading = false
	gs.forget(key, gk)
}

func (gs *groups[K, V]) forget(key int64, gk *groupKey[K, V]) {
	if !gk.leading && len(gk.queue) == 0 {
		delete(gs.keys, key)
	}
}
