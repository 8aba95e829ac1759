package entity_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// recorder keeps the events its hooks see.
type recorder struct {
	mu     sync.Mutex
	events []entity.Event
	ctxOK  []bool
}

type ctxKey struct{}

func (r *recorder) hooks() entity.Hooks {
	return entity.Hooks{
		Start: func(ctx context.Context, ns string, key lock.Key) context.Context {
			return context.WithValue(ctx, ctxKey{}, key.String())
		},
		Done: func(ctx context.Context, ev entity.Event) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.events = append(r.events, ev)
			r.ctxOK = append(r.ctxOK, ctx.Value(ctxKey{}) == ev.Key.String())
		},
	}
}

func (r *recorder) last(t *testing.T) entity.Event {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		t.Fatal("no event")
	}
	if !r.ctxOK[len(r.ctxOK)-1] {
		t.Error("Done did not get the ctx Start returned")
	}
	return r.events[len(r.events)-1]
}

func TestHooks(t *testing.T) {
	t.Parallel()
	pool, ctx := setup(t)
	var rec recorder
	repo := entity.New(pool, counters{}, entity.WithHooks(rec.hooks()),
		entity.WithLockOptions(lock.Options{LockTimeout: 100 * time.Millisecond}))
	key := "li_hooks"
	noop := func(context.Context, pgx.Tx, *counter) error { return nil }

	t.Run("CreatedThenFound", func(t *testing.T) {
		fnSawStartCtx := false
		err := repo.With(ctx, key, func(ctx context.Context, _ pgx.Tx, p *counter) error {
			fnSawStartCtx = ctx.Value(ctxKey{}) == lockKey(key).String()
			p.N = 5
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !fnSawStartCtx {
			t.Error("fn did not get the ctx Start returned")
		}
		ev := rec.last(t)
		if ev.Outcome != entity.OutcomeOK || !ev.Created || ev.Namespace != "counters" || ev.Key != lockKey(key) ||
			ev.Strategy != entity.Advisory || ev.Hold <= 0 || ev.Granted.Before(ev.Start) || ev.Err != nil {
			t.Fatalf("event %+v", ev)
		}
		if err := repo.With(ctx, key, noop); err != nil {
			t.Fatal(err)
		}
		if ev := rec.last(t); ev.Created || ev.Outcome != entity.OutcomeOK {
			t.Fatalf("second call's event %+v, want not created, ok", ev)
		}
	})

	t.Run("WaitIsMeasuredByTheServer", func(t *testing.T) {
		const held = 300 * time.Millisecond
		tx := holdKey(t, ctx, pool, key)
		slow := entity.New(pool, counters{}, entity.WithHooks(rec.hooks()))
		done := make(chan error, 1)
		go func() { done <- slow.With(ctx, key, noop) }()
		// Once With waits at the server, keep it waiting for held.
		if err := pgtest.AwaitLockWaiters(ctx, pool, 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(held)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// A lower bound only: the lock was held at least that long after
		// With's lock statement started.
		if ev := rec.last(t); ev.Wait < held || ev.RoundTrip < ev.Wait {
			t.Fatalf("wait %v, round trip %v; want at least %v, within the round trip", ev.Wait, ev.RoundTrip, held)
		}
	})

	t.Run("Outcomes", func(t *testing.T) {
		boom := errors.New("boom")
		if err := repo.With(ctx, key, func(context.Context, pgx.Tx, *counter) error { return boom }); err != boom {
			t.Fatal(err)
		}
		if ev := rec.last(t); ev.Outcome != entity.OutcomeFnError || ev.Err != boom {
			t.Fatalf("fn error: %+v", ev)
		}

		func() {
			defer func() {
				if p := recover(); p != "hooked" {
					t.Fatalf("recovered %v, want the panic re-raised", p)
				}
			}()
			repo.With(ctx, key, func(context.Context, pgx.Tx, *counter) error { panic("hooked") })
		}()
		if ev := rec.last(t); ev.Outcome != entity.OutcomePanic || !strings.Contains(ev.Err.Error(), "hooked") {
			t.Fatalf("panic: %+v", ev)
		}

		holdKey(t, ctx, pool, key)
		if err := repo.With(ctx, key, noop); !errors.Is(err, lock.ErrLockTimeout) {
			t.Fatalf("With = %v, want a lock timeout", err)
		}
		if ev := rec.last(t); ev.Outcome != entity.OutcomeTimeout {
			t.Fatalf("lock timeout: %+v", ev)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		repo.With(cctx, key, noop)
		if ev := rec.last(t); ev.Outcome != entity.OutcomeCanceled {
			t.Fatalf("canceled: %+v", ev)
		}
		repo.With(ctx, "", noop)
		if n := len(rec.events); rec.events[n-1].Outcome == entity.OutcomeError {
			t.Fatal("an invalid key was reported: hooks see only calls past validation")
		}
	})
}

func TestLoggerIsSilentByDefaultAndWarnsOnFailure(t *testing.T) {
	t.Parallel()
	pool, ctx := setup(t)
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	repo := entity.New(pool, counters{}, entity.WithHooks(entity.Hooks{Logger: logger}))
	key := "li_log"
	if err := repo.With(ctx, key, func(context.Context, pgx.Tx, *counter) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Fatalf("a successful call logged at warn level: %s", buf.String())
	}
	repo.With(ctx, "refused_log", func(context.Context, pgx.Tx, *counter) error { return nil })
	if out := buf.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "outcome=error") ||
		!strings.Contains(out, "counters/refused_log") {
		t.Fatalf("a refused key logged %q, want a warning with outcome and key", out)
	}
}

func TestCheckAcceptsPostgreSQL(t *testing.T) {
	t.Parallel()
	pool, ctx := setup(t)
	for _, s := range []entity.Strategy{entity.Advisory, entity.RowLock} {
		if err := entity.CheckEngine(ctx, pool, s); err != nil {
			t.Errorf("Check(%v) on PostgreSQL: %v", s, err)
		}
	}
}

func TestChainCallsEveryHookInOrder(t *testing.T) {
	t.Parallel()
	pool, ctx := setup(t)
	var calls []string
	hook := func(name string) entity.Hooks {
		return entity.Hooks{
			Start: func(ctx context.Context, ns string, key lock.Key) context.Context {
				calls = append(calls, name+" start")
				return context.WithValue(ctx, ctxKey{}, name) // the next Start sees it
			},
			Done: func(ctx context.Context, ev entity.Event) {
				calls = append(calls, name+" done after "+ctx.Value(ctxKey{}).(string))
			},
		}
	}
	repo := entity.New(pool, counters{}, entity.WithHooks(entity.Chain(hook("a"), hook("b"))))
	if err := repo.With(ctx, "li_chain",
		func(context.Context, pgx.Tx, *counter) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(calls, ", "), "a start, b start, a done after b, b done after b"; got != want {
		t.Fatalf("calls: %s; want %s", got, want)
	}
}
