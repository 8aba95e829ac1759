package entity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/paylock/paylock/lock"
)

// Outcome is how a With call ended.
type Outcome string

// The outcomes a Hooks function sees.
const (
	OutcomeOK       Outcome = "ok"       // committed
	OutcomeFnError  Outcome = "fn_error" // fn returned an error; rolled back
	OutcomePanic    Outcome = "panic"    // fn panicked; rolled back, panic re-raised
	OutcomeTimeout  Outcome = "timeout"  // lock timeout or ctx deadline
	OutcomeCanceled Outcome = "canceled" // ctx canceled
	OutcomeError    Outcome = "error"    // any other failure: invalid input, connection, SQL
)

// Event describes one With call, for metrics and tracing.
type Event struct {
	// Namespace is the lock key's namespace ("payments"): low cardinality,
	// safe as a metric label.
	Namespace string
	// Key is the lock key. It names the entity; don't use it as a label.
	Key lock.Key
	// Strategy is the Repository's (WithStrategy).
	Strategy Strategy
	// Start is when With was called.
	Start time.Time
	// Granted is when the round trip that took the lock (with Ensure and
	// Find) returned with the key granted; zero if it never was (a lock
	// timeout, ctx done, a failure before the lock). That is the first
	// round trip, or the second when a try of the lock found the key held
	// by another session (see docs/DESIGN.md, "Round trips").
	Granted time.Time
	// RoundTrip is how long that round trip took, granted or not.
	RoundTrip time.Duration
	// Wait is how long the call waited for the key at the server. Granted,
	// it is what PostgreSQL measured for the lock statement (zero with the
	// RowLock strategy, and after a try that took the lock at once; a
	// failed try's round trip is not counted); not granted, the whole round
	// trip, as the client saw it: the wait that ended in a lock timeout,
	// say.
	Wait time.Duration
	// Hold is how long this caller held the key: from Granted to the end of
	// the commit or rollback, as the client saw it. Zero if not granted.
	Hold time.Duration
	// Created reports whether this call inserted the row.
	Created bool
	// GroupSize is, under WithGroupCommit, how many callers' fns ran in the
	// transaction this call's fn ran in (for a call whose fn failed: its
	// place in that transaction); 0 for a call whose fn never ran, and
	// without group commit.
	GroupSize int
	// Outcome classifies Err: what became of the call.
	Outcome Outcome
	// Err is what With returned (nil when Outcome is OutcomeOK).
	Err error

	stage stage
}

type stage int

const (
	stageLock stage = iota
	stageFn
	stageCommit
	stageDone
)

// Hooks observe With calls. Every field is optional. Hooks run
// synchronously on the caller's goroutine after the transaction ended, so
// they must be quick; they must be safe for concurrent use.
type Hooks struct {
	// Start is called when an attempt of With begins (once, unless
	// lock.Options.Retry runs it again), after the key was validated. The
	// ctx it returns is the one With uses from then on: fn and Done get it
	// (a tracing span, say). nil leaves ctx as it is.
	Start func(ctx context.Context, namespace string, key lock.Key) context.Context
	// Done is called once per attempt, after it ended.
	Done func(ctx context.Context, ev Event)
	// Logger, if set, gets a debug record for every call and a warning for
	// every failure other than fn's own error. nil logs nothing.
	Logger *slog.Logger
}

// Chain returns Hooks that call each of hs in turn (Start in order, each
// given the ctx the previous one returned).
func Chain(hs ...Hooks) Hooks {
	return Hooks{
		Start: func(ctx context.Context, ns string, key lock.Key) context.Context {
			for _, h := range hs {
				if h.Start != nil {
					ctx = h.Start(ctx, ns, key)
				}
			}
			return ctx
		},
		Done: func(ctx context.Context, ev Event) {
			for _, h := range hs {
				h.call(ctx, ev)
			}
		},
	}
}

func (h Hooks) none() bool { return h.Start == nil && h.Done == nil && h.Logger == nil }

// finish fills in the end of ev and hands it to the hooks. panicked is what
// With's deferred function recovered, if anything; the caller re-raises it.
func (h Hooks) finish(ctx context.Context, ev *Event, err error, panicked any) {
	if !ev.Granted.IsZero() {
		ev.Hold = time.Since(ev.Granted)
	}
	ev.Err = err
	switch {
	case panicked != nil:
		ev.Outcome = OutcomePanic
		ev.Err = fmt.Errorf("entity: fn panicked: %v", panicked)
	case err == nil:
		ev.Outcome = OutcomeOK
	case ev.stage == stageFn:
		ev.Outcome = OutcomeFnError
	case errors.Is(err, lock.ErrLockTimeout), errors.Is(err, context.DeadlineExceeded):
		ev.Outcome = OutcomeTimeout
	case errors.Is(err, context.Canceled):
		ev.Outcome = OutcomeCanceled
	default:
		ev.Outcome = OutcomeError
	}
	h.call(ctx, *ev)
}

func (h Hooks) call(ctx context.Context, ev Event) {
	if h.Done != nil {
		h.Done(ctx, ev)
	}
	if h.Logger == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String("namespace", ev.Namespace), slog.String("outcome", string(ev.Outcome)),
		slog.Duration("wait", ev.Wait), slog.Duration("hold", ev.Hold), slog.Bool("created", ev.Created),
	}
	level := slog.LevelDebug
	if ev.Outcome != OutcomeOK && ev.Outcome != OutcomeFnError {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("key", ev.Key.String()), slog.Any("error", ev.Err))
	}
	h.Logger.LogAttrs(ctx, level, "paylock with", attrs...)
}
