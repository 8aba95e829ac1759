package entity_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// The defects an outside review found in group commit, each against the
// contract: a group ends exactly as the same calls one by one.

// groupedBounded is grouped, failing the test if a call has not returned
// within a minute (a hang) rather than hanging it.
func groupedBounded(t *testing.T, ctx context.Context, repo payRepo, key payment.Key, ctxs []context.Context, fns ...payFn) []result {
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

func ledgerInsert(entry string) payFn {
	return func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		_, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", entry)
		return err
	}
}

// TestGroupCommitGoexitCommitsNothing: fn inserts a ledger row and its
// goroutine ends with runtime.Goexit (t.FailNow in a test's fn). Its call
// never returned: nothing of it commits, as without group commit; the
// others' do.
func TestGroupCommitGoexitCommitsNothing(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	key := payment.Key{ServiceID: 1, LineItemID: "li_goexit"}
	res := groupedBounded(t, ctx, repo, key, nil,
		ledgerInsert("leader"),
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents += 100
			if _, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", "goexit"); err != nil {
				return err
			}
			runtime.Goexit()
			return nil
		},
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents += 5; return nil },
	)
	if res[0].err != nil || res[2].err != nil {
		t.Fatalf("leader %v, third %v", res[0].err, res[2].err)
	}
	if got := ledger(t, ctx, pool); len(got) != 1 || got[0] != "leader" {
		t.Errorf("ledger %q, want only the leader's", got)
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 5 {
		t.Errorf("amount %d, want 5: the Goexit call's change was committed", amount)
	}
}

// TestGroupCommitRefusedRowChargedToItsMember: member 1 sets Data to JSON
// that jsonb refuses (22P05); member 2 adds to the amount and writes a
// ledger row. One by one, member 1 fails with the server's error and member
// 2 succeeds; so in a group.
func TestGroupCommitRefusedRowChargedToItsMember(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	key := payment.Key{ServiceID: 1, LineItemID: "li_refused"}
	res := groupedBounded(t, ctx, repo, key, nil,
		payNoop,
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.Data = json.RawMessage(`{"note":"\u0000"}`)
			return nil
		},
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			p.AmountCents += 5
			return ledgerInsert("second")(ctx, tx, p)
		},
	)
	if !isCode(res[1].err, "22P05") || errors.Is(res[1].err, entity.ErrGroupRolledBack) {
		t.Errorf("member 1 = %v, want the server's 22P05, not ErrGroupRolledBack", res[1].err)
	}
	if res[0].err != nil || res[2].err != nil {
		t.Errorf("leader %v, member 2 %v; want nil for both", res[0].err, res[2].err)
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 5 {
		t.Errorf("amount %d, want 5", amount)
	}
	if got := ledger(t, ctx, pool); len(got) != 1 {
		t.Errorf("ledger %q, want member 2's row", got)
	}
}

// TestGroupCommitMemberDeletesTheRow: add 3, DELETE the row, add 5. One by
// one all succeed and the third call creates the row again; so in a group.
func TestGroupCommitMemberDeletesTheRow(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	key := payment.Key{ServiceID: 1, LineItemID: "li_deleted"}
	var created bool
	res := groupedBounded(t, ctx, repo, key, nil,
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents += 3; return nil },
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			_, err := tx.Exec(ctx, "DELETE FROM payments WHERE id = $1", p.ID)
			return err
		},
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			created = p.IsNew()
			p.AmountCents += 5
			return nil
		},
	)
	for i, r := range res {
		if r.err != nil || r.panicked != nil {
			t.Errorf("call %d: %v %v", i, r.err, r.panicked)
		}
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 5 {
		t.Errorf("amount %d, want 5 (the row created again)", amount)
	}
	if !created {
		t.Error("the third call's p.IsNew() = false, want true: it created the row again")
	}
}

// scanPanics13 is payment.Table whose Scan panics on a row of amount 13.
type scanPanics13 struct{ payment.Table }

func (t scanPanics13) Scan(row pgx.Row, created bool) (*payment.Payment, error) {
	p, err := t.Table.Scan(row, created)
	if err == nil && p.AmountCents == 13 {
		panic("scan: amount 13")
	}
	return p, err
}

// TestGroupCommitTablePanicEveryoneReturns: a Table whose Scan panics on
// some data, met when the group reads the row back after a member's SQL:
// every call returns (none hangs), the panicking one with the panic.
func TestGroupCommitTablePanicEveryoneReturns(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New[payment.Key, payment.Payment](pool, scanPanics13{}, entity.WithGroupCommit(8))
	key := payment.Key{ServiceID: 1, LineItemID: "li_panic_scan"}
	res := groupedBounded(t, ctx, repo, key, nil,
		payNoop,
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			_, err := tx.Exec(ctx, "UPDATE payments SET amount_cents = 13 WHERE id = $1", p.ID)
			return err
		},
		payNoop,
		payNoop,
	)
	panics := 0
	for _, r := range res {
		if r.panicked != nil {
			panics++
		}
	}
	if panics == 0 {
		t.Errorf("no call panicked: %+v", res)
	}
}

// TestGroupCommitIdleTimeoutPerMember: fns that run no SQL and take a while
// each. One by one, each transaction is idle for one fn; in a group, each
// member's fn gets IdleTimeout too, rather than the sum of all of them.
func TestGroupCommitIdleTimeoutPerMember(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	const idle, fnTime = 2500 * time.Millisecond, time.Second
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8),
		entity.WithLockOptions(lock.Options{IdleTimeout: idle}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_idle"}
	slow := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		time.Sleep(fnTime)
		p.AmountCents++
		return nil
	}
	res := groupedBounded(t, ctx, repo, key, nil, slow, slow, slow, slow)
	for i, r := range res {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
		}
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 4 {
		t.Errorf("amount %d, want 4", amount)
	}
}

// TestGroupCommitGoroutineLeftUsingTx: fn leaves a goroutine that keeps
// running statements through tx after fn returned, on a pool of one
// connection. Those statements fail with pgx.ErrTxClosed and never touch
// the connection the next members use (-race reports it if they do).
func TestGroupCommitGoroutineLeftUsingTx(t *testing.T) {
	t.Parallel()
	pool, ctx := paySetup(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8))
	key := payment.Key{ServiceID: 1, LineItemID: "li_stray"}
	var wg sync.WaitGroup
	strayErrs := make(chan error, 4) // two strays a round, two rounds
	stray := func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		if _, err := tx.Exec(ctx, "SELECT $1::int", 1); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				if _, err := tx.Exec(ctx, "SELECT $1::int", i); err != nil {
					strayErrs <- err
					return
				}
				if r, err := tx.Query(ctx, "SELECT $1::int", i); err == nil {
					for r.Next() {
					}
					r.Close()
				}
			}
		}()
		p.AmountCents++
		return nil
	}
	for range 2 {
		res := groupedBounded(t, ctx, repo, key, nil, payNoop, stray, ledgerInsert("x"+time.Now().String()), stray, payNoop)
		for i, r := range res {
			if r.err != nil {
				t.Errorf("call %d: %v", i, r.err)
			}
		}
	}
	wg.Wait()
	close(strayErrs)
	for err := range strayErrs {
		if !errors.Is(err, pgx.ErrTxClosed) {
			t.Errorf("a statement after fn returned: %v, want pgx.ErrTxClosed", err)
		}
	}
	if amount, _ := payRow(t, ctx, pool, key); amount != 4 {
		t.Errorf("amount %d, want 4", amount)
	}
}

// isCode reports whether err is a server error of SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// TestGroupCommitMemberReturnsAtItsCtx: member 1's fn returns at once and
// its ctx ends while member 2's fn still runs. No call waits past its ctx:
// member 1 returns then, before member 2's fn ends, with
// lock.ErrCommitUnknown and its ctx's error (the group may yet commit its
// part, and does).
func TestGroupCommitMemberReturnsAtItsCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	type member1 struct{}
	returned := make(chan struct{}) // member 1's call ended (its Done hook ran)
	repo := entity.New(pool, payment.Table{}, entity.WithGroupCommit(8), entity.WithHooks(entity.Hooks{
		Done: func(ctx context.Context, _ entity.Event) {
			if ctx.Value(member1{}) != nil {
				close(returned)
			}
		},
	}))
	ctx1, cancel1 := context.WithCancel(context.WithValue(ctx, member1{}, true))
	defer cancel1()
	var waited bool
	res := groupedBounded(t, ctx, repo, payment.Key{ServiceID: 1, LineItemID: "li_ctx_return"}, []context.Context{nil, ctx1},
		payNoop,
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil },
		func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
			cancel1() // member 1's ctx ends while this fn runs
			select {
			case <-returned:
				waited = true
			case <-time.After(30 * time.Second): // only a member 1 that waits for this fn gets here
			}
			p.AmountCents += 10
			return nil
		},
	)
	if !waited {
		t.Errorf("member 1 (%v) did not return while member 2's fn ran", res[1].err)
	}
	if !errors.Is(res[1].err, lock.ErrCommitUnknown) || !errors.Is(res[1].err, context.Canceled) {
		t.Errorf("member 1: %v, want ErrCommitUnknown and context.Canceled", res[1].err)
	}
	if amount, _ := payRow(t, ctx, pool, payment.Key{ServiceID: 1, LineItemID: "li_ctx_return"}); amount != 11 {
		t.Errorf("amount %d, want 11: member 1's part was committed with the group", amount)
	}
}
