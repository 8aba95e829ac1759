package payment_test

import (
	"context"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// Two pollers receive the same payment at the same moment. One creates it;
// the other waits its turn and updates that same row.
func ExampleRepository_With() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.ExampleURL()) // your DATABASE_URL
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := payment.Migrate(ctx, pool); err != nil {
		log.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO services (id, name) VALUES (7, 'acme')"); err != nil {
		log.Fatal(err)
	}

	repo := payment.NewRepository(pool)
	key := payment.Key{ServiceID: 7, LineItemID: "li_123"}
	events := []struct {
		amount int64
		status string
	}{{1250, "pending"}, {1250, "paid"}}

	done := make(chan bool, len(events))
	for _, event := range events {
		go func() {
			var created bool
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				created = p.IsNew()
				p.AmountCents = event.amount
				if p.Status != "paid" { // the old update code, unchanged in spirit
					p.Status = event.status
				}
				return nil
			})
			if err != nil {
				log.Fatal(err)
			}
			done <- created
		}()
	}
	creators := 0
	for range events {
		if <-done {
			creators++
		}
	}

	p, err := repo.Get(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	var rows int
	pool.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&rows)
	fmt.Printf("rows: %d, created by %d caller, amount %d, status %s\n", rows, creators, p.AmountCents, p.Status)
	// Output: rows: 1, created by 1 caller, amount 1250, status paid
}
