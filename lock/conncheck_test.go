package lock_test

import (
	"context"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// TestConnCheckRefused: where the server refuses
// client_connection_check_interval, Run and RunDB leave it unset and work;
// they still cancel a wait.
func TestConnCheckRefused(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	url := pgtest.DB(t)
	pgtest.RefuseConnCheck(t, url)
	runs, _ := runners(t, url)
	key := lock.NewKey("test", "conncheck")
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			for range 3 { // the first probes, the others know
				var interval string
				err := r.run(ctx, lock.Options{}, key, func(ctx context.Context, q do) error {
					return q(ctx, "SHOW client_connection_check_interval", &interval)
				})
				if err != nil || interval != "0" {
					t.Fatalf("%s = %v, client_connection_check_interval %q; want nil, 0", r.name, err, interval)
				}
			}
		})
	}
}

// TestConnCheckAccepted: where the server accepts it, the transaction has
// client_connection_check_interval set, for Run and RunDB alike.
func TestConnCheckAccepted(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 30*time.Second)
	runs, _ := runners(t, pgtest.DB(t))
	for _, r := range runs {
		var interval string
		err := r.run(ctx, lock.Options{}, lock.NewKey("test", "conncheck"), func(ctx context.Context, q do) error {
			return q(ctx, "SHOW client_connection_check_interval", &interval)
		})
		if err != nil || interval != "1s" {
			t.Fatalf("%s = %v, client_connection_check_interval %q; want nil, 1s", r.name, err, interval)
		}
	}
}
