package entity_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// Group commit's queue: who joins a key's transaction, in what order, how
// many, on how many connections, and what bounds a caller's wait.

// seen is what one fn saw.
type seen struct {
	i       int
	amount  int64 // p.Amount
	inTx    int64 // amount read through tx
	txid    int64
	created bool
}

// TestGroupCommitArrivalOrder: callers queued behind the key's transaction
// run in one transaction, in arrival order, each seeing the row as the
// previous one left it, in p and through tx; each gets an event with the
// group's size.
func TestGroupCommitArrivalOrder(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	var rec recorder
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16), entity.WithHooks(rec.hooks()))
	key := itemKey{OwnerID: 1, Name: "li_gc_order"}
	var mu sync.Mutex
	var log []seen
	fn := func(i int) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			s := seen{i: i, amount: p.Amount, created: p.IsNew()}
			if err := tx.QueryRow(ctx, "SELECT amount, txid_current() FROM items WHERE id = $1", p.ID).Scan(&s.inTx, &s.txid); err != nil {
				return err
			}
			mu.Lock()
			log = append(log, s)
			mu.Unlock()
			p.Amount++
			return nil
		}
	}
	var fns []itemFn
	for i := range 6 {
		fns = append(fns, fn(i))
	}
	for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
		if r.err != nil || r.panicked != nil {
			t.Fatalf("call %d: %v, %v", i, r.err, r.panicked)
		}
	}
	for i, s := range log {
		if s.i != i || s.amount != int64(i) || s.inTx != int64(i) || s.txid != log[0].txid || s.created != (i == 0) {
			t.Errorf("call %d saw %+v; want call %d, amount %d in p and through tx, txid %d, created only for the first", i, s, i, i, log[0].txid)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 6 {
		t.Errorf("amount %d, want 6", amount)
	}
	if len(rec.events) != 6 {
		t.Fatalf("%d events, want 6", len(rec.events))
	}
	for _, ev := range rec.events {
		if ev.GroupSize != 6 || ev.Outcome != entity.OutcomeOK {
			t.Errorf("event %+v: want group size 6, ok", ev)
		}
	}
}

// TestGroupCommitMax: no transaction takes more than max callers.
func TestGroupCommitMax(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(3))
	key := itemKey{OwnerID: 1, Name: "li_gc_max"}
	var mu sync.Mutex
	var order []int
	txids := map[int64]int{}
	var fns []itemFn
	for i := range 8 {
		fns = append(fns, func(ctx context.Context, tx pgx.Tx, p *item) error {
			var txid int64
			if err := tx.QueryRow(ctx, "SELECT txid_current()").Scan(&txid); err != nil {
				return err
			}
			mu.Lock()
			order = append(order, i)
			txids[txid]++
			mu.Unlock()
			p.Amount++
			return nil
		})
	}
	for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
		if r.err != nil {
			t.Fatalf("call %d: %v", i, r.err)
		}
	}
	if !slices.Equal(order, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("order %v", order)
	}
	for txid, n := range txids {
		if n > 3 {
			t.Errorf("transaction %d ran %d callers, max 3", txid, n)
		}
	}
	if len(txids) < 3 {
		t.Errorf("%d transactions for 8 callers, max 3 each", len(txids))
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 8 {
		t.Errorf("amount %d, want 8", amount)
	}
}

// TestGroupCommitConnsPerKey: however many callers a hot key has, group
// commit takes at most ConnsPerKey of the pool's connections for it.
func TestGroupCommitConnsPerKey(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(4))
	key := itemKey{OwnerID: 1, Name: "li_gc_conns"}
	var most atomic.Int32
	var wg sync.WaitGroup
	for range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
				for n := pool.Stat().AcquiredConns(); n > most.Load() && !most.CompareAndSwap(most.Load(), n); {
				}
				p.Amount++
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if most.Load() > entity.ConnsPerKey {
		t.Errorf("%d connections acquired at once, want at most %d", most.Load(), entity.ConnsPerKey)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 24 {
		t.Errorf("amount %d, want 24", amount)
	}
}

// TestGroupCommitCtx: a caller whose ctx ends while it waits is dropped with
// ctx.Err(), its fn never run; a caller whose ctx ends before its fn
// returns gets ctx.Err() and nothing of it commits, as a call of its own.
func TestGroupCommitCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_ctx"}
	held, gate := make(chan struct{}), make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		leader <- repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
			close(held)
			<-gate
			p.Amount++
			return nil
		})
	}()
	<-held
	dropCtx, drop := context.WithCancel(ctx)
	dropped := make(chan error, 1)
	var ran atomic.Bool
	go func() {
		dropped <- repo.With(dropCtx, key, func(context.Context, pgx.Tx, *item) error {
			ran.Store(true)
			return nil
		})
	}()
	waitQueued(t, repo, key, 1)
	lateCtx, late := context.WithCancel(ctx)
	lateErr := make(chan error, 1)
	go func() {
		lateErr <- repo.With(lateCtx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
			late() // its own ctx ends before fn returns: a call of its own would not commit
			p.Amount += 10
			return nil
		})
	}()
	waitQueued(t, repo, key, 2)
	drop()
	if err := <-dropped; !errors.Is(err, context.Canceled) {
		t.Errorf("dropped caller: %v, want context.Canceled", err)
	}
	waitQueued(t, repo, key, 1)
	close(gate)
	if err := <-leader; err != nil {
		t.Error(err)
	}
	if err := <-lateErr; !errors.Is(err, context.Canceled) {
		t.Errorf("caller whose ctx ended in its fn: %v, want context.Canceled", err)
	}
	if ran.Load() {
		t.Error("the dropped caller's fn ran")
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 1 {
		t.Errorf("amount %d, want 1 (the leader's)", amount)
	}
}

// TestGroupCommitLockTimeout: LockTimeout bounds the wait in the queue, as
// without the option.
func TestGroupCommitLockTimeout(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(4),
		entity.WithLockOptions(lock.Options{LockTimeout: 50 * time.Millisecond}))
	key := itemKey{OwnerID: 1, Name: "li_gc_timeout"}
	held, gate := make(chan struct{}), make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		leader <- repo.With(ctx, key, func(context.Context, pgx.Tx, *item) error {
			close(held)
			<-gate
			return nil
		})
	}()
	<-held
	err := repo.With(ctx, key, itemNoop)
	close(gate)
	if !errors.Is(err, lock.ErrLockTimeout) {
		t.Errorf("queued caller: %v, want ErrLockTimeout", err)
	}
	if err := <-leader; err != nil {
		t.Error(err)
	}
	if n := entity.Queued(repo, key.LockKey()); n != 0 {
		t.Errorf("%d callers left in the queue", n)
	}
}

// TestGroupCommitReentrant: a member's fn calling With for its key with its
// ctx fails with lock.ErrReentrant, as without the option.
func TestGroupCommitReentrant(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_reentrant"}
	var inner [2]error
	nested := func(i int) itemFn {
		return func(ctx context.Context, _ pgx.Tx, p *item) error {
			inner[i] = repo.With(ctx, key, itemNoop)
			p.Amount++
			return nil
		}
	}
	for i, r := range grouped(t, ctx, repo, key, nil, nested(0), nested(1)) {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	for i, err := range inner {
		if !errors.Is(err, lock.ErrReentrant) {
			t.Errorf("nested With in call %d: %v, want ErrReentrant", i, err)
		}
	}
}
