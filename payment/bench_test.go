package payment_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/entityopt"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/baseline"
	"github.com/paylock/paylock/payment"
)

// The benchmarks run against the test server, which has fsync off: they
// compare the strategies' client and lock costs, not the disk's. For durable
// figures side by side with pgbench, run `paylock bench`.

// bump is the fn of every benchmark: add 1 to the amount.
func bump(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }

// rowlockOp is the baseline (baseline.RowLock): what a Go developer would
// write with pgx and the unique index alone, one statement per round trip.
func rowlockOp(pool *pgxpool.Pool) func(context.Context, payment.Key) error {
	return func(ctx context.Context, key payment.Key) error {
		return baseline.RowLock(ctx, pool, key, func(r *baseline.Row) error { r.AmountCents++; return nil })
	}
}

// loop hands b.Loop's iterations to workers goroutines calling do, and
// reports the p99 latency of a call.
func loop(b *testing.B, workers int, do func(ctx context.Context, i int) error) {
	ctx := pgtest.Context(b, 10*time.Minute)
	work := make(chan int)
	lat := make([][]time.Duration, workers)
	g, gctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			for i := range work {
				at := time.Now()
				if err := do(gctx, i); err != nil {
					return err
				}
				lat[w] = append(lat[w], time.Since(at))
			}
			return nil
		})
	}
	i := 0
	for b.Loop() {
		select {
		case work <- i:
			i++
		case <-gctx.Done():
		}
	}
	close(work)
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(p99(slices.Concat(lat...)))/1e6, "p99-ms")
}

func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[(len(d)*99+99)/100-1]
}

// benchRepo returns a pool on a migrated database with service 1 and a
// Repository on it with opts.
func benchRepo(b *testing.B, conns int32, opts ...entity.Option) (*payment.Repository, *pgxpool.Pool) {
	b.Helper()
	pool := paytest.Pool(b, func(cfg *pgxpool.Config) {
		cfg.MaxConns, cfg.MinConns = conns, conns
		cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	for pool.Stat().TotalConns() < conns { // dialling is not timed
		time.Sleep(5 * time.Millisecond)
	}
	return payment.NewRepository(pool, opts...), pool
}

// BenchmarkWith: With beside the rowlock baseline on one hot key and on new
// keys, at several worker counts, each worker with a connection of its own.
func BenchmarkWith(b *testing.B) {
	for _, workload := range []string{"hot", "cold"} {
		for _, workers := range []int{1, 8, 32} {
			for _, strategy := range []string{"rowlock", "paylock"} {
				b.Run(fmt.Sprintf("workload=%s/workers=%d/strategy=%s", workload, workers, strategy), func(b *testing.B) {
					repo, pool := benchRepo(b, int32(workers))
					do := rowlockOp(pool)
					if strategy == "paylock" {
						do = func(ctx context.Context, key payment.Key) error { return repo.With(ctx, key, bump) }
					}
					loop(b, workers, func(ctx context.Context, i int) error {
						key := payment.Key{ServiceID: 1, LineItemID: "hot"}
						if workload == "cold" {
							key.LineItemID = "c" + strconv.Itoa(i)
						}
						return do(ctx, key)
					})
				})
			}
		}
	}
}

// BenchmarkHotKeyStorm: one caller making With calls on new keys, timed,
// while 64 goroutines call With on one hot key through the same pool of 4
// connections; with the per-key queue, without it, and with no storm at all.
// It reports the cold caller's p99 and the hot key's throughput. The
// pool=separate case gives the storm a pool of its own: what is left of the
// cold caller's slowdown there is the machine (CPU, server), not the pool.
func BenchmarkHotKeyStorm(b *testing.B) {
	for _, c := range []struct {
		name     string
		storm    bool
		separate bool
		opts     []entity.Option
	}{
		{"storm=none", false, false, nil},
		{"storm=64/queue=on", true, false, nil},
		{"storm=64/queue=off", true, false, []entity.Option{entityopt.WithoutKeyQueue.(entity.Option)}},
		{"storm=64/queue=on/pool=separate", true, true, nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			repo, pool := benchRepo(b, 4, c.opts...)
			ctx := pgtest.Context(b, 10*time.Minute)
			coldRepo := repo
			if c.separate {
				cold, err := pgxpool.NewWithConfig(ctx, pool.Config())
				if err != nil {
					b.Fatal(err)
				}
				defer cold.Close()
				coldRepo = payment.NewRepository(cold, c.opts...)
			}
			var hotOps atomic.Int64
			stop := make(chan struct{})
			g, gctx := errgroup.WithContext(ctx)
			if c.storm {
				for range 64 {
					g.Go(func() error {
						for {
							select {
							case <-stop:
								return nil
							default:
							}
							if err := repo.With(gctx, payment.Key{ServiceID: 1, LineItemID: "hot"}, bump); err != nil {
								return err
							}
							hotOps.Add(1)
						}
					})
				}
				time.Sleep(200 * time.Millisecond) // let the storm build
			}
			var lat []time.Duration
			var once sync.Once
			var hot0 int64
			var t0 time.Time
			i := 0
			for b.Loop() {
				once.Do(func() { hot0, t0 = hotOps.Load(), time.Now() })
				at := time.Now()
				if err := coldRepo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "c" + strconv.Itoa(i)}, bump); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(at))
				i++
			}
			hotRate := float64(hotOps.Load()-hot0) / time.Since(t0).Seconds()
			close(stop)
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(p99(lat))/1e6, "cold-p99-ms")
			if c.storm {
				b.ReportMetric(hotRate, "hot-ops/s")
			}
		})
	}
}

// BenchmarkHotKeyQueue: 64 goroutines calling With on one key through a pool
// of 4 connections, with the per-key queue and without it: the queue must not
// cost the hot key its throughput.
func BenchmarkHotKeyQueue(b *testing.B) {
	for _, c := range []struct {
		name string
		opts []entity.Option
	}{
		{"queue=on", nil},
		{"queue=off", []entity.Option{entityopt.WithoutKeyQueue.(entity.Option)}},
	} {
		b.Run("workers=64/conns=4/"+c.name, func(b *testing.B) {
			repo, _ := benchRepo(b, 4, c.opts...)
			at := time.Now()
			loop(b, 64, func(ctx context.Context, _ int) error {
				return repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "hot"}, bump)
			})
			b.ReportMetric(float64(b.N)/time.Since(at).Seconds(), "ops/s")
		})
	}
}
