package payment_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// maxWithAllocs bounds the heap allocations of one With call on a warm
// connection, fn in memory: pgx's own (its messages, command tags, context
// watch) are about 30 of them, the two copies of the row about 10. Before
// With streamed its results and kept its scan plans and query builder per
// connection it made about 160.
const maxWithAllocs = 100

// TestWithAllocations counts the allocations of With on an existing row and
// on new rows, once the connection has prepared With's statements. The
// count is of the whole process, so the pool is kept from doing anything
// else meanwhile (one connection, no health check ping).
func TestWithAllocations(t *testing.T) { // not parallel: AllocsPerRun counts the whole process
	repo, _ := newRepo(t, func(cfg *pgxpool.Config) {
		cfg.MaxConns, cfg.MinConns = 1, 1
		cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	ctx := pgtest.Context(t, time.Minute)
	bump := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	var err error
	for range 3 { // warm-up: prepares
		if err = repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "li_alloc"}, bump); err != nil {
			t.Fatal(err)
		}
	}
	i := 0
	for _, tt := range []struct {
		name string
		key  func() payment.Key
	}{
		{"Existing", func() payment.Key { return payment.Key{ServiceID: 1, LineItemID: "li_alloc"} }},
		{"New", func() payment.Key { i++; return payment.Key{ServiceID: 1, LineItemID: "li_alloc_" + strconv.Itoa(i)} }},
	} {
		allocs := testing.AllocsPerRun(50, func() {
			if e := repo.With(ctx, tt.key(), bump); e != nil {
				err = e
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s row: %.0f allocations per With", tt.name, allocs)
		if allocs > maxWithAllocs {
			t.Errorf("%s row: %.0f allocations per With, want at most %d", tt.name, allocs, maxWithAllocs)
		}
	}
}
