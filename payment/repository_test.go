package payment_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// newRepo returns a repository on a migrated database with services 1 and 2.
func newRepo(t *testing.T, configure func(*pgxpool.Config)) (*payment.Repository, *pgxpool.Pool) {
	t.Helper()
	pool := paytest.Pool(t, configure)
	if _, err := pool.Exec(pgtest.Context(t, time.Minute), "INSERT INTO services VALUES (2, 'other')"); err != nil {
		t.Fatal(err)
	}
	return payment.NewRepository(pool), pool
}

func countRows(t *testing.T, pool *pgxpool.Pool, table string) (n int) {
	t.Helper()
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// assertHealthy checks that no advisory lock is left in this database and no
// connection stays acquired (a destroyed connection leaves asynchronously, so
// it waits a little).
func assertHealthy(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var locks int
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "+thisDB).
			Scan(&locks); err != nil {
			t.Fatal(err)
		}
		acquired := pool.Stat().AcquiredConns()
		if locks == 0 && acquired == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d advisory locks remain, %d connections remain acquired", locks, acquired)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// thisDB limits a pg_locks query to the current database.
const thisDB = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"

func TestWith(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, nil)
	ctx := pgtest.Context(t, time.Minute)
	key := payment.Key{ServiceID: 1, LineItemID: "li_1"}

	t.Run("CreatesThenFinds", func(t *testing.T) {
		var first payment.Payment
		err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			if !p.IsNew() || p.ID == 0 || p.ServiceID != 1 || p.LineItemID != "li_1" || p.CreatedAt.IsZero() {
				t.Errorf("new payment = %+v", p)
			}
			p.AmountCents, p.Currency, p.Status, p.Data = 1250, "EUR", "paid", json.RawMessage(`{"ext": 1}`)
			first = *p
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		err = repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			if p.IsNew() || p.ID != first.ID || p.AmountCents != 1250 || p.Currency != "EUR" || p.Status != "paid" ||
				string(p.Data) != `{"ext": 1}` {
				t.Errorf("second call got %+v, want the first call's commit", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := repo.Get(ctx, key)
		if err != nil || got.ID != first.ID || got.AmountCents != 1250 {
			t.Fatalf("Get = %+v, %v", got, err)
		}
		if countRows(t, pool, "payments") != 1 {
			t.Fatal("want one row")
		}
		assertHealthy(t, pool)
	})

	t.Run("SecondCallerSeesFirstCallersCommit", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_wait"}
		release := holdInFn(t, ctx, repo, key, func(p *payment.Payment) { p.AmountCents = 42 })
		second := make(chan int64, 1)
		go func() {
			var amount int64 = -1
			repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				amount = p.AmountCents
				return nil
			})
			second <- amount
		}()
		waitWaiting(t, pool, 1)
		if err := release(); err != nil {
			t.Fatal(err)
		}
		if got := <-second; got != 42 {
			t.Fatalf("second caller saw amount %d, want the first caller's 42", got)
		}
	})

	t.Run("UnchangedWritesNothing", func(t *testing.T) {
		before, err := repo.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := repo.With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error { return nil }); err != nil {
			t.Fatal(err)
		}
		after, _ := repo.Get(ctx, key)
		if !after.UpdatedAt.Equal(before.UpdatedAt) {
			t.Fatal("an unchanged payment was updated")
		}
	})

	t.Run("FnWritesCommitWithThePayment", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "CREATE TABLE ledger (payment_id bigint REFERENCES payments, amount bigint)"); err != nil {
			t.Fatal(err)
		}
		key := payment.Key{ServiceID: 2, LineItemID: "li_ledger"}
		ledger := func(fail bool) error {
			return repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1, 100)", p.ID); err != nil {
					return err
				}
				p.AmountCents += 100
				if fail {
					return errors.New("fail")
				}
				return nil
			})
		}
		if err := ledger(false); err != nil {
			t.Fatal(err)
		}
		if err := ledger(true); err == nil {
			t.Fatal("want fn's error")
		}
		p, _ := repo.Get(ctx, key)
		if n := countRows(t, pool, "ledger"); n != 1 || p.AmountCents != 100 {
			t.Fatalf("ledger rows %d, amount %d; want 1 and 100", n, p.AmountCents)
		}
		assertHealthy(t, pool)
	})

	t.Run("ErrorAndPanicWriteNothing", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_fail"}
		boom := errors.New("boom")
		err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.AmountCents = 1
			return boom
		})
		if err != boom {
			t.Fatalf("With = %v, want fn's error unchanged", err)
		}
		recovered := func() (r any) {
			defer func() { r = recover() }()
			repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				p.AmountCents = 2
				panic("fn panicked")
			})
			return nil
		}()
		if recovered != "fn panicked" {
			t.Fatalf("recovered %v, want fn's panic", recovered)
		}
		if _, err := repo.Get(ctx, key); !errors.Is(err, payment.ErrNotFound) {
			t.Fatalf("Get after error and panic = %v, want ErrNotFound: the created row must roll back", err)
		}
		assertHealthy(t, pool)
	})

	t.Run("FnSwallowingAFailedStatement", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_swallow"}
		err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			tx.Exec(ctx, "SELECT 1/0") // error ignored
			return nil
		})
		if !errors.Is(err, entity.ErrTxAborted) {
			t.Fatalf("With = %v, want ErrTxAborted", err)
		}
		if _, err := repo.Get(ctx, key); !errors.Is(err, payment.ErrNotFound) {
			t.Fatalf("Get = %v, want ErrNotFound", err)
		}
		assertHealthy(t, pool)
	})

	t.Run("CtxCancelledWhileWaiting", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_cancel"}
		release := holdInFn(t, ctx, repo, key, func(*payment.Payment) {})
		waitCtx, cancel := context.WithCancel(ctx)
		second := make(chan error, 1)
		go func() {
			second <- repo.With(waitCtx, key, func(context.Context, pgx.Tx, *payment.Payment) error {
				t.Error("fn ran after its ctx was cancelled")
				return nil
			})
		}()
		waitWaiting(t, pool, 1)
		cancel()
		at := time.Now()
		// With returns while the holder still holds the key (release comes
		// after): how soon is a figure, not a verdict (a busy machine).
		err := <-second
		t.Logf("FIGURE With returned %v after the cancel", time.Since(at).Round(time.Millisecond))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("With = %v, want context.Canceled", err)
		}
		if err := release(); err != nil {
			t.Fatal(err)
		}
		waitWaiting(t, pool, 0)
		assertHealthy(t, pool)
	})
}

// holdInFn starts a With on key whose fn stops until release is called, and
// returns once fn runs. release lets fn apply edit and returns With's error.
func holdInFn(t *testing.T, ctx context.Context, repo *payment.Repository, key payment.Key, edit func(*payment.Payment)) (release func() error) {
	t.Helper()
	inFn, proceed := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			close(inFn)
			<-proceed
			edit(p)
			return nil
		})
	}()
	select {
	case <-inFn:
	case err := <-first:
		t.Fatalf("With returned before running fn: %v", err)
	}
	return func() error {
		close(proceed)
		return <-first
	}
}

// waitWaiting waits until n backends wait for an advisory lock.
func waitWaiting(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var w int
		if err := pool.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "+thisDB).Scan(&w); err != nil {
			t.Fatal(err)
		}
		if w == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lock waiters, want %d", w, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWithBadInput(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, nil)
	ctx := pgtest.Context(t, time.Minute)
	ok := payment.Key{ServiceID: 1, LineItemID: "li_ok"}
	noop := func(context.Context, pgx.Tx, *payment.Payment) error { return nil }
	for _, tt := range []struct {
		name string
		key  payment.Key
		fn   func(context.Context, pgx.Tx, *payment.Payment) error
		want error
	}{
		{"EmptyLineItemID", payment.Key{ServiceID: 1}, noop, payment.ErrInvalidKey},
		{"ZeroServiceID", payment.Key{LineItemID: "li"}, noop, payment.ErrInvalidKey},
		{"NegativeServiceID", payment.Key{ServiceID: -3, LineItemID: "li"}, noop, payment.ErrInvalidKey},
		{"UnknownService", payment.Key{ServiceID: 99, LineItemID: "li"}, noop, payment.ErrUnknownService},
		{"InvalidUTF8", payment.Key{ServiceID: 1, LineItemID: "li\xff"}, noop, payment.ErrInvalidKey},
		{"NUL", payment.Key{ServiceID: 1, LineItemID: "li\x00x"}, noop, payment.ErrInvalidKey},
		{"TooLong", payment.Key{ServiceID: 1, LineItemID: strings.Repeat("x", payment.MaxLineItemIDLen+1)}, noop, payment.ErrInvalidKey},
		{"NilFn", ok, nil, nil},
		{"NestedWithSameKey", ok, func(ctx context.Context, _ pgx.Tx, p *payment.Payment) error {
			return repo.With(ctx, ok, noop)
		}, lock.ErrReentrant},
		{"KeyChanged", ok, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.LineItemID = "li_other"
			return nil
		}, payment.ErrKeyChanged},
		{"IDChanged", ok, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.ID++
			return nil
		}, payment.ErrKeyChanged},
		{"DataNotJSON", ok, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.Data = json.RawMessage("{not json")
			return nil
		}, payment.ErrInvalidPayment},
		{"StatusNotUTF8", ok, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.Status = "\xff"
			return nil
		}, payment.ErrInvalidPayment},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := repo.With(ctx, tt.key, tt.fn)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("With = %v, want %v", err, tt.want)
			}
			t.Logf("%v", err)
			if n := countRows(t, pool, "payments"); n != 0 {
				t.Fatalf("%d rows written", n)
			}
			assertHealthy(t, pool)
		})
	}
	t.Run("UnknownServiceIsAForeignKeyViolation", func(t *testing.T) {
		err := repo.With(ctx, payment.Key{ServiceID: 99, LineItemID: "li"}, noop)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23503" {
			t.Fatalf("With = %v, want a *pgconn.PgError 23503 inside", err)
		}
	})
}

// TestWithNaiveWriterDuringRollout: old code that inserts without the lock
// races With. With neither fails nor duplicates: it waits for the other
// insert and takes that row.
func TestWithNaiveWriterDuringRollout(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, nil)
	ctx := pgtest.Context(t, time.Minute)
	for _, commit := range []bool{true, false} {
		key := payment.Key{ServiceID: 1, LineItemID: "li_rollout_" + map[bool]string{true: "commit", false: "rollback"}[commit]}
		old, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var oldID int64
		if err := old.QueryRow(ctx, "INSERT INTO payments (service_id, line_item_id, amount_cents) VALUES ($1, $2, 7) RETURNING id",
			key.ServiceID, key.LineItemID).Scan(&oldID); err != nil {
			t.Fatal(err)
		}
		type seen struct {
			id     int64
			isNew  bool
			amount int64
		}
		got := make(chan seen, 1)
		errc := make(chan error, 1)
		go func() {
			var s seen
			errc <- repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				s = seen{p.ID, p.IsNew(), p.AmountCents}
				p.AmountCents++
				return nil
			})
			got <- s
		}()
		// With's insert now waits on the old code's uncommitted row.
		waitFor(t, func() bool {
			var n int
			pool.QueryRow(ctx, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'transactionid' AND NOT l.granted AND a.datname = current_database()").Scan(&n)
			return n == 1
		})
		if commit {
			err = old.Commit(ctx)
		} else {
			err = old.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("With racing a naive insert (commit=%v): %v", commit, err)
		}
		s := <-got
		switch {
		case commit && (s.id != oldID || s.isNew || s.amount != 7):
			t.Errorf("after the naive insert committed, fn saw %+v; want the naive row %d, not new, amount 7", s, oldID)
		case !commit && (s.id == oldID || !s.isNew || s.amount != 0):
			t.Errorf("after the naive insert rolled back, fn saw %+v; want a new row", s)
		}
		var rows int
		pool.QueryRow(ctx, "SELECT count(*) FROM payments WHERE line_item_id = $1", key.LineItemID).Scan(&rows)
		if rows != 1 {
			t.Errorf("%d rows for %s, want 1", rows, key)
		}
	}
	assertHealthy(t, pool)
}

// TestWithIgnoresServerIsolationDefault: under REPEATABLE READ the snapshot
// would be taken before the lock wait; With forces READ COMMITTED.
func TestWithIgnoresServerIsolationDefault(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["default_transaction_isolation"] = "serializable"
	})
	ctx := pgtest.Context(t, time.Minute)
	done, err := racetest.Hammer(ctx, "iso", 8, 20, raceKeys, withDo(repo))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range audit(t, ctx, pool, "payments", done, true).Problems {
		t.Error(p)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, nil)
	ctx := pgtest.Context(t, time.Minute)
	errc := make(chan error, 4)
	for range 4 {
		go func() { errc <- payment.Migrate(ctx, pool) }()
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}

	t.Run("RefusesDuplicates", func(t *testing.T) {
		_, err := pool.Exec(ctx, `DROP INDEX `+payment.UniqueIndex+`;
			INSERT INTO services VALUES (1, 'api');
			INSERT INTO payments (service_id, line_item_id) VALUES (1, 'a'), (1, 'a'), (1, 'a'), (1, 'b'), (1, 'b'), (1, 'c')`)
		if err != nil {
			t.Fatal(err)
		}
		err = payment.Migrate(ctx, pool)
		var dup *payment.DuplicatesError
		if !errors.Is(err, payment.ErrDuplicates) || !errors.As(err, &dup) || dup.Groups != 2 || dup.Extra != 3 ||
			dup.Worst[0] != (payment.Key{ServiceID: 1, LineItemID: "a"}) || dup.Counts[0] != 3 {
			t.Fatalf("Migrate = %v (%+v), want 2 duplicate groups, 3 extra rows, worst (1, a) x3", err, dup)
		}
		if !strings.Contains(err.Error(), "paylock dedupe") {
			t.Errorf("error %q does not point to paylock dedupe", err)
		}
	})
}

// TestWithAfterAColumnChangesType: With's statements are prepared per
// connection; when a column they return changes type, the call that meets the
// stale statement fails (SQLSTATE 0A000) and drops its connection, and the
// next call prepares afresh and succeeds.
func TestWithAfterAColumnChangesType(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx := pgtest.Context(t, time.Minute)
	key := payment.Key{ServiceID: 1, LineItemID: "li_alter"}
	set := func(status string) error {
		return repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.Status = status
			return nil
		})
	}
	if err := set("pending"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ALTER TABLE payments ALTER COLUMN status TYPE varchar(40)"); err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if err := set("paid"); err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "0A000") {
		t.Fatalf("first call after the change: %v; want nil or 0A000", err)
	}
	if err := set("paid"); err != nil {
		t.Fatalf("second call after the change: %v", err)
	}
	if p, err := repo.Get(ctx, key); err != nil || p.Status != "paid" {
		t.Fatalf("Get = %+v, %v", p, err)
	}
	assertHealthy(t, pool)
}
