package payment_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/schema"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// liveTable returns a migrated database with service 1 and a few payments,
// from which the unique index has been dropped: a live table on which
// Migrate has to build the index concurrently.
func liveTable(t *testing.T) (*payment.Repository, *pgxpool.Pool) {
	t.Helper()
	repo, pool := newRepo(t, func(c *pgxpool.Config) { c.MaxConns = 8 })
	_, err := pool.Exec(pgtest.Context(t, time.Minute), `DROP INDEX `+payment.UniqueIndex+`;
		INSERT INTO payments (service_id, line_item_id) SELECT 1, 'li_' || g FROM generate_series(1, 100) g`)
	if err != nil {
		t.Fatal(err)
	}
	return repo, pool
}

// assertValidIndex fails t unless payment.UniqueIndex exists and is valid.
func assertValidIndex(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if oid, valid := paytest.UniqueIndex(t, pool); oid == 0 || !valid {
		t.Fatalf("index oid %d, valid %v; want a valid index", oid, valid)
	}
}

// startBuild runs sql (a CREATE INDEX CONCURRENTLY) on a connection of its
// own and waits until the build has reached its last phase, waiting for
// older snapshots: its index exists and is INVALID. It returns the backend's
// pid and a channel that gets the statement's result.
func startBuild(t *testing.T, ctx context.Context, pool *pgxpool.Pool, sql string) (pid uint32, done <-chan error) {
	t.Helper()
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid = c.Conn().PgConn().PID()
	errc := make(chan error, 1)
	go func() {
		defer c.Release()
		_, err := c.Exec(ctx, sql)
		errc <- err
	}()
	waitFor(t, func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_progress_create_index
			WHERE pid = $1 AND phase = 'waiting for old snapshots'`, pid).Scan(&n)
		return err == nil && n == 1
	})
	return pid, errc
}

// relationLockWaits counts the backends of this database waiting for a
// table or index lock.
func relationLockWaits(t *testing.T, pool *pgxpool.Pool) (n int) {
	t.Helper()
	err := pool.QueryRow(context.Background(),
		"SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation' AND "+thisDB).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMigrateDuringConcurrentBuild: while another session's CREATE UNIQUE
// INDEX CONCURRENTLY waits for an old snapshot (as `paylock dedupe` does on a
// busy table), Migrate waits for it without taking a lock that writers queue
// behind: With on other keys keeps completing, no backend waits for a table
// lock, the build is neither dropped nor killed, and once the snapshot ends
// Migrate returns nil with that same index valid.
func TestMigrateDuringConcurrentBuild(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	repo, pool := liveTable(t)
	release := paytest.HoldSnapshot(t, ctx, pool)
	_, built := startBuild(t, ctx, pool,
		"CREATE UNIQUE INDEX CONCURRENTLY "+payment.UniqueIndex+" ON payments (service_id, line_item_id)")
	oid, valid := paytest.UniqueIndex(t, pool)
	if oid == 0 || valid {
		t.Fatalf("during the build: index oid %d, valid %v; want an INVALID index", oid, valid)
	}

	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	for i := range 10 {
		wctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang: a With the build blocked
		err := repo.With(wctx, payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("during_%d", i)},
			func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				p.Status = "created during the build"
				return nil
			})
		cancel()
		if err != nil {
			t.Fatalf("With #%d while Migrate and a concurrent build run: %v", i, err)
		}
		if n := relationLockWaits(t, pool); n > 0 {
			t.Fatalf("%d backends wait for a table or index lock", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-migrated:
		t.Fatalf("Migrate returned %v while the build it must wait for still runs", err)
	default:
	}

	release()
	if err := <-built; err != nil {
		t.Fatalf("the concurrent build failed: %v", err)
	}
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got, valid := paytest.UniqueIndex(t, pool); got != oid || !valid {
		t.Fatalf("after Migrate: index oid %d, valid %v; want the build's index %d, valid", got, valid, oid)
	}
	assertHealthy(t, pool)
}

// TestMigrateBuildInProgressError: when ctx ends while Migrate waits for
// another session's build, the error matches ErrIndexBuildInProgress and
// ctx.Err(), and the build carries on to a valid index.
func TestMigrateBuildInProgressError(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	_, pool := liveTable(t)
	release := paytest.HoldSnapshot(t, ctx, pool)
	_, built := startBuild(t, ctx, pool,
		"CREATE UNIQUE INDEX CONCURRENTLY "+payment.UniqueIndex+" ON payments (service_id, line_item_id)")
	oid, _ := paytest.UniqueIndex(t, pool)

	// The build can't finish while the snapshot is held: once Migrate has
	// looked at the index and found the build, it waits for it, and ctx
	// ends that wait, in a pause or in its next look. Its session (the one
	// holding MigrateKey) seen idle after a second look is past the first
	// one for sure (after the first, Migrate may still be reading its
	// answer: a ctx that ends then, before it knows of the build, is a
	// plain ctx error).
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(mctx, pool) }()
	looks := map[time.Time]bool{}
	for len(looks) < 2 {
		var changed []time.Time
		rows, err := pool.Query(ctx, `SELECT state_change FROM pg_stat_activity WHERE datname = current_database()
			AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted) -- Migrate's session
			AND state = 'idle' AND query LIKE '%pg_stat_progress_create_index%'`)
		if err == nil {
			changed, err = pgx.CollectRows(rows, pgx.RowTo[time.Time])
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range changed {
			looks[c] = true
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-migrated; !errors.Is(err, payment.ErrIndexBuildInProgress) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Migrate = %v; want ErrIndexBuildInProgress and context.Canceled", err)
	}
	release()
	if err := <-built; err != nil {
		t.Fatalf("the concurrent build failed: %v", err)
	}
	if got, valid := paytest.UniqueIndex(t, pool); got != oid || !valid {
		t.Fatalf("index oid %d, valid %v; want the build's index %d, valid", got, valid, oid)
	}
	assertHealthy(t, pool)
}

// TestMigrateRepairsInvalidIndex: an INVALID index left by a build that
// failed or was cancelled, with no build running any more, is dropped and
// built again, valid.
func TestMigrateRepairsInvalidIndex(t *testing.T) {
	t.Parallel()

	t.Run("FailedBuild", func(t *testing.T) {
		t.Parallel()
		ctx := pgtest.Context(t, time.Minute)
		_, pool := liveTable(t)
		_, err := pool.Exec(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES (1, 'li_1')")
		if err != nil {
			t.Fatal(err)
		}
		_, err = pool.Exec(ctx, "CREATE UNIQUE INDEX CONCURRENTLY "+payment.UniqueIndex+" ON payments (service_id, line_item_id)")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("build on duplicates: %v; want 23505", err)
		}
		oid, valid := paytest.UniqueIndex(t, pool)
		if oid == 0 || valid {
			t.Fatalf("after the failed build: index oid %d, valid %v; want an INVALID index", oid, valid)
		}

		// Duplicates still there: nothing is written, the invalid index stays.
		if err := payment.Migrate(ctx, pool); !errors.Is(err, payment.ErrDuplicates) {
			t.Fatalf("Migrate with duplicates = %v; want ErrDuplicates", err)
		}
		if got, valid := paytest.UniqueIndex(t, pool); got != oid || valid {
			t.Fatalf("after refusing: index oid %d, valid %v; want %d, INVALID, untouched", got, valid, oid)
		}

		if _, err := pool.Exec(ctx, "DELETE FROM payments WHERE id = (SELECT max(id) FROM payments)"); err != nil {
			t.Fatal(err)
		}
		if err := payment.Migrate(ctx, pool); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		if got, valid := paytest.UniqueIndex(t, pool); got == oid || !valid {
			t.Fatalf("after Migrate: index oid %d, valid %v; want a new valid index (the invalid one was %d)", got, valid, oid)
		}
		assertHealthy(t, pool)
	})

	// A Migrate interrupted during its build, which an old snapshot keeps
	// waiting, in one of three ways:
	//   - CancelledBuild: the build is cancelled on the server
	//     (pg_cancel_backend, statement_timeout, a deadlock): Migrate fails
	//     with the server's error and drops the INVALID index its build
	//     left, its session still being there;
	//   - TerminatedBuild: its session is killed (pg_terminate_backend, a
	//     lost connection), which leaves an INVALID index;
	//   - CancelledMigrate: its ctx ends; it returns at once, and pgx sends
	//     the server a cancel request as it closes the connection, which
	//     leaves an INVALID index, or none yet.
	// Either way the next Migrate (waiting for the migration lock if that
	// session hasn't ended yet) ends with a valid index, a new one where an
	// INVALID one was left.
	for _, tt := range []struct {
		name      string
		interrupt func(t *testing.T, ctx context.Context, pool *pgxpool.Pool, pid uint32, cancel context.CancelFunc)
		errOK     func(err error) bool
		want      string // what errOK wants, for the failure message
		left      string // the index the interrupted build leaves: "dropped", "invalid", or "" (either)
	}{
		{
			name: "CancelledBuild",
			interrupt: func(t *testing.T, ctx context.Context, pool *pgxpool.Pool, pid uint32, _ context.CancelFunc) {
				if _, err := pool.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
					t.Fatal(err)
				}
			},
			errOK: func(err error) bool {
				var pgErr *pgconn.PgError
				return errors.As(err, &pgErr) && pgErr.Code == "57014"
			},
			want: "57014 query_canceled", left: "dropped",
		},
		{
			name: "TerminatedBuild",
			interrupt: func(t *testing.T, ctx context.Context, pool *pgxpool.Pool, pid uint32, _ context.CancelFunc) {
				if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
					t.Fatal(err)
				}
			},
			errOK: func(err error) bool { return err != nil },
			want:  "an error", left: "invalid",
		},
		{
			name: "CancelledMigrate",
			interrupt: func(_ *testing.T, _ context.Context, _ *pgxpool.Pool, _ uint32, cancel context.CancelFunc) {
				cancel()
			},
			errOK: func(err error) bool { return errors.Is(err, context.Canceled) },
			want:  "context.Canceled", left: "",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := pgtest.Context(t, time.Minute)
			_, pool := liveTable(t)
			release := paytest.HoldSnapshot(t, ctx, pool)
			mctx, cancel := context.WithCancel(ctx)
			defer cancel()
			migrated := make(chan error, 1)
			go func() { migrated <- payment.Migrate(mctx, pool) }()
			tt.interrupt(t, ctx, pool, waitForBuild(t, ctx, pool), cancel)
			if err := <-migrated; !tt.errOK(err) {
				t.Fatalf("interrupted Migrate = %v; want %s", err, tt.want)
			}
			release()
			oid, valid := paytest.UniqueIndex(t, pool)
			switch {
			case tt.left == "dropped" && oid != 0:
				t.Fatalf("after the interrupted build: index oid %d, valid %v; want the INVALID index dropped", oid, valid)
			case tt.left == "invalid" && (oid == 0 || valid):
				t.Fatalf("after the interrupted build: index oid %d, valid %v; want an INVALID index", oid, valid)
			}
			if err := payment.Migrate(ctx, pool); err != nil {
				t.Fatalf("Migrate: %v", err)
			}
			if got, valid := paytest.UniqueIndex(t, pool); got == 0 || !valid || (tt.left == "invalid" && got == oid) {
				t.Fatalf("after Migrate: index oid %d, valid %v; want a valid index, a new one if the invalid one (%d) was left", got, valid, oid)
			}
			assertHealthy(t, pool)
		})
	}
}

// waitForBuild waits until a CREATE INDEX CONCURRENTLY in this database
// waits for older snapshots and returns its backend's pid.
func waitForBuild(t *testing.T, ctx context.Context, pool *pgxpool.Pool) (pid uint32) {
	t.Helper()
	waitFor(t, func() bool {
		err := pool.QueryRow(ctx, `SELECT pid FROM pg_stat_progress_create_index
			WHERE phase = 'waiting for old snapshots' AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&pid)
		return err == nil
	})
	return pid
}

// TestMigrateConcurrentCallsOnLiveTable: several Migrate calls at once on a
// live table without the index all succeed, one of them builds it while With
// keeps working, and it ends valid.
func TestMigrateConcurrentCallsOnLiveTable(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	repo, pool := liveTable(t)
	errc := make(chan error, 4)
	for range 4 {
		go func() { errc <- payment.Migrate(ctx, pool) }()
	}
	for i := range 4 {
		key := payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("meanwhile_%d", i)}
		if err := repo.With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error { return nil }); err != nil {
			t.Fatalf("With during the Migrate calls: %v", err)
		}
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	assertValidIndex(t, pool)
	assertHealthy(t, pool)
}

// TestMigrateBuildOutlastsLockTimeout: a CREATE INDEX CONCURRENTLY waits for
// every older transaction, and lock_timeout would cut that wait short. The
// build blocks no writer, so Migrate lifts the session's lock_timeout for it
// (here 100ms, from the pool's config) and the build waits as long as it
// must; the timeout is back in force on the connection afterwards.
func TestMigrateBuildOutlastsLockTimeout(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["lock_timeout"] = "100ms"
	})
	_, err := pool.Exec(ctx, "DROP INDEX "+payment.UniqueIndex)
	if err != nil {
		t.Fatal(err)
	}
	release := paytest.HoldSnapshot(t, ctx, pool)
	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	waitForBuild(t, ctx, pool)
	time.Sleep(300 * time.Millisecond) // past lock_timeout
	release()
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	assertValidIndex(t, pool)
	var lt string
	if err := pool.QueryRow(ctx, "SHOW lock_timeout").Scan(&lt); err != nil || lt != "100ms" {
		t.Fatalf("lock_timeout after Migrate = %q, %v; want 100ms", lt, err)
	}
}

// TestMigrateBuildsConcurrentlyOnLiveTable: on a live table Migrate builds
// the index with CREATE INDEX CONCURRENTLY. While that build waits for an old
// snapshot, With keeps completing and no backend waits for a table lock.
func TestMigrateBuildsConcurrentlyOnLiveTable(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	repo, pool := liveTable(t)
	release := paytest.HoldSnapshot(t, ctx, pool)
	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	waitForBuild(t, ctx, pool)
	for i := range 5 {
		wctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang: a With the build blocked
		err := repo.With(wctx, payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("during_%d", i)},
			func(context.Context, pgx.Tx, *payment.Payment) error { return nil })
		cancel()
		if err != nil {
			t.Fatalf("With #%d during Migrate's build: %v", i, err)
		}
		if n := relationLockWaits(t, pool); n > 0 {
			t.Fatalf("%d backends wait for a table or index lock", n)
		}
	}
	release()
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	assertValidIndex(t, pool)
	assertHealthy(t, pool)
}

// TestMigrateSchemaLockTimeout: the schema transaction waits at most
// MigrateLockTimeout for a table lock, then fails with ErrLockTimeout and
// creates nothing. Here a session holds services, which the new payments
// table references.
func TestMigrateSchemaLockTimeout(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := pgtest.Pool(t, nil)
	if _, err := pool.Exec(ctx, "CREATE TABLE services (id bigint PRIMARY KEY, name text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "LOCK TABLE services IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = payment.Migrate(ctx, pool)
	if !errors.Is(err, lock.ErrLockTimeout) {
		t.Fatalf("Migrate = %v; want ErrLockTimeout", err)
	}
	if waited := time.Since(start); waited < payment.MigrateLockTimeout {
		t.Errorf("Migrate gave up after %v, before MigrateLockTimeout", waited)
	}
	tx.Rollback(ctx)
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('payments') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("payments exists = %v (%v) after the failed Migrate; want nothing created", exists, err)
	}
	assertHealthy(t, pool)
}

// TestMigrateDuplicateDuringBuild: a writer that doesn't take the advisory
// lock commits a duplicate while Migrate's build waits for it to finish. The
// build fails; Migrate drops the INVALID index it left and returns the
// *DuplicatesError.
func TestMigrateDuplicateDuringBuild(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	_, pool := liveTable(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES (1, 'li_1')"); err != nil {
		t.Fatal(err)
	}
	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	waitFor(t, func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_progress_create_index
			WHERE phase = 'waiting for writers before build' AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		return err == nil && n == 1
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err = <-migrated
	var dup *payment.DuplicatesError
	if !errors.As(err, &dup) || dup.Groups != 1 || dup.Worst[0] != (payment.Key{ServiceID: 1, LineItemID: "li_1"}) {
		t.Fatalf("Migrate = %v; want a DuplicatesError naming (1, li_1)", err)
	}
	if oid, _ := paytest.UniqueIndex(t, pool); oid != 0 {
		t.Fatalf("the failed build's INVALID index %d is still there", oid)
	}
	assertHealthy(t, pool)
}

// TestMigrateWaitsForMigrateKey: Migrate waits while another session holds
// MigrateKey, ctx bounding the wait, and leaves no lock or connection behind.
func TestMigrateWaitsForMigrateKey(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := pgtest.Pool(t, nil)
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", schema.MigrateKey.ID()); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = payment.Migrate(short, pool)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate while another session holds MigrateKey = %v; want context.DeadlineExceeded", err)
	}
	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	time.Sleep(100 * time.Millisecond)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", schema.MigrateKey.ID()); err != nil {
		t.Fatal(err)
	}
	holder.Release()
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate after the holder let go: %v", err)
	}
	assertValidIndex(t, pool)
	assertHealthy(t, pool)
}

// TestMigrateStatementTimeout: a statement_timeout set on the role cuts
// Migrate's build short. Migrate fails with the server's 57014 and drops the
// INVALID index its own build left, which writers would otherwise go on
// maintaining (and which rejects some of their inserts) until the next
// Migrate; that Migrate, with the timeout lifted, builds the index.
func TestMigrateStatementTimeout(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	_, pool := liveTable(t)
	const roleTimeout = "ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L"
	setTimeout := func(v string) {
		t.Helper()
		_, err := pool.Exec(ctx, fmt.Sprintf("DO $$BEGIN EXECUTE format('%s', current_user, current_database(), '%s'); END$$",
			roleTimeout, v))
		if err != nil {
			t.Fatal(err)
		}
		pool.Reset() // new sessions get the role's setting
	}
	setTimeout("200ms")
	release := paytest.HoldSnapshot(t, ctx, pool)
	migrated := make(chan error, 1)
	go func() { migrated <- payment.Migrate(ctx, pool) }()
	var pgErr *pgconn.PgError
	err := <-migrated
	release()
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("Migrate under a 200ms statement_timeout while an old snapshot is held = %v; want 57014", err)
	}
	if oid, valid := paytest.UniqueIndex(t, pool); oid != 0 {
		t.Fatalf("after the timed-out build: index oid %d, valid %v; want no index left behind", oid, valid)
	}
	setTimeout("0")
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate without the timeout: %v", err)
	}
	assertValidIndex(t, pool)
	assertHealthy(t, pool)
}
