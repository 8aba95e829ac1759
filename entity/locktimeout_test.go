package entity_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestWithZeroLockTimeoutOverridesTheServers: a zero LockTimeout means no
// limit but ctx for With too, with and without group commit, whatever
// lock_timeout the database sets (here 50 ms, as a DBA might).
func TestWithZeroLockTimeoutOverridesTheServers(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	const serverLockTimeout = 50 * time.Millisecond
	db := pgx.Identifier{pool.Config().ConnConfig.Database}.Sanitize()
	if _, err := pool.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s SET lock_timeout = '%dms'", db, serverLockTimeout.Milliseconds())); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // new sessions get the database's setting
	for _, tc := range []struct {
		name string
		opts []entity.Option
	}{{"Default", nil}, {"GroupCommit", []entity.Option{entity.WithGroupCommit(8)}}} {
		t.Run(tc.name, func(t *testing.T) {
			repo := entity.New(pool, itemTable{}, tc.opts...)
			key := itemKey{OwnerID: 1, Name: "li_zero_lock_timeout_" + tc.name}
			holder, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Rollback(ctx)
			if _, err := holder.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", key.LockKey().ID()); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			var withErr error
			go func() {
				defer close(done)
				withErr = repo.With(ctx, key, itemNoop)
			}()
			if err := pgtest.AwaitLockWaitedFor(ctx, pool, 10*serverLockTimeout, done); err != nil {
				<-done
				t.Fatalf("%v; With returned %v", err, withErr)
			}
			holder.Rollback(ctx)
			<-done
			if withErr != nil {
				t.Fatalf("With after the key was released: %v", withErr)
			}
		})
	}
}
