package dedupe_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/cmd/paylock/internal/dedupe"
	"github.com/paylock/paylock/internal/testing/livetable"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// waitUntil polls cond until it holds, failing the test after 30s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestRunDuringMigrateBuild: `paylock dedupe` started while Migrate's CREATE
// UNIQUE INDEX CONCURRENTLY waits for an old snapshot sees an INVALID index
// that is still on its way to valid. It must neither drop it nor start a
// build of its own: once the snapshot ends, both succeed and the index is
// Migrate's, valid, with no lock wait queued on payments meanwhile.
func TestRunDuringMigrateBuild(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := pgtest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 8 })
	if _, err := pool.Exec(ctx, payment.Schema()+`;
		INSERT INTO services VALUES (1, 'api');
		INSERT INTO payments (service_id, line_item_id) SELECT 1, 'li_' || g FROM generate_series(1, 100) g`); err != nil {
		t.Fatal(err)
	}
	// An old snapshot keeps Migrate's build in its last phase.
	release := paytest.HoldSnapshot(t, ctx, pool)

	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	waitUntil(t, "Migrate's build", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_progress_create_index
			WHERE phase = 'waiting for old snapshots' AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		return err == nil && n == 1
	})
	oid, valid := paytest.UniqueIndex(t, pool)
	if oid == 0 || valid {
		t.Fatalf("during Migrate's build: index oid %d, valid %v; want an INVALID index", oid, valid)
	}

	deduped := make(chan error, 1)
	go func() {
		_, err := dedupe.Run(ctx, pool, dedupe.Options{})
		deduped <- err
	}()
	// Let dedupe get as far as it goes while the build runs: to a lock
	// wait on payments (a DROP INDEX or a CREATE INDEX of its own), or to
	// polling for the end of the build.
	waitUntil(t, "dedupe to reach the index", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()
			  AND pid NOT IN (SELECT pid FROM pg_stat_progress_create_index)
			  AND (wait_event_type = 'Lock' OR query ILIKE '%DROP INDEX%' OR query ILIKE '%CREATE UNIQUE INDEX%'
			       OR query ILIKE '%pg_try' || '_advisory_lock%')`).Scan(&n)
		return err == nil && n > 0
	})
	var waits int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation'
		AND relation = 'payments'::regclass`).Scan(&waits); err != nil {
		t.Fatal(err)
	}
	if waits > 0 {
		t.Errorf("%d backends queue for a lock on payments during Migrate's build", waits)
	}
	release()
	if err := <-migrated; err != nil {
		t.Errorf("Migrate: %v", err)
	}
	if err := <-deduped; err != nil {
		t.Errorf("dedupe.Run: %v", err)
	}
	if got, valid := paytest.UniqueIndex(t, pool); got != oid || !valid {
		t.Fatalf("after both: index oid %d, valid %v; want Migrate's index %d, valid", got, valid, oid)
	}
}

// TestTwoMigratesAndADedupeWhilePollersWrite: two Migrate loops and a dedupe
// run at once on a live table with duplicates, while pollers call With.
// Every With succeeds, and Withs complete while the tools run (the tools
// start once the pollers are under way, and the pollers' count is taken
// again once the tools are done: a tool that blocked writers for its whole
// run would leave it unchanged); every Migrate either refuses with
// ErrDuplicates (before the merge is done) or succeeds, dedupe succeeds, and
// the index ends valid with one row per key. No deadline but a hang's: how
// fast a call is depends on the machine.
func TestTwoMigratesAndADedupeWhilePollersWrite(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool, st := livePool(t, ctx, livetable.Options{Payments: 5_000, DuplicateRate: 0.02})
	kept := lowest(t, ctx, pool)
	keys := make([]payment.Key, 0, len(kept))
	for k := range kept {
		keys = append(keys, k)
	}
	repo := payment.NewRepository(pool)
	stop := make(chan struct{})
	var pollers errgroup.Group
	var calls atomic.Int64
	for w := range 4 {
		pollers.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				err := repo.With(ctx, keys[rng.IntN(len(keys))], func(context.Context, pgx.Tx, *payment.Payment) error { return nil })
				if err != nil {
					return fmt.Errorf("With: %w", err)
				}
				calls.Add(1)
			}
		})
	}
	for calls.Load() < 4 { // the pollers are under way
		if ctx.Err() != nil {
			t.Fatalf("the pollers completed %d calls before the hang bound", calls.Load())
		}
		time.Sleep(time.Millisecond)
	}
	before := calls.Load()
	var tools errgroup.Group
	for range 2 {
		tools.Go(func() error {
			for {
				err := payment.Migrate(ctx, pool)
				if err == nil {
					return nil
				}
				if !errors.Is(err, payment.ErrDuplicates) {
					return fmt.Errorf("Migrate: %w", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	tools.Go(func() error {
		if _, err := dedupe.Run(ctx, pool, dedupe.Options{Batch: 20}); err != nil {
			return fmt.Errorf("dedupe.Run: %w", err)
		}
		return nil
	})
	terr := tools.Wait()
	during := calls.Load() - before
	close(stop)
	if err := pollers.Wait(); err != nil {
		t.Fatal(err)
	}
	if terr != nil {
		t.Fatal(terr)
	}
	if during == 0 {
		t.Error("no With completed while the Migrates and dedupe ran: they blocked the pollers")
	}
	t.Logf("%d With calls meanwhile", during)
	checkMerged(t, ctx, pool, st, kept)
}
