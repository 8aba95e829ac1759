package entity_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// TestGroupCommitStalePlanHeals: a member's statement prepared on the
// connection (under the member's own name) goes stale when its table's
// column changes type. Without the option pgx drops its cached statement
// on the error, so the first call after the ALTER fails and the next ones
// work. In a group, forget drops the statement from the members' set, but
// pgx's Conn.Prepare still returns the old, stale statement for that name,
// so the connection fails that member's statement in every later group.
func TestGroupCommitStalePlanHeals(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	if _, err := pool.Exec(ctx, "CREATE TABLE side (id int PRIMARY KEY, v int NOT NULL); INSERT INTO side VALUES (1, 5)"); err != nil {
		t.Fatal(err)
	}
	read := func(ctx context.Context, tx pgx.Tx, p *item) error {
		var v int64
		if err := tx.QueryRow(ctx, "SELECT v FROM side WHERE id = $1", 1).Scan(&v); err != nil {
			return err
		}
		p.Amount += v
		return nil
	}
	// Control: without the option, one call fails after the ALTER, the
	// next works.
	plain := entity.New(pool, itemTable{})
	pk := itemKey{OwnerID: 1, Name: "stale_plain"}
	if err := plain.With(ctx, pk, read); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ALTER TABLE side ALTER COLUMN v TYPE bigint"); err != nil {
		t.Fatal(err)
	}
	_ = plain.With(ctx, pk, read) // may fail: cached plan must not change result type
	if err := plain.With(ctx, pk, read); err != nil {
		t.Fatalf("without the option, the second call after the ALTER: %v", err)
	}

	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "stale_group"}
	for g := range 2 { // prepares the member's statement, then pipelines it
		for i, r := range grouped(t, ctx, repo, key, nil, itemNoop, read) {
			if r.err != nil {
				t.Fatalf("group %d before the ALTER, call %d: %v", g, i, r.err)
			}
		}
	}
	if _, err := pool.Exec(ctx, "ALTER TABLE side ALTER COLUMN v TYPE int"); err != nil {
		t.Fatal(err)
	}
	grouped(t, ctx, repo, key, nil, itemNoop, read) // the member may fail once, as without the option
	for g := range 3 {
		for i, r := range grouped(t, ctx, repo, key, nil, itemNoop, read) {
			if r.err != nil {
				t.Errorf("group %d after the ALTER (and after one failure), call %d: %v", g, i, r.err)
			}
		}
	}
}

// TestGroupCommitDeallocateAll: fn drops every prepared statement of its
// connection with pgx's own Conn.DeallocateAll (which also clears pgx's
// record of them). Without the option the next calls re-prepare and work.
// In a group, the members' set of statements (preparedSQL) still lists the
// member's statement, so a later member's pipeline queues its name, which
// pgx no longer knows and takes for SQL: pgx prepares "paylock_group_..."
// as a statement, outside the member's savepoint.
func TestGroupCommitDeallocateAll(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	n := 0
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		n++
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint("e", n))
		return err
	}
	dealloc := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		return tx.Conn().DeallocateAll(ctx)
	}
	// Control: without the option.
	plain := entity.New(pool, itemTable{})
	pk := itemKey{OwnerID: 1, Name: "dealloc_plain"}
	for i, fn := range []itemFn{add, dealloc, add, add} {
		if err := plain.With(ctx, pk, fn); err != nil {
			t.Fatalf("without the option, call %d: %v", i, err)
		}
	}

	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "dealloc_group"}
	for i, r := range grouped(t, ctx, repo, key, nil, itemNoop, add) { // prepares the member's statement
		if r.err != nil {
			t.Fatalf("warm-up call %d: %v", i, r.err)
		}
	}
	for i, r := range grouped(t, ctx, repo, key, nil, itemNoop, dealloc, add) {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 3", amount)
	}
}

// slowConn delays every write while its flag is set: a network whose round
// trip is long enough to see the order of the callers' statements.
type slowConn struct {
	net.Conn
	slow *atomic.Bool
}

func (c slowConn) Write(b []byte) (int, error) {
	if c.slow.Load() {
		time.Sleep(40 * time.Millisecond)
	}
	return c.Conn.Write(b)
}

// TestWithArrivalOrderAfterFailedTry: two callers of one key in
// one process, A then B, while another session holds the key. Callers of a
// key "queue in arrival order (in process, then on the server)"
// (docs/SCALING.md), and the second in line already waits at PostgreSQL.
// A, alone with the key in its process, first tries the lock; the try
// fails, and only a round trip later does A send the statement that waits.
// B, let through behind A, sends that statement at once, so it waits at
// PostgreSQL before A, and gets the key first.
func TestWithArrivalOrderAfterFailedTry(t *testing.T) {
	t.Parallel()
	var slow atomic.Bool
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) {
		cfg.MaxConns, cfg.MinConns = 2, 0
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return slowConn{c, &slow}, nil
		}
	})
	acfg := pool.Config().Copy()
	acfg.ConnConfig.DialFunc = (&net.Dialer{}).DialContext
	admin, err := pgxpool.NewWithConfig(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	repo := entity.New(pool, counters{})
	// Warm both connections up: each prepares With's statements once.
	var both sync.WaitGroup
	both.Add(2)
	meet := func(context.Context, pgx.Tx, *counter) error { both.Done(); both.Wait(); return nil }
	var warm sync.WaitGroup
	for _, k := range []string{"warm1", "warm2"} {
		warm.Add(1)
		go func() {
			defer warm.Done()
			if err := repo.With(ctx, k, meet); err != nil {
				t.Error(err)
			}
		}()
	}
	warm.Wait()

	holder := holdKey(t, ctx, admin, "fair")
	var mu sync.Mutex
	var order []string
	record := func(name string) func(context.Context, pgx.Tx, *counter) error {
		return func(context.Context, pgx.Tx, *counter) error {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			return nil
		}
	}
	slow.Store(true)
	errs := make(chan error, 2)
	go func() { errs <- repo.With(ctx, "fair", record("A")) }()
	// A is through the in-process queue, first, once it holds a connection
	// (it takes one only after the queue let it through).
	for deadline := time.Now().Add(time.Minute); pool.Stat().AcquiredConns() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("A did not take a connection within a minute")
		}
	}
	go func() { errs <- repo.With(ctx, "fair", record("B")) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1::bigint & 4294967295",
			lockKey("fair").ID()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters at PostgreSQL, want 2", n)
		}
		time.Sleep(time.Millisecond)
	}
	slow.Store(false)
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"A", "B"}; !slices.Equal(order, want) {
		t.Errorf("callers got the key in order %v, want arrival order %v", order, want)
	}
}

// cloningCounters is counters with a Cloner, for WithGroupCommit.
type cloningCounters struct{ counters }

func (cloningCounters) Clone(v *counter, created bool) *counter {
	c := *v
	c.Created = created
	return &c
}

// TestWithAfterDeallocateAll: user code that runs DEALLOCATE ALL (or
// DISCARD ALL) on a pooled connection, outside or inside fn.
func TestWithAfterDeallocateAll(t *testing.T) {
	t.Parallel()
	for _, stmt := range []string{"DEALLOCATE ALL", "DISCARD ALL"} {
		for _, group := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/group=%v", strings.ReplaceAll(stmt, " ", "_"), group), func(t *testing.T) {
				pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
				repo := entity.New(pool, entity.Table[string, counter](counters{}))
				if group {
					repo = entity.New(pool, entity.Table[string, counter](cloningCounters{}), entity.WithGroupCommit(4))
				}
				inc := func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }
				if err := repo.With(ctx, "k", inc); err != nil {
					t.Fatal(err)
				}
				// Inside fn: the commit check and COMMIT, prepared, are gone.
				err := repo.With(ctx, "k", func(ctx context.Context, tx pgx.Tx, c *counter) error {
					c.N++
					if stmt == "DISCARD ALL" {
						return nil // can't run in a transaction
					}
					_, err := tx.Exec(ctx, stmt)
					return err
				})
				t.Logf("With with %s in fn: %v (commit unknown: %v)", stmt, err, errors.Is(err, lock.ErrCommitUnknown))
				n, _ := row(t, ctx, pool, "k")
				t.Logf("n = %d", n)
				if err != nil && errors.Is(err, lock.ErrCommitUnknown) {
					t.Errorf("With = %v: commit reported unknown although nothing was committed (n = %d)", err, n)
				}
				// Outside With, on the pooled connection.
				if _, err := pool.Exec(ctx, stmt); err != nil {
					t.Fatal(err)
				}
				// The first call's BEGIN, named, fails: nothing was run or
				// committed; it drops the connection and Retry runs the call
				// again on a new one.
				opts := []entity.Option{entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 2}})}
				retrying := entity.New(pool, entity.Table[string, counter](counters{}), opts...)
				if group {
					retrying = entity.New(pool, entity.Table[string, counter](cloningCounters{}), append(opts, entity.WithGroupCommit(4))...)
				}
				for i := range 3 {
					if err := retrying.With(ctx, "k", inc); err != nil {
						t.Errorf("With %d after %s on the pooled connection: %v", i, stmt, err)
					}
				}
			})
		}
	}
}

// TestWithCommitCheckAfterManyCalls: the prepared commit check still stops
// the commit of a transaction fn began after many calls on the connection
// (PostgreSQL switches a prepared statement to a generic plan after five
// executions; the check must not be folded into it).
func TestWithCommitCheckAfterManyCalls(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	repo := entity.New(pool, counters{})
	for range 12 {
		if err := repo.With(ctx, "k", func(_ context.Context, _ pgx.Tx, c *counter) error { c.N++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		err := repo.With(ctx, "k", func(ctx context.Context, tx pgx.Tx, c *counter) error {
			if _, err := tx.Exec(ctx, "COMMIT; BEGIN"); err != nil {
				return err
			}
			c.N = 1000
			return nil
		})
		if !errors.Is(err, lock.ErrTxEnded) {
			t.Fatalf("With = %v, want ErrTxEnded", err)
		}
		if n, _ := row(t, ctx, pool, "k"); n != 12 {
			t.Fatalf("n = %d, want 12: a transaction without the lock committed", n)
		}
	}
}
