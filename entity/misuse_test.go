package entity_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

func oneConn(cfg *pgxpool.Config) { cfg.MaxConns, cfg.MinConns = 1, 0 }

// TestWithLeakedTxIsDeadAfterWith keeps what fn can reach through tx — tx, a
// savepoint and one nested in it, large objects, the connection — and uses
// it once With returned: from inside the next With, which (one pool
// connection) runs on the same connection. Every statement fails with
// pgx.ErrTxClosed and changes nothing.
func TestWithLeakedTxIsDeadAfterWith(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, oneConn)
	repo := entity.New(pool, counters{})
	victim := "li_leak_victim"
	if err := repo.With(ctx, victim, func(_ context.Context, _ pgx.Tx, p *counter) error {
		p.N = 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	var (
		leakedTx, leakedSP, leakedNested pgx.Tx
		leakedLO                         pgx.LargeObjects
	)
	err := repo.With(ctx, "li_leak", func(ctx context.Context, tx pgx.Tx, _ *counter) error {
		if tx.Conn() == nil {
			t.Error("tx.Conn() is nil while fn runs")
		}
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		nested, err := sp.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := nested.Exec(ctx, "SELECT 1"); err != nil {
			return err
		}
		leakedTx, leakedSP, leakedNested, leakedLO = tx, sp, nested, tx.LargeObjects()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	update := "UPDATE counters SET n = 999 WHERE key = 'li_leak_victim'"
	use := func(t *testing.T) {
		t.Helper()
		for name, leaked := range map[string]pgx.Tx{"tx": leakedTx, "savepoint": leakedSP, "nested savepoint": leakedNested} {
			if _, err := leaked.Exec(ctx, update); !errors.Is(err, pgx.ErrTxClosed) {
				t.Errorf("leaked %s: Exec = %v, want pgx.ErrTxClosed", name, err)
			}
			if err := leaked.QueryRow(ctx, update+" RETURNING 1").Scan(new(int)); !errors.Is(err, pgx.ErrTxClosed) {
				t.Errorf("leaked %s: QueryRow = %v, want pgx.ErrTxClosed", name, err)
			}
			if _, err := leaked.Begin(ctx); !errors.Is(err, pgx.ErrTxClosed) {
				t.Errorf("leaked %s: Begin = %v, want pgx.ErrTxClosed", name, err)
			}
			if c := leaked.Conn(); c != nil {
				t.Errorf("leaked %s: Conn() = %p, want nil once With returned", name, c)
			}
		}
		if err := leakedSP.Rollback(ctx); !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("leaked savepoint: Rollback = %v, want pgx.ErrTxClosed", err)
		}
		if oid, err := leakedLO.Create(ctx, 0); !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("leaked large objects: Create = %d, %v; want pgx.ErrTxClosed", oid, err)
		}
	}
	// On the connection the next caller now holds, inside its transaction.
	if err := repo.With(ctx, victim, func(context.Context, pgx.Tx, *counter) error {
		use(t)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	use(t) // and with the connection idle in the pool
	if amount, _ := row(t, ctx, pool, victim); amount != 1 {
		t.Errorf("the victim's amount is %d, want 1: a leaked statement ran", amount)
	}
	var los int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_largeobject_metadata").Scan(&los); err != nil {
		t.Fatal(err)
	}
	if los != 0 {
		t.Errorf("%d large objects exist: the leaked LargeObjects ran SQL", los)
	}
}

// TestWithLargeObjectsInFn: large objects work while fn runs and commit with
// the entity; the connection is clean for the next call.
func TestWithLargeObjectsInFn(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, oneConn)
	repo := entity.New(pool, counters{})
	var oid uint32
	err := repo.With(ctx, "li_lo", func(ctx context.Context, tx pgx.Tx, p *counter) error {
		los := tx.LargeObjects()
		var err error
		if oid, err = los.Create(ctx, 0); err != nil {
			return err
		}
		lo, err := los.Open(ctx, oid, pgx.LargeObjectModeWrite)
		if err != nil {
			return err
		}
		if _, err := lo.Write([]byte("receipt")); err != nil {
			return err
		}
		p.N = 3
		return lo.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT length(lo_get($1))", oid).Scan(&n); err != nil || n != len("receipt") {
		t.Fatalf("large object %d: length %d, %v; want it committed", oid, n, err)
	}
	if err := repo.With(ctx, "li_lo", noop); err != nil {
		t.Fatal(err)
	}
}

// TestWithFnEndsTheTransaction: fn sends COMMIT or ROLLBACK itself. With
// says so (ErrTxEnded, not "rolled back"), what fn committed stays committed
// and what With would have saved is not.
func TestWithFnEndsTheTransaction(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, nil)
	repo := entity.New(pool, counters{})
	boom := errors.New("boom")
	for _, tt := range []struct {
		stmt      string
		fnErr     error
		committed bool
	}{
		{"COMMIT", nil, true},
		{"ROLLBACK", nil, false},
		{"COMMIT", boom, true},
		{"COMMIT; BEGIN", nil, true}, // two statements: the second begins a transaction without the lock
	} {
		name := strings.ReplaceAll(tt.stmt, "; ", "Then")
		if tt.fnErr != nil {
			name += "ThenError"
		}
		t.Run(name, func(t *testing.T) {
			key := "li_end_" + name
			if err := repo.With(ctx, key, noop); err != nil {
				t.Fatal(err)
			}
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *counter) error {
				if _, err := tx.Exec(ctx, "UPDATE counters SET label = 'by_fn' WHERE id = $1", p.ID); err != nil {
					return err
				}
				p.N = 77
				for stmt := range strings.SplitSeq(tt.stmt, "; ") {
					if _, err := tx.Exec(ctx, stmt); err != nil {
						return err
					}
				}
				return tt.fnErr
			})
			if !errors.Is(err, lock.ErrTxEnded) || errors.Is(err, entity.ErrTxAborted) {
				t.Fatalf("With = %v, want ErrTxEnded and not ErrTxAborted", err)
			}
			if tt.fnErr != nil && !errors.Is(err, tt.fnErr) {
				t.Fatalf("With = %v, want fn's error too", err)
			}
			amount, status := row(t, ctx, pool, key)
			if amount == 77 {
				t.Error("With saved fn's change after fn ended the transaction")
			}
			if got := status == "by_fn"; got != tt.committed {
				t.Errorf("status %q: fn's own UPDATE committed = %v, want %v", status, got, tt.committed)
			}
			if err := repo.With(ctx, key, noop); err != nil {
				t.Fatalf("next With: %v", err)
			}
		})
	}
}

// TestWithRowsLeftOpen: fn returns with Rows it never closed. With says so
// (ErrRowsOpen, not ErrCommitUnknown), commits nothing, and the pool's only
// connection is not handed out in that state.
func TestWithRowsLeftOpen(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, oneConn)
	repo := entity.New(pool, counters{})
	key := "li_rows"
	if err := repo.With(ctx, key, noop); err != nil {
		t.Fatal(err)
	}
	for name, leave := range map[string]func(context.Context, pgx.Tx) error{
		"Rows": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Query(ctx, "SELECT generate_series(1, 1000)")
			return err
		},
		"BatchResults": func(ctx context.Context, tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			b.Queue("SELECT 2")
			tx.SendBatch(ctx, b)
			return nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *counter) error {
				if _, err := tx.Exec(ctx, "UPDATE counters SET label = 'by_fn' WHERE id = $1", p.ID); err != nil {
					return err
				}
				p.N = 55
				return leave(ctx, tx)
			})
			if !errors.Is(err, lock.ErrRowsOpen) || errors.Is(err, lock.ErrCommitUnknown) {
				t.Fatalf("With = %v, want ErrRowsOpen and not ErrCommitUnknown", err)
			}
			if amount, status := row(t, ctx, pool, key); amount == 55 || status == "by_fn" {
				t.Fatalf("amount %d, status %q: something was committed", amount, status)
			}
			if err := repo.With(ctx, key, noop); err != nil {
				t.Fatalf("next With on the pool's only connection: %v", err)
			}
		})
	}
}

// TestWithNestedOnAnotherCtx documents what a nested With for the same key
// does when fn does not pass its ctx on: it can't be told from a caller on
// another goroutine, so it waits for its own caller's lock until the server
// ends the outer transaction (idle for IdleTimeout). The inner call then
// commits; the outer commits nothing and says its transaction was ended.
func TestWithNestedOnAnotherCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, nil)
	repo := entity.New(pool, counters{}, entity.WithLockOptions(lock.Options{IdleTimeout: 300 * time.Millisecond}))
	key := "li_nested"
	if err := repo.With(ctx, key, noop); err != nil {
		t.Fatal(err)
	}
	other := pgtest.Context(t, time.Minute) // not fn's ctx
	var innerErr error
	err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *counter) error {
		if _, err := tx.Exec(ctx, "UPDATE counters SET label = 'outer' WHERE id = $1", p.ID); err != nil {
			return err
		}
		innerErr = repo.With(other, key, func(_ context.Context, _ pgx.Tx, p *counter) error {
			p.N = 42
			return nil
		})
		p.N = 7
		return nil
	})
	if innerErr != nil {
		t.Fatalf("inner With = %v, want it to run once the outer transaction was ended", innerErr)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25P03" || !errors.Is(err, lock.ErrIdleTimeout) || errors.Is(err, lock.ErrCommitUnknown) {
		t.Fatalf("outer With = %v, want the server's idle-in-transaction termination (25P03, lock.ErrIdleTimeout), known not committed", err)
	}
	t.Logf("outer With: %v", err)
	if amount, status := row(t, ctx, pool, key); amount != 42 || status == "outer" {
		t.Fatalf("amount %d, status %q; want the inner call's 42 and nothing of the outer's", amount, status)
	}
}

// TestWithGoroutineLeftBehindStopsWhenFnReturns: a goroutine of fn's keeps
// running statements through tx after fn returned. Each one either ran in
// With's transaction (before With closed tx: it waits for the one in
// flight) or failed with pgx.ErrTxClosed; none ran after the commit, on the
// connection back in the pool.
func TestWithGoroutineLeftBehindStopsWhenFnReturns(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, oneConn)
	if _, err := pool.Exec(ctx, "CREATE TABLE side (xid xid8)"); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, counters{})
	key := "li_goroutine"
	var (
		xid      uint64
		inserted int
		last     error
	)
	stopped := make(chan struct{})
	err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *counter) error {
		if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
			return err
		}
		started := make(chan struct{})
		go func() {
			defer close(stopped)
			for {
				if _, last = tx.Exec(ctx, "INSERT INTO side VALUES (pg_current_xact_id())"); last != nil {
					return
				}
				if inserted++; inserted == 3 {
					close(started)
				}
			}
		}()
		<-started
		p.N = 9
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-stopped
	if !errors.Is(last, pgx.ErrTxClosed) {
		t.Fatalf("the goroutine's last Exec = %v, want pgx.ErrTxClosed", last)
	}
	var rows, inTx int
	if err := pool.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE xid::text::bigint = $1) FROM side", xid).Scan(&rows, &inTx); err != nil {
		t.Fatal(err)
	}
	if rows != inserted || inTx != rows {
		t.Fatalf("%d inserts succeeded; %d rows, %d of them in With's transaction: want all in it", inserted, rows, inTx)
	}
	if amount, _ := row(t, ctx, pool, key); amount != 9 {
		t.Fatalf("amount %d, want 9 committed", amount)
	}
}

// TestLockTimeoutBoundsTheQueue: lock.Options.LockTimeout bounds the wait in
// the Repository's in-process queue as well as the wait at PostgreSQL, so no
// caller waits much more than twice LockTimeout, however many queue behind a
// holder that doesn't let go. (Without the bound the k-th in line waited
// about k × LockTimeout.)
func TestLockTimeoutBoundsTheQueue(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, nil)
	const lockTimeout = 500 * time.Millisecond
	repo := entity.New(pool, counters{}, entity.WithLockOptions(lock.Options{LockTimeout: lockTimeout}))
	key := "li_queue_timeout"
	held, done := make(chan struct{}), make(chan struct{})
	holder := make(chan error, 1)
	go func() {
		holder <- repo.With(ctx, key, func(context.Context, pgx.Tx, *counter) error {
			close(held)
			<-done
			return nil
		})
	}()
	<-held
	// Without the bound the last in line would wait callers × LockTimeout
	// (12 s); with it, about 2 × LockTimeout. The verdict's line is half
	// the unbounded wait, which leaves a busy machine 5 s of slack.
	const callers = 24
	type result struct {
		err  error
		wait time.Duration
	}
	results := make(chan result, callers)
	for range callers {
		go func() {
			start := time.Now()
			err := repo.With(ctx, key, noop)
			results <- result{err, time.Since(start)}
		}()
	}
	for range callers {
		r := <-results
		if !errors.Is(r.err, lock.ErrLockTimeout) {
			t.Errorf("a caller queued behind the holder: %v, want lock.ErrLockTimeout", r.err)
		}
		if r.wait > callers/2*lockTimeout {
			t.Errorf("a caller waited %s with LockTimeout %s", r.wait, lockTimeout)
		}
	}
	close(done)
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
}

// TestWithAfterAnFnMadeTheSessionReadOnly: an fn that runs SET SESSION
// CHARACTERISTICS AS TRANSACTION READ ONLY changes its pooled session's
// default for later transactions; With begins READ WRITE whatever that
// default, so the next calls on the same connection (a pool of one) still
// create and write their rows, with and without group commit.
func TestWithAfterAnFnMadeTheSessionReadOnly(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, oneConn)
	for _, opts := range [][]entity.Option{nil, {entity.WithGroupCommit(8)}} {
		repo := entity.New(pool, counters{}, opts...)
		name := fmt.Sprintf("ro_%d", len(opts))
		if err := repo.With(ctx, name+"_setter", func(ctx context.Context, tx pgx.Tx, p *counter) error {
			p.N = 1
			_, err := tx.Exec(ctx, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		var def string
		if err := pool.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&def); err != nil || def != "on" {
			t.Fatalf("the session's default_transaction_read_only = %q (%v), want on", def, err)
		}
		if err := repo.With(ctx, name+"_next", func(_ context.Context, _ pgx.Tx, p *counter) error {
			p.N = 2
			return nil
		}); err != nil {
			t.Fatalf("With after an fn made the session's transactions read only: %v", err)
		}
		if n, _ := row(t, ctx, pool, name+"_next"); n != 2 {
			t.Fatalf("n = %d, want 2", n)
		}
		if _, err := pool.Exec(ctx, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"); err != nil {
			t.Fatal(err)
		}
	}
}
