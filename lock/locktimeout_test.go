package lock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// serverLockTimeout is the lock_timeout a DBA set for the database in
// TestZeroLockTimeoutOverridesTheServers: paylock's zero must not inherit it.
const serverLockTimeout = 50 * time.Millisecond

// TestZeroLockTimeoutOverridesTheServers: Options.LockTimeout zero means
// "no limit but ctx", whatever lock_timeout the database (or the role) sets:
// Run and RunDB wait for a held key far past the database's 50 ms, and
// take it once it is released.
func TestZeroLockTimeoutOverridesTheServers(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	url := pgtest.DB(t)
	setDatabaseLockTimeout(t, ctx, url, serverLockTimeout)
	runs, pool := runners(t, url)
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			key := lock.NewKey("zero_lock_timeout", r.name)
			holder, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Rollback(ctx)
			if _, err := holder.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", key.ID()); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			var runErr error
			go func() {
				defer close(done)
				runErr = r.run(ctx, lock.Options{}, key, func(context.Context, do) error { return nil })
			}()
			if err := pgtest.AwaitLockWaitedFor(ctx, pool, 10*serverLockTimeout, done); err != nil {
				<-done
				t.Fatalf("%v; %s with zero Options returned %v", err, r.name, runErr)
			}
			holder.Rollback(ctx)
			<-done
			if runErr != nil {
				t.Fatalf("%s with zero Options after the key was released: %v", r.name, runErr)
			}
		})
	}
}

// setDatabaseLockTimeout sets the default lock_timeout of the database at
// url, as a DBA would; sessions opened afterwards get it.
func setDatabaseLockTimeout(t *testing.T, ctx context.Context, url string, d time.Duration) {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	db := pgx.Identifier{conn.Config().Database}.Sanitize()
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s SET lock_timeout = '%dms'", db, d.Milliseconds())); err != nil {
		t.Fatal(err)
	}
}
