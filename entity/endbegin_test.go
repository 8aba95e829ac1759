package entity_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// TestWithFnEndsAndBeginsInOneMessage: fn ends the transaction and begins
// another in one message or one batch, which leaves the connection in a
// transaction again, one that does not hold the lock. With must not commit
// it (nor Save into it) and report success.
func TestWithFnEndsAndBeginsInOneMessage(t *testing.T) {
	t.Parallel()
	for name, end := range map[string]func(ctx context.Context, tx pgx.Tx) error{
		"Exec": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "COMMIT; BEGIN")
			return err
		},
		"Batch": func(ctx context.Context, tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue("ROLLBACK")
			b.Queue("BEGIN")
			return tx.SendBatch(ctx, b).Close()
		},
	} {
		for mode, configure := range map[string]func(*pgxpool.Config){
			"cache": nil,
			"exec":  func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec },
		} {
			t.Run(name+"/"+mode, func(t *testing.T) {
				pool, ctx := setupPool(t, configure)
				repo := entity.New(pool, counters{})
				key := "li_endbegin"
				if err := repo.With(ctx, key, noop); err != nil {
					t.Fatal(err)
				}
				err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *counter) error {
					if err := end(ctx, tx); err != nil {
						return err
					}
					p.N = 77
					_, err := tx.Exec(ctx, "UPDATE counters SET label = 'by_fn' WHERE id = $1", p.ID)
					return err
				})
				if !errors.Is(err, lock.ErrTxEnded) {
					t.Errorf("With = %v, want ErrTxEnded", err)
				}
				amount, status := row(t, ctx, pool, key)
				if amount == 77 || status == "by_fn" {
					t.Errorf("amount %d, status %q: With committed a transaction fn began without the lock", amount, status)
				}
				if err := repo.With(ctx, key, noop); err != nil {
					t.Fatalf("next With: %v", err)
				}
			})
		}
	}
}
