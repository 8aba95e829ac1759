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
	Key      lock.Key
	Strategy Strategy
	// Start is when With was called.
	Start time.Time
	// Granted is when the first round trip (the lock, Ensure, Find)
	// returned; zero if it never did.
	Granted time.Time
	// RoundTrip is how long that first round trip took.
	RoundTrip time.Duration
	// Wait is how long PostgreSQL made the lock statement wait, measured by
	// the server (zero with the RowLock strategy).
	Wait time.Duration
	// Hold is how long this caller held the key: from Granted to the end of
	// the commit or rollback, as the client saw it.
	Hold time.Duration
	// Created reports whether this call inserted the row.
	Created bool
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
	// Done is called once per With call, after it ended.
	Done func(ctx context.Context, ev Event)
	// Logger, if set, gets a debug record for every call and a warning for
	// every failure other than fn's own error. nil logs nothing.
	Logger *slog.Logger
}

// Chain returns Hooks that call each of hs in turn.
func Chain(hs ...Hooks) Hooks {
	return Hooks{Done: func(ctx context.Context, ev Event) {
		for _, h := range hs {
			h.call(ctx, ev)
		}
	}}
}

// report fills in the end of ev and hands it to the hooks. It runs deferred
// in With, so it also sees a panic, which it re-raises.
func (r *Repository[K, V]) report(ev *Event, errp *error) {
	if r.hooks.Done == nil && r.hooks.Logger == nil {
		return
	}
	p := recover()
	if !ev.Granted.IsZero() {
		ev.Hold = time.Since(ev.Granted)
	}
	ev.Err = *errp
	switch {
	case p != nil:
		ev.Outcome = OutcomePanic
		ev.Err = fmt.Errorf("entity: fn panicked: %v", p)
	case ev.Err == nil:
		ev.Outcome = OutcomeOK
	case ev.stage == stageFn:
		ev.Outcome = OutcomeFnError
	case errors.Is(ev.Err, lock.ErrLockTimeout), errors.Is(ev.Err, context.DeadlineExceeded):
		ev.Outcome = OutcomeTimeout
	case errors.Is(ev.Err, context.Canceled):
		ev.Outcome = OutcomeCanceled
	default:
		ev.Outcome = OutcomeError
	}
	r.hooks.call(context.Background(), *ev)
	if p != nil {
		panic(p)
	}
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
