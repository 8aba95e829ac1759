package entity

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/paylock/paylock/internal/txn"
)

// A member's fn that stalls. Alone, its call would hold the key until the
// server ends its transaction, idle for IdleTimeout (SQLSTATE 25P03), and
// fail with nothing committed, while the calls before it had committed and
// returned long before. In a group, the transaction is everyone's: the
// leader keeps it from idling out while a member's fn runs, so that the
// server's idle clock counts that fn alone, and cuts the fn off once it has
// run no statement through tx for IdleTimeout, measured from its start or
// its last call through tx. Then the member's savepoint is rolled back, its
// calls through tx fail with lock.ErrIdleTimeout, and its own call does too
// when fn returns; the leader goes on without waiting for fn, so the calls
// before it get their outcome.
//
// The leader can tell that fn runs no statement only while every call fn
// makes goes through tx and has ended: once fn took a way around it
// (tx.Begin's savepoints, tx.Conn, tx.LargeObjects), or when IdleTimeout is
// left to the server (negative), the leader waits for fn as long as it
// runs; and while fn holds a result open (Rows, a Row not yet scanned, a
// batch not yet closed), whose statement may still be running on the
// server, it waits until fn has closed it.

// idleCheck is what await found when it looked at a member's fn.
type idleCheck int

const (
	idleBusy   idleCheck = iota // a call through tx is in progress, or a result of one open
	idleFine                    // fn may idle on: nothing to do yet
	idleKept                    // the leader sent a statement that does nothing
	idleCut                     // fn was cut off
	idleUnseen                  // fn returned, or took a way around tx: wait for its turn to end
)

// await waits for the end of the turn the leader just handed to a member
// (g.stepped), watching the member's fn while it runs (see above). sent is
// when the transaction's last statement was sent before the turn. It
// returns the member's tx if the leader cut its fn off: the turn is then
// the leader's again, and the member touches nothing of g.
func (g *group[K, V]) await(ctx context.Context, sent time.Time) (cut *memberTx[K, V]) {
	var tx *memberTx[K, V]
	select {
	case <-g.stepped: // failed before its fn ran
		select {
		case <-g.running:
		default:
		}
		return nil
	case tx = <-g.running:
	}
	idle := g.r.settings.IdleTimeout
	if idle <= 0 {
		<-g.stepped
		return nil
	}
	kept := sent // the last statement the leader knows was sent
	timer := time.NewTimer(idle)
	defer timer.Stop()
	wait := time.Duration(0)
	for {
		tx.mu.Lock()
		since := tx.idleSince
		tx.mu.Unlock()
		if wait == 0 {
			// Until fn has been idle for IdleTimeout, or the transaction
			// for half of it, whichever comes first.
			at := since.Add(idle)
			if keep := later(kept, since).Add(idle / 2); keep.Before(at) {
				at = keep
			}
			wait = max(time.Until(at), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-g.stepped:
			return nil
		case <-timer.C:
		}
		wait = 0
		switch g.checkIdle(ctx, tx, idle, &kept) {
		case idleBusy:
			wait = idle / 8 // look again once the call may be over
		case idleCut:
			return tx
		case idleUnseen:
			<-g.stepped
			return nil
		}
	}
}

// checkIdle looks at tx's fn, if no call through tx is in progress: it cuts
// fn off once fn has been idle for idle, and otherwise keeps the
// transaction from idling out on the server when it has been idle for half
// of idle.
func (g *group[K, V]) checkIdle(ctx context.Context, tx *memberTx[K, V], idle time.Duration, kept *time.Time) idleCheck {
	if !tx.gate.TryLock() {
		return idleBusy
	}
	defer tx.gate.Unlock()
	tx.mu.Lock()
	since, opaque, open := tx.idleSince, tx.opaque, len(tx.open) > 0
	tx.mu.Unlock()
	if opaque || tx.fnState() != fnRunning {
		return idleUnseen
	}
	now := time.Now()
	switch {
	case open:
		// fn holds a result open (Rows, a Row not yet scanned, a batch):
		// its statement may still run on the server, which does not count
		// a busy transaction as idle, and the leader can't tell without
		// reading the connection. Neither cut fn off nor send anything:
		// look again later.
		return idleBusy
	case now.Sub(since) >= idle:
		if !tx.leave(fnCutOff) {
			return idleUnseen // fn returned just now
		}
		tx.shutLocked()
		tx.m.Close()
		return idleCut
	case now.Sub(later(*kept, since)) >= idle/2:
		// With the gate held, fn can't send anything meanwhile; and until
		// fn returned (above), its member touches nothing of g.
		g.keepAlive(ctx)
		*kept = time.Now()
		return idleKept
	}
	return idleFine
}

// cutOffErr is what the call of a member whose fn the leader cut off ends
// with: fn's own error if it returned one, as alone, else
// lock.ErrIdleTimeout, safe to retry (alone, COMMIT would find the
// connection ended by the server). fn's own error is marked safe to retry
// only when it came from a call through tx after the cut-off (which failed
// with lock.ErrIdleTimeout), as alone, where that call finds the
// connection gone; an error fn returns without such a call is returned as
// it is, as alone, where nobody has read the server's word yet, and
// lock.Retry does not run fn again. It reads nothing of g that changes.
func (g *group[K, V]) cutOffErr(fnErr error) error {
	if fnErr == nil {
		return txn.BeforeCommit(fmt.Errorf("entity: with %s: %w: its fn ran no statement for %s, so its part of the group transaction was rolled back",
			g.lk, txn.ErrIdleTimeout, g.r.settings.IdleTimeout), true)
	}
	return txn.BeforeCommit(fnErr, errors.Is(fnErr, txn.ErrIdleTimeout))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
