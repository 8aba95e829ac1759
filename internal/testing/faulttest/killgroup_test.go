package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/history"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// groupSize is how many calls groupHoldWorker makes.
const groupSize = 4

// groupHoldWorker is a process whose calls of one payment run as one group
// (entity.WithGroupCommit) and hang in the middle of it: args are the
// database URL, the line item and an op prefix. Each call increments the
// payment and writes a partial update through tx; the first holds the key
// until the others are queued behind it; the last prints "holding" with the
// transaction ids the calls saw, and waits to be killed.
func groupHoldWorker(ctx context.Context, args []string) error {
	pool, err := pgxpool.New(ctx, args[0])
	if err != nil {
		return err
	}
	defer pool.Close()
	var started atomic.Int32
	repo := payment.NewRepository(pool, entity.WithGroupCommit(groupSize), entity.WithHooks(entity.Hooks{
		Start: func(ctx context.Context, _ string, _ lock.Key) context.Context { started.Add(1); return ctx },
	}))
	var mu sync.Mutex
	var txids []string
	var ran atomic.Int32
	var wg sync.WaitGroup
	for i := range groupSize {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: args[1]}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				if ran.Add(1) == 1 {
					for started.Load() < groupSize {
						time.Sleep(time.Millisecond)
					}
					time.Sleep(50 * time.Millisecond) // from Start to the queue: microseconds
				}
				if err := increment(p, fmt.Sprint(args[2], i)); err != nil {
					return err
				}
				var txid string
				if err := tx.QueryRow(ctx, "UPDATE payments SET status = 'partial' WHERE id = $1 RETURNING txid_current()::text", p.ID).Scan(&txid); err != nil {
					return err
				}
				mu.Lock()
				txids = append(txids, txid)
				n := len(txids)
				mu.Unlock()
				if n == groupSize {
					fmt.Fprintln(os.Stdout, "holding", strings.Join(txids, " "))
					<-ctx.Done()
					return ctx.Err()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return nil
}

// TestKilledGroup: a process whose calls of one payment run as one group is
// killed with SIGKILL in the middle of the group, after three of its four
// calls' fns succeeded. None was acknowledged, and nothing of any of them is
// in the table; a waiter in another process gets the lock at once.
func TestKilledGroup(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	repo := payment.NewRepository(pool)
	l := newLedger()
	k := key(1)
	for i := range 3 {
		if err := l.call(ctx, repo, k, fmt.Sprint("before.", i), nil); err != nil {
			t.Fatal(err)
		}
	}

	cmd, line := startWorker(t, ctx, "holdgroup", pool.Config().ConnString(), k.LineItemID, "killed.")
	if !strings.HasPrefix(line, "holding ") {
		t.Fatalf("worker printed %q", line)
	}
	txids := strings.Fields(line)[1:]
	for _, id := range txids {
		if id != txids[0] {
			t.Fatalf("the worker's calls ran in transactions %v, want one group", txids)
		}
	}

	killWhileWaited(t, ctx, l, pool, repo, k, cmd, "sigkill mid-group")

	l.mu.Lock()
	for i := range groupSize {
		l.outcomes[fmt.Sprint("killed.", i)] = history.Failed // never acknowledged: must be nowhere
	}
	l.mu.Unlock()
	l.check(t, pool)
	var partial int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments WHERE status = 'partial'").Scan(&partial); err != nil {
		t.Fatal(err)
	}
	if partial != 0 {
		t.Errorf("the killed group's partial update is in %d rows", partial)
	}
	assertHealthy(t, pool)
}

// TestNetworkStallGroup: the network of a group's connection goes silent as
// it sends COMMIT (the last member's fn stalls it). The members, whose fns have returned, can't stop the
// commit, but the wait for its answer ends at the last of their deadlines:
// each gets ErrCommitUnknown, not a wait without end.
func TestNetworkStallGroup(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := newPool(t)
	proxy, viaProxy := proxied(t, pool, nil)
	l := newLedger()
	k := key(1)
	if err := l.call(ctx, payment.NewRepository(pool), k, "before", nil); err != nil {
		t.Fatal(err)
	}
	var started atomic.Int32
	repo := payment.NewRepository(viaProxy, entity.WithGroupCommit(4), entity.WithHooks(entity.Hooks{
		Start: func(ctx context.Context, _ string, _ lock.Key) context.Context { started.Add(1); return ctx },
	}))
	callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	locked, release := make(chan struct{}), releaser(t)
	holder := holdThrough(callCtx, l, repo, k, "holder", locked, release, nil)
	<-locked
	member := make(chan error, 1)
	go func() {
		// The last member changes nothing: its turn ends without a round
		// trip, and the group's next one is COMMIT, into the void.
		member <- repo.With(callCtx, k, func(context.Context, pgx.Tx, *payment.Payment) error {
			proxy.Stall()
			return nil
		})
	}()
	for started.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // from Start into the queue: microseconds
	release <- struct{}{}             // the leader's row is written, the member runs, then COMMIT
	for _, done := range []<-chan error{holder, member} {
		select {
		case err := <-done:
			if !errors.Is(err, lock.ErrCommitUnknown) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%v; want ErrCommitUnknown and DeadlineExceeded", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a member still waits for COMMIT's answer 17s past its deadline")
		}
	}
	proxy.Resume()
	l.check(t, pool)
}
