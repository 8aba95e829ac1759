package payment_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/tools/pgserver"
	"github.com/paylock/paylock/payment"
)

// BenchmarkGroupCommit: With with and without entity.WithGroupCommit on a
// durable server of its own (fsync on, synchronous_commit on), since what
// group commit saves is the WAL flush of each commit: a hot key with fn in
// memory and with fn writing a ledger row through tx (32 workers), a single
// caller, and cold keys (32 workers). Compare ns/op of strategy=with and
// strategy=group within one run. For 4 processes x 8 workers, run
// `paylock bench --strategies paylock,paylock-group --workloads hot --processes 4`.
func BenchmarkGroupCommit(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	srv, err := pgserver.Start(ctx, pgserver.Options{})
	if err != nil {
		b.Skip("no PostgreSQL server to start:", err)
	}
	b.Cleanup(func() { srv.Stop() })
	pool, err := pgxpool.New(ctx, srv.ConnString("postgres")+"&pool_max_conns=40&pool_min_conns=40")
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	if err := payment.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (1, 'bench'); CREATE TABLE ledger (payment_id bigint, amount bigint)"); err != nil {
		b.Fatal(err)
	}
	ledger := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		p.AmountCents++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1, $2)", p.ID, p.AmountCents)
		return err
	}
	for _, c := range []struct {
		workload string
		workers  int
		fn       func(context.Context, pgx.Tx, *payment.Payment) error
	}{
		{"hot", 32, bump},
		{"hot-ledger", 32, ledger},
		{"single", 1, bump},
		{"cold", 32, bump},
	} {
		for _, strategy := range []string{"with", "group"} {
			b.Run(fmt.Sprintf("workload=%s/workers=%d/strategy=%s", c.workload, c.workers, strategy), func(b *testing.B) {
				if _, err := pool.Exec(ctx, "TRUNCATE payments, ledger; CHECKPOINT"); err != nil {
					b.Fatal(err)
				}
				var opts []entity.Option
				if strategy == "group" {
					opts = append(opts, entity.WithGroupCommit(32))
				}
				repo := payment.NewRepository(pool, opts...)
				loop(b, c.workers, func(ctx context.Context, i int) error {
					key := payment.Key{ServiceID: 1, LineItemID: "hot"}
					if c.workload == "cold" {
						key.LineItemID = "c" + strconv.Itoa(i)
					}
					return repo.With(ctx, key, c.fn)
				})
			})
		}
	}
	// A lone caller, with and without the option, call by call in turn on
	// two keys of their own, so that the machine's noise falls on both
	// alike: the ratio of their medians is what the option costs alone.
	b.Run("workload=single-interleaved/workers=1", func(b *testing.B) {
		if _, err := pool.Exec(ctx, "TRUNCATE payments, ledger; CHECKPOINT"); err != nil {
			b.Fatal(err)
		}
		repos := [2]*payment.Repository{payment.NewRepository(pool), payment.NewRepository(pool, entity.WithGroupCommit(32))}
		keys := [2]payment.Key{{ServiceID: 1, LineItemID: "lone-with"}, {ServiceID: 1, LineItemID: "lone-group"}}
		var lat [2][]time.Duration
		i := 0
		for b.Loop() {
			at := time.Now()
			if err := repos[i%2].With(ctx, keys[i%2], bump); err != nil {
				b.Fatal(err)
			}
			lat[i%2] = append(lat[i%2], time.Since(at))
			i++
		}
		if len(lat[1]) == 0 {
			return
		}
		median := func(d []time.Duration) float64 {
			slices.Sort(d)
			return float64(d[len(d)/2])
		}
		b.ReportMetric(median(lat[0])/1e3, "with-median-us")
		b.ReportMetric(median(lat[1])/1e3, "group-median-us")
		b.ReportMetric(median(lat[1])/median(lat[0]), "group/with")
	})
}
