package entity_test

import (
	"context"
	"fmt"
	"log"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/examples/invoices"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// A repository for your own table: invoices keyed by (account_id,
// external_ref), described by the Table in examples/invoices.
func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.ExampleURL()) // your DATABASE_URL
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, invoices.Schema); err != nil {
		log.Fatal(err)
	}

	repo := entity.New(pool, invoices.Table{})
	key := invoices.Key{AccountID: "acct-9", ExternalRef: "INV-2026-001"}
	var wg sync.WaitGroup
	var mu sync.Mutex
	creators := 0
	for _, line := range []int64{1000, 250, 4000} {
		wg.Go(func() {
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, inv *invoices.Invoice) error {
				if inv.Created {
					mu.Lock()
					creators++
					mu.Unlock()
				}
				inv.TotalCents += line
				return nil
			})
			if err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()

	var rows, total int64
	pool.QueryRow(ctx, "SELECT count(*), sum(total_cents) FROM invoices").Scan(&rows, &total)
	fmt.Printf("rows: %d, creators: %d, total: %d\n", rows, creators, total)
	// Output: rows: 1, creators: 1, total: 5250
}
