package entity_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
)

// The group commit tests' scaffolding: a pool with the items table
// and a ledger table, calls run as one group or one by one, and the rows
// they leave.

type itemFn = func(ctx context.Context, tx pgx.Tx, p *item) error

// itemRepo is a Repository of items.
type itemRepo = *entity.Repository[itemKey, item]

// result is how one call of grouped ended.
type result struct {
	err      error
	panicked any
}

// grouped runs fns[0] first and holds the key in it until fns[1:] all wait
// behind it, queued one after another (so in that order); then it lets
// them all go and returns how each call ended. ctxs[i], if set, is call i's
// ctx.
func grouped(t *testing.T, ctx context.Context, repo itemRepo, key itemKey, ctxs []context.Context, fns ...itemFn) []result {
	t.Helper()
	res := make([]result, len(fns))
	held, gate := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	call := func(i int, fn itemFn) {
		defer wg.Done()
		defer func() { res[i].panicked = recover() }()
		c := ctx
		if i < len(ctxs) && ctxs[i] != nil {
			c = ctxs[i]
		}
		res[i].err = repo.With(c, key, fn)
	}
	wg.Add(1)
	first := fns[0]
	var once sync.Once
	go call(0, func(ctx context.Context, tx pgx.Tx, p *item) error {
		once.Do(func() { close(held) }) // once: Retry may run it again
		<-gate
		return first(ctx, tx, p)
	})
	<-held
	for i := 1; i < len(fns); i++ {
		wg.Add(1)
		go call(i, fns[i])
		waitQueued(t, repo, key, i)
	}
	close(gate)
	wg.Wait()
	return res
}

// groupedBounded is grouped, failing the test if a call has not returned
// within a minute (a hang) rather than hanging it.
func groupedBounded(t *testing.T, ctx context.Context, repo itemRepo, key itemKey, ctxs []context.Context, fns ...itemFn) []result {
	t.Helper()
	done := make(chan []result, 1)
	go func() { done <- grouped(t, ctx, repo, key, ctxs, fns...) }()
	select {
	case res := <-done:
		return res
	case <-time.After(time.Minute):
		t.Fatal("a call of the group has not returned after a minute")
		return nil
	}
}

// oneByOne runs fns one by one through repo (a Repository without group
// commit, for comparison with grouped) on key, each on a goroutine of its
// own (so a fn may call runtime.Goexit) after the previous returned, and
// returns how each call ended.
func oneByOne(t *testing.T, ctx context.Context, repo itemRepo, key itemKey, fns ...itemFn) []result {
	t.Helper()
	res := make([]result, len(fns))
	for i, fn := range fns {
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() { res[i].panicked = recover() }()
			res[i].err = repo.With(ctx, key, fn)
		}()
		<-done
	}
	return res
}

// groupedOrOneByOne runs fns as grouped does when group is set, else one by
// one, each after the previous returned.
func groupedOrOneByOne(t *testing.T, ctx context.Context, repo itemRepo, group bool, key itemKey, fns ...itemFn) []result {
	if group {
		return grouped(t, ctx, repo, key, nil, fns...)
	}
	return oneByOne(t, ctx, repo, key, fns...)
}

// waitQueued waits until n callers of key are queued in repo.
func waitQueued(t *testing.T, repo itemRepo, key itemKey, n int) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); entity.Queued(repo, key.LockKey()) != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d callers queued, want %d", entity.Queued(repo, key.LockKey()), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// groupSetup returns a pool with the items table and a ledger table
// (entry text PRIMARY KEY) that fns write to.
func groupSetup(t *testing.T) (*pgxpool.Pool, context.Context) { return ledgerPool(t, nil) }

// oneConnGroupSetup is groupSetup on a pool of one connection, so that what
// one group prepared on it the next one finds.
func oneConnGroupSetup(t *testing.T) (*pgxpool.Pool, context.Context) {
	return ledgerPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
}

// ledgerPool is itemsPool with the ledger table.
func ledgerPool(t *testing.T, configure func(*pgxpool.Config)) (*pgxpool.Pool, context.Context) {
	t.Helper()
	pool, ctx := itemsPool(t, configure)
	if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	return pool, ctx
}

// ledger returns the ledger's committed entries in order.
func ledger(t *testing.T, ctx context.Context, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, _ := pool.Query(ctx, "SELECT entry FROM ledger ORDER BY entry")
	entries, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// ledgerInsert returns a fn that writes entry to the ledger.
func ledgerInsert(entry string) itemFn {
	return func(ctx context.Context, tx pgx.Tx, p *item) error {
		_, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", entry)
		return err
	}
}

// itemRow reads the committed amount and status of key's item.
func itemRow(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key itemKey) (amount int64, status string) {
	t.Helper()
	err := pool.QueryRow(ctx, "SELECT amount, status FROM items WHERE owner_id = $1 AND name = $2",
		key.OwnerID, key.Name).Scan(&amount, &status)
	if err != nil {
		t.Fatal(err)
	}
	return amount, status
}

// itemExists reports whether key's item exists, and its amount (0 if
// not).
func itemExists(t *testing.T, ctx context.Context, pool *pgxpool.Pool, key itemKey) (bool, int64) {
	t.Helper()
	var n, amount int64
	err := pool.QueryRow(ctx, "SELECT count(*), coalesce(sum(amount), 0) FROM items WHERE owner_id = $1 AND name = $2",
		key.OwnerID, key.Name).Scan(&n, &amount)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0, amount
}

// itemNoop is a fn that does nothing.
func itemNoop(context.Context, pgx.Tx, *item) error { return nil }

// isCode reports whether err is a server error of SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
