package payment_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/entityopt"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// storm is what a pool of 4 connections saw while 64 goroutines called With
// on one hot key and one goroutine made calls on other keys.
type storm struct {
	hotOps, coldOps  int64
	mostAcquired     int32 // pool connections acquired at once, sampled
	mostAcquiredHot  int32 // the same, sampled while no cold call ran
	emptyAcquires    int64 // acquires that had to wait for a connection
	mostLockWaiters  int   // backends waiting for an advisory lock, sampled (not atomic: logged only)
	hotOpsDuringCold int64 // most hot calls that completed during one cold call
}

// runStorm runs the storm until the cold goroutine has made coldCalls calls.
func runStorm(t *testing.T, opts ...entity.Option) storm {
	t.Helper()
	_, pool := newRepo(t, func(cfg *pgxpool.Config) {
		cfg.MaxConns, cfg.MinConns = 4, 4
		cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	repo := payment.NewRepository(pool, opts...)
	ctx := pgtest.Context(t, 2*time.Minute)
	// Watch from outside the pool, so the watching takes none of its
	// connections.
	watch, err := pgx.Connect(ctx, pool.Config().ConnConfig.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	for pool.Stat().IdleConns() < 4 { // all four dialled: none is made during the storm
		time.Sleep(10 * time.Millisecond)
	}

	var s storm
	var hotOps, coldSeq atomic.Int64 // coldSeq is odd while a cold call runs
	hot := payment.Key{ServiceID: 1, LineItemID: "li_hot"}
	bump := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	start, coldDone := make(chan struct{}), make(chan struct{})
	emptyBefore := pool.Stat().EmptyAcquireCount()

	g, gctx := errgroup.WithContext(ctx)
	for range 64 {
		g.Go(func() error {
			<-start
			for {
				select {
				case <-coldDone:
					return nil
				default:
				}
				if err := repo.With(gctx, hot, bump); err != nil {
					return fmt.Errorf("hot: %w", err)
				}
				hotOps.Add(1)
			}
		})
	}
	g.Go(func() error { // the cold caller
		defer close(coldDone)
		<-start
		time.Sleep(200 * time.Millisecond) // let the storm build
		for i := range 50 {
			coldSeq.Add(1)
			h := hotOps.Load()
			err := repo.With(gctx, payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("li_cold_%d", i)}, bump)
			s.hotOpsDuringCold = max(s.hotOpsDuringCold, hotOps.Load()-h)
			coldSeq.Add(1)
			if err != nil {
				return fmt.Errorf("cold: %w", err)
			}
			s.coldOps++
		}
		return nil
	})
	watched := make(chan error, 1)
	go func() { // the sampler
		defer close(watched)
		for {
			select {
			case <-coldDone:
				return
			case <-time.After(time.Millisecond):
			}
			seq := coldSeq.Load()
			a := pool.Stat().AcquiredConns()
			if seq%2 == 0 && coldSeq.Load() == seq { // no cold call ran meanwhile
				s.mostAcquiredHot = max(s.mostAcquiredHot, a)
			}
			s.mostAcquired = max(s.mostAcquired, a)
			var w int
			if err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`).Scan(&w); err != nil {
				watched <- err
				return
			}
			s.mostLockWaiters = max(s.mostLockWaiters, w)
		}
	}()
	close(start)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := <-watched; err != nil {
		t.Fatal(err)
	}
	s.hotOps = hotOps.Load()
	s.emptyAcquires = pool.Stat().EmptyAcquireCount() - emptyBefore
	var amount int64
	if err := pool.QueryRow(ctx, "SELECT amount_cents FROM payments WHERE line_item_id = 'li_hot'").Scan(&amount); err != nil {
		t.Fatal(err)
	}
	if amount != s.hotOps {
		t.Errorf("hot payment amount %d after %d calls", amount, s.hotOps)
	}
	assertHealthy(t, pool)
	t.Logf("%+v", s)
	return s
}

// TestWithHotKeyCannotStarveThePool: with a pool of 4 connections and 64
// goroutines on one key, the key holds at most 2 connections (the lock's
// holder and the next in line, waiting at PostgreSQL), so no call ever waits
// for a connection and a caller on another key goes straight through. Without
// the queue the hot key takes the whole pool.
func TestWithHotKeyCannotStarveThePool(t *testing.T) {
	t.Parallel()
	t.Run("Queue", func(t *testing.T) {
		t.Parallel()
		s := runStorm(t)
		if s.coldOps != 50 {
			t.Errorf("the cold caller made %d calls, want 50", s.coldOps)
		}
		if s.mostAcquiredHot > 2 {
			t.Errorf("the hot key held %d connections at once, want at most 2", s.mostAcquiredHot)
		}
		if s.mostAcquired > 3 {
			t.Errorf("%d connections acquired at once, want at most 3 (2 hot, 1 cold)", s.mostAcquired)
		}
		if s.emptyAcquires != 0 {
			t.Errorf("%d acquires waited for a free connection, want 0", s.emptyAcquires)
		}
	})
	t.Run("NoQueueStarves", func(t *testing.T) {
		t.Parallel()
		s := runStorm(t, entityopt.WithoutKeyQueue.(entity.Option))
		if s.mostAcquired != 4 || s.emptyAcquires == 0 {
			t.Errorf("without the queue the hot key took at most %d connections and %d acquires waited; "+
				"want the whole pool and waits, or the test can't tell the queue works", s.mostAcquired, s.emptyAcquires)
		}
	})
}

// TestWithQueuedCallerHonoursCtx: a caller waiting in the in-process queue
// (the holder in fn, the next in line at PostgreSQL) returns promptly with
// ctx's error when ctx is cancelled, and the key's queue moves on.
func TestWithQueuedCallerHonoursCtx(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, nil)
	ctx := pgtest.Context(t, time.Minute)
	key := payment.Key{ServiceID: 1, LineItemID: "li_queued"}
	inFn, release := make(chan struct{}), make(chan struct{})
	errs := make(chan error, 2)
	go func() {
		errs <- repo.With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error {
			close(inFn)
			<-release
			return nil
		})
	}()
	<-inFn
	go func() { // next in line: waits at PostgreSQL
		errs <- repo.With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error { return nil })
	}()
	waitWaiting(t, pool, 1)

	qctx, cancel := context.WithCancel(ctx)
	third := make(chan error, 1)
	go func() {
		third <- repo.With(qctx, key, func(context.Context, pgx.Tx, *payment.Payment) error {
			t.Error("fn ran after its ctx was cancelled")
			return nil
		})
	}()
	time.Sleep(50 * time.Millisecond) // into the queue
	if n := pool.Stat().AcquiredConns(); n != 2 {
		t.Errorf("%d connections acquired with a holder, a waiter and a queued caller; want 2", n)
	}
	cancel()
	at := time.Now()
	select {
	case err := <-third:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("queued With = %v, want context.Canceled", err)
		}
		t.Logf("FIGURE the queued With returned %v after the cancel", time.Since(at))
	case <-time.After(time.Minute):
		t.Fatal("queued With still waiting a minute after its ctx was cancelled")
	}
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	assertHealthy(t, pool)
}
