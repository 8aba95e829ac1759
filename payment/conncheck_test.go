package payment_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// TestWithConnCheck: With sets client_connection_check_interval where the
// server accepts it and leaves it alone, and works, where it is refused.
func TestWithConnCheck(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		refuse bool
		want   string
	}{
		{"Accepted", false, "1s"},
		{"Refused", true, "0"},
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
			t.Run(tt.name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				ctx := pgtest.Context(t, time.Minute)
				repo, _ := newRepo(t, func(cfg *pgxpool.Config) {
					cfg.ConnConfig.DefaultQueryExecMode = mode
					if tt.refuse {
						pgtest.RefuseConnCheck(t, cfg.ConnString())
					}
				})
				for range 3 { // the first call asks the server, the others know
					var interval string
					err := repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "li_1"}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
						return tx.QueryRow(ctx, "SHOW client_connection_check_interval").Scan(&interval)
					})
					if err != nil || interval != tt.want {
						t.Fatalf("With = %v, client_connection_check_interval %q; want nil, %s", err, interval, tt.want)
					}
				}
			})
		}
	}
}
