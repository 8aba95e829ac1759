package payment_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/paytest"
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

// maxLoneGroupAllocs bounds what entity.WithGroupCommit adds to the
// allocations of a lone caller's With: its event, its place in the key's
// group, the group's state and the watch of IdleTimeout. Channels, the
// savepoint's name and the group's lists are made only once a second
// caller joins (17 more allocations before they were).
const maxLoneGroupAllocs = 12

// TestGroupCommitLoneCallerAllocations: a lone caller with group commit
// allocates at most maxLoneGroupAllocs more than without it.
func TestGroupCommitLoneCallerAllocations(t *testing.T) { // not parallel: AllocsPerRun counts the whole process
	count := func(opts ...entity.Option) float64 {
		pool := paytest.Pool(t, func(cfg *pgxpool.Config) {
			cfg.MaxConns, cfg.MinConns = 1, 1
			cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		})
		repo := payment.NewRepository(pool, opts...)
		ctx := pgtest.Context(t, time.Minute)
		key := payment.Key{ServiceID: 1, LineItemID: "li_alloc_group"}
		for range 3 { // warm-up: prepares
			if err := repo.With(ctx, key, bump); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		allocs := testing.AllocsPerRun(50, func() {
			if e := repo.With(ctx, key, bump); e != nil {
				err = e
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		return allocs
	}
	plain, group := count(), count(entity.WithGroupCommit(32))
	t.Logf("%.0f allocations per With, %.0f with group commit", plain, group)
	if group-plain > maxLoneGroupAllocs {
		t.Errorf("a lone caller with group commit: %.0f allocations, %.0f more than without, want at most %d more", group, group-plain, maxLoneGroupAllocs)
	}
}
