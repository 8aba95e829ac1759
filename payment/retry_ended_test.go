package payment_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// TestRetryAfterFnCommitted: fn commits its work itself (COMMIT in SQL),
// then a statement of fn's fails with an error Retry retries when nothing
// committed: a connection exception from the server (class 08, as a Citus
// coordinator reports a worker out of reach), a serialization failure, or
// the connection lost. With fails with ErrTxEnded and makes no second
// attempt: the first one's work is committed, and a second would apply it
// again.
func TestRetryAfterFnCommitted(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, sql string }{
		{"ConnectionException", "DO $$ BEGIN RAISE EXCEPTION 'worker out of reach' USING ERRCODE = '08006'; END $$"},
		{"SerializationFailure", "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"},
		{"ConnectionLost", "SELECT pg_terminate_backend(pg_backend_pid())"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := pgtest.Context(t, time.Minute)
			pool := paytest.Pool(t, nil)
			repo := payment.NewRepository(pool, entity.WithLockOptions(lock.Options{
				Retry: lock.Retry{Attempts: 3, Backoff: time.Millisecond}}))
			key := payment.Key{ServiceID: 1, LineItemID: "li_1"}
			calls := 0
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				calls++
				if _, err := tx.Exec(ctx, "UPDATE payments SET amount_cents = amount_cents + 1 WHERE id = $1", p.ID); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "COMMIT"); err != nil {
					return err
				}
				if calls > 1 {
					return nil
				}
				_, err := tx.Exec(ctx, tt.sql)
				if err == nil {
					err = errors.New("the failing statement succeeded")
				}
				return err
			})
			if !errors.Is(err, lock.ErrTxEnded) {
				t.Errorf("With = %v; want ErrTxEnded", err)
			}
			p, gerr := repo.Get(ctx, key)
			if gerr != nil {
				t.Fatal(gerr)
			}
			if calls != 1 || p.AmountCents != 1 {
				t.Fatalf("fn called %d times, amount %d: the attempt whose fn committed was retried; want 1 call, amount 1", calls, p.AmountCents)
			}
		})
	}
}
