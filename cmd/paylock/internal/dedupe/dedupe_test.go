package dedupe_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/cmd/paylock/internal/dedupe"
	"github.com/paylock/paylock/internal/testing/livetable"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// livePool returns a pool on a database whose payments table has no unique
// index yet and holds the generated rows.
func livePool(t *testing.T, ctx context.Context, o livetable.Options) (*pgxpool.Pool, livetable.Stats) {
	t.Helper()
	pool := pgtest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 16 })
	if _, err := pool.Exec(ctx, payment.Schema()); err != nil {
		t.Fatal(err)
	}
	st, err := livetable.Generate(ctx, pool, o)
	if err != nil {
		t.Fatal(err)
	}
	return pool, st
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) (n int) {
	t.Helper()
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// lowest maps every duplicated key to its lowest id and that row's amount.
func lowest(t *testing.T, ctx context.Context, pool *pgxpool.Pool) map[payment.Key][2]int64 {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT DISTINCT ON (service_id, line_item_id) service_id, line_item_id, id, amount_cents
		FROM payments WHERE (service_id, line_item_id) IN (
			SELECT service_id, line_item_id FROM payments GROUP BY 1, 2 HAVING count(*) > 1)
		ORDER BY service_id, line_item_id, id`)
	if err != nil {
		t.Fatal(err)
	}
	m := map[payment.Key][2]int64{}
	var k payment.Key
	var id, amount int64
	if _, err := pgx.ForEachRow(rows, []any{&k.ServiceID, &k.LineItemID, &id, &amount}, func() error {
		m[k] = [2]int64{id, amount}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

// checkMerged checks the invariants after a complete Run: one row per key,
// every removed row in quarantine pointing at the kept (lowest) id, the
// counts adding up, the index valid and enforcing.
func checkMerged(t *testing.T, ctx context.Context, pool *pgxpool.Pool, st livetable.Stats, kept map[payment.Key][2]int64) {
	t.Helper()
	if n := count(t, pool, `SELECT count(*) FROM (SELECT FROM payments GROUP BY service_id, line_item_id HAVING count(*) > 1) d`); n != 0 {
		t.Errorf("%d keys still have several rows", n)
	}
	rows, moved := count(t, pool, "SELECT count(*) FROM payments"), count(t, pool, "SELECT count(*) FROM payment_duplicates")
	if rows != st.Keys || moved != st.ExtraRows || rows+moved != st.Rows {
		t.Errorf("payments %d + quarantine %d = %d; want %d keys + %d extra rows = %d generated",
			rows, moved, rows+moved, st.Keys, st.ExtraRows, st.Rows)
	}
	// Every quarantined row points at the row kept for its key, a lower id,
	// and keeps the whole original row.
	if n := count(t, pool, `SELECT count(*) FROM payment_duplicates d JOIN payments p ON p.id = d.merged_into
		AND p.service_id = d.service_id AND p.line_item_id = d.line_item_id
		WHERE p.id < d.id AND (d.original->>'id')::bigint = d.id AND d.original->>'line_item_id' = d.line_item_id`); n != st.ExtraRows {
		t.Errorf("%d of %d quarantined rows point at their key's kept, lower id with the original row", n, st.ExtraRows)
	}
	for k, want := range kept {
		var id int64
		if err := pool.QueryRow(ctx, "SELECT id FROM payments WHERE service_id = $1 AND line_item_id = $2",
			k.ServiceID, k.LineItemID).Scan(&id); err != nil || id != want[0] {
			t.Fatalf("kept row of %s = %d (%v), want the lowest id %d", k, id, err, want[0])
		}
	}
	exists, valid, err := dedupe.IndexState(ctx, pool)
	if err != nil || !exists || !valid {
		t.Fatalf("index exists %v valid %v (%v), want a valid index", exists, valid, err)
	}
	var pgErr *pgconn.PgError
	for k := range kept {
		_, err := pool.Exec(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES ($1, $2)", k.ServiceID, k.LineItemID)
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("inserting a duplicate after dedupe = %v, want a unique violation", err)
		}
		break
	}
}

// TestRunWhilePollersWrite is the adoption scenario: 100,000 payments, 1% of
// the keys duplicated (some 3 or 5 times), merged while 8 goroutines keep
// calling With on the duplicated keys.
func TestRunWhilePollersWrite(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	began := time.Now()
	pool, st := livePool(t, ctx, livetable.Options{Payments: 100_000, DuplicateRate: 0.01})
	generated := time.Since(began)
	if st.DuplicateKeys != 1000 || st.ByCopies[3] == 0 || st.ByCopies[5] == 0 {
		t.Fatalf("generated %+v, want 1000 duplicated keys, some with 3 and 5 copies", st)
	}
	kept := lowest(t, ctx, pool)
	keys := make([]payment.Key, 0, len(kept))
	for k := range kept {
		keys = append(keys, k)
	}

	// Pollers: add 1 to amount_cents through With, counting per key.
	repo := payment.NewRepository(pool)
	var (
		mu    sync.Mutex
		added = map[payment.Key]int64{}
		calls atomic.Int64
	)
	stop := make(chan struct{})
	start := make(chan struct{})
	var pollers errgroup.Group
	for w := range 8 {
		pollers.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			<-start
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				k := keys[rng.IntN(len(keys))]
				err := repo.With(ctx, k, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
					p.AmountCents++
					return nil
				})
				if err != nil {
					return err
				}
				mu.Lock()
				added[k]++
				mu.Unlock()
				calls.Add(1)
			}
		})
	}
	close(start)
	for calls.Load() < 200 { // the pollers are in full swing
		time.Sleep(5 * time.Millisecond)
	}
	var progress []dedupe.Progress
	res, err := dedupe.Run(ctx, pool, dedupe.Options{Batch: 50, Progress: func(p dedupe.Progress) { progress = append(progress, p) }})
	during := calls.Load()
	time.Sleep(100 * time.Millisecond) // With keeps working on the indexed table
	close(stop)
	if perr := pollers.Wait(); perr != nil {
		t.Fatalf("a poller failed: %v", perr)
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("generated %d rows (%d keys, %d duplicated: %v) in %v; Run: %d keys, %d rows moved, %d batches, %d passes, index build %v, total %v; %d With calls during, %d in all",
		st.Rows, st.Keys, st.DuplicateKeys, st.ByCopies, generated.Round(time.Millisecond), res.Keys, res.RowsMoved, res.Batches,
		res.Passes, res.Index.BuildDuration.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond), during, calls.Load())
	if res.Keys != st.DuplicateKeys || res.RowsMoved != int64(st.ExtraRows) || !res.Index.Valid {
		t.Errorf("Run = %+v, want %d keys and %d rows moved, index valid", res, st.DuplicateKeys, st.ExtraRows)
	}
	if n := len(progress); n != res.Batches || progress[n-1].KeysDone != progress[n-1].KeysTotal {
		t.Errorf("progress reports = %d, last %+v; want one per batch (%d), ending complete", n, progress[n-1], res.Batches)
	}
	checkMerged(t, ctx, pool, st, kept)
	// No update made through With was lost: the kept row is the one With
	// used all along.
	for k, want := range kept {
		var amount int64
		if err := pool.QueryRow(ctx, "SELECT amount_cents FROM payments WHERE service_id = $1 AND line_item_id = $2",
			k.ServiceID, k.LineItemID).Scan(&amount); err != nil {
			t.Fatal(err)
		}
		if amount != want[1]+added[k] {
			t.Fatalf("%s: amount %d, want %d + %d With calls", k, amount, want[1], added[k])
		}
	}
}

func TestRunResumesAfterCancel(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool, st := livePool(t, ctx, livetable.Options{Payments: 5_000, DuplicateRate: 0.05})
	kept := lowest(t, ctx, pool)

	runCtx, cancel := context.WithCancel(ctx)
	res, err := dedupe.Run(runCtx, pool, dedupe.Options{Batch: 20, Progress: func(p dedupe.Progress) {
		if p.Batches == 3 {
			cancel() // Ctrl-C after three batches
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run with ctx cancelled mid-way = %v, want context.Canceled", err)
	}
	if res.Batches != 3 {
		t.Fatalf("Run did %d batches after the cancel, want 3", res.Batches)
	}
	moved := count(t, pool, "SELECT count(*) FROM payment_duplicates")
	if moved == 0 || moved >= st.ExtraRows || int64(moved) != res.RowsMoved {
		t.Fatalf("after the cancel %d rows quarantined (Run says %d), want some of %d", moved, res.RowsMoved, st.ExtraRows)
	}
	if rows := count(t, pool, "SELECT count(*) FROM payments"); rows+moved != st.Rows {
		t.Fatalf("after the cancel payments %d + quarantine %d != %d", rows, moved, st.Rows)
	}
	res2, err := dedupe.Run(ctx, pool, dedupe.Options{Batch: 20})
	if err != nil {
		t.Fatal(err)
	}
	if res.RowsMoved+res2.RowsMoved != int64(st.ExtraRows) || res.Keys+res2.Keys != st.DuplicateKeys {
		t.Fatalf("the two runs moved %d+%d rows of %d keys %d+%d; want %d rows, %d keys",
			res.RowsMoved, res2.RowsMoved, st.DuplicateKeys, res.Keys, res2.Keys, st.ExtraRows, st.DuplicateKeys)
	}
	checkMerged(t, ctx, pool, st, kept)
	// A third run finds nothing to do.
	res3, err := dedupe.Run(ctx, pool, dedupe.Options{})
	if err != nil || res3.Keys != 0 || !res3.Index.AlreadyValid {
		t.Fatalf("third Run = %+v, %v; want nothing to do", res3, err)
	}
}

func TestRunReplacesInvalidIndex(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool, st := livePool(t, ctx, livetable.Options{Payments: 2_000, DuplicateRate: 0.05})
	kept := lowest(t, ctx, pool)
	// An earlier build failed on the duplicates and left an INVALID index.
	_, err := pool.Exec(ctx, "CREATE UNIQUE INDEX CONCURRENTLY "+payment.UniqueIndex+" ON payments (service_id, line_item_id)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("building the index over duplicates = %v, want a unique violation", err)
	}
	if exists, valid, _ := dedupe.IndexState(ctx, pool); !exists || valid {
		t.Fatalf("index exists %v valid %v; want an INVALID index to start from", exists, valid)
	}
	// Migrate refuses, naming the duplicates.
	var dup *payment.DuplicatesError
	if err := payment.Migrate(ctx, pool); !errors.As(err, &dup) || dup.Groups != st.DuplicateKeys {
		t.Fatalf("Migrate = %v, want a DuplicatesError with %d groups", err, st.DuplicateKeys)
	}
	res, err := dedupe.Run(ctx, pool, dedupe.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Index.DroppedInvalid != 1 || res.Index.Builds != 1 || !res.Index.Valid {
		t.Fatalf("index result = %+v, want the invalid index dropped and one valid build", res.Index)
	}
	checkMerged(t, ctx, pool, st, kept)
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate after dedupe: %v", err)
	}
}

// A writer that doesn't take the lock (old code during a rollout) inserts a
// duplicate while the merge runs: a second listing catches it.
func TestRunCatchesDuplicatesAddedDuringTheMerge(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool, st := livePool(t, ctx, livetable.Options{Payments: 2_000, DuplicateRate: 0.05})
	kept := lowest(t, ctx, pool)
	// The first key merged (keys go in order), so its batch is done when
	// the row arrives.
	var first payment.Key
	for k := range kept {
		if first.ServiceID == 0 || k.ServiceID < first.ServiceID ||
			k.ServiceID == first.ServiceID && k.LineItemID < first.LineItemID {
			first = k
		}
	}
	var inserted bool
	res, err := dedupe.Run(ctx, pool, dedupe.Options{Batch: 10, Progress: func(p dedupe.Progress) {
		if p.Pass == 1 && p.Batches == 2 && !inserted {
			inserted = true
			_, err := pool.Exec(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES ($1, $2)",
				first.ServiceID, first.LineItemID)
			if err != nil {
				t.Error(err)
			}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Passes != 2 {
		t.Errorf("Run made %d passes, want 2 (the second for the row inserted meanwhile)", res.Passes)
	}
	// The key was already duplicated: its lowest id stays the one kept.
	st.Rows++
	st.ExtraRows++
	checkMerged(t, ctx, pool, st, kept)
}

func TestInspect(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool, st := livePool(t, ctx, livetable.Options{Payments: 3_000, DuplicateRate: 0.02})
	r, err := dedupe.Inspect(ctx, pool, 5)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rows != st.Rows || r.Groups != st.DuplicateKeys || r.Extra != st.ExtraRows || len(r.Worst) != 5 || len(r.Sample) != 5 ||
		r.IndexExists || r.Quarantined != 0 {
		t.Fatalf("Inspect = %+v, want %+v", r, st)
	}
	for c, n := range st.ByCopies {
		if r.ByCopies[c] != n {
			t.Errorf("ByCopies[%d] = %d, want %d", c, r.ByCopies[c], n)
		}
	}
	if len(r.Worst[0].IDs) != 5 || r.Worst[0].IDs[0] > r.Worst[0].IDs[1] {
		t.Errorf("worst group = %+v, want 5 ascending ids", r.Worst[0])
	}
	// Inspect changed nothing.
	if n := count(t, pool, "SELECT count(*) FROM payments"); n != st.Rows {
		t.Fatalf("Inspect changed payments: %d rows", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM pg_class WHERE relname = $1", dedupe.Table); n != 0 {
		t.Fatal("Inspect created the quarantine table")
	}
}
