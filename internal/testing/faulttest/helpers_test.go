package faulttest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/history"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
	"github.com/paylock/paylock/internal/tools/pgserver"
	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// newPool returns a pool on a fresh migrated database with service 1.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	return paytest.Pool(t, func(c *pgxpool.Config) {
		c.MaxConns = 32 // room for the tests' observers beside the callers
	})
}

// serverPool creates database db on srv, a cluster of the test's own, with
// the schema and service 1, and returns a pool of 20 connections on it,
// closed when t ends.
func serverPool(t *testing.T, ctx context.Context, srv *pgserver.Server, db string) *pgxpool.Pool {
	t.Helper()
	admin, err := pgx.Connect(ctx, srv.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE "+db)
	admin.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(srv.ConnString(db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	paytest.Seed(t, ctx, pool)
	return pool
}

// poolOn returns a second pool on pool's database, through addr
// ("host:port") when it is not empty.
func poolOn(t *testing.T, pool *pgxpool.Pool, addr string, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg := pool.Config().Copy()
	if addr != "" {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		cfg.ConnConfig.Host, cfg.ConnConfig.Port = host, uint16(p)
		cfg.ConnConfig.Fallbacks = nil
	}
	if configure != nil {
		configure(cfg)
	}
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// serverAddr returns the "host:port" pool connects to.
func serverAddr(pool *pgxpool.Pool) string {
	c := pool.Config().ConnConfig
	return net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port)))
}

func key(i int) payment.Key { return payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("li_%d", i)} }

// ledger is the record of a run: every call's op id and outcome, and the
// history for the linearizability check.
type ledger struct {
	rec      history.Recorder
	mu       sync.Mutex
	outcomes map[string]history.Outcome // op id → outcome
	errs     map[string]error           // op id → the error of a call that failed
}

func newLedger() *ledger {
	return &ledger{outcomes: map[string]history.Outcome{}, errs: map[string]error{}}
}

// increment is the workload's fn: add 1 to the amount and append op to the
// JSON array in Data.
func increment(p *payment.Payment, op string) error {
	var ops []string
	if p.Data != nil {
		if err := json.Unmarshal(p.Data, &ops); err != nil {
			return err
		}
	}
	b, err := json.Marshal(append(ops, op))
	if err != nil {
		return err
	}
	p.Data, p.AmountCents = b, p.AmountCents+1
	return nil
}

// call runs one recorded increment of k with op id op. during, when not
// nil, runs inside fn after the increment, with fn's ctx and tx.
func (l *ledger) call(ctx context.Context, repo *payment.Repository, k payment.Key, op string,
	during func(ctx context.Context, tx pgx.Tx) error) error {
	c := l.rec.Begin(k.String())
	err := repo.With(ctx, k, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		c.Read(p.AmountCents)
		if err := increment(p, op); err != nil {
			return err
		}
		if during != nil {
			return during(ctx, tx)
		}
		return nil
	})
	o := c.End(err)
	l.mu.Lock()
	l.outcomes[op] = o.Outcome
	if err != nil {
		l.errs[op] = err
	}
	l.mu.Unlock()
	return err
}

// counts returns how many calls ended in each outcome.
func (l *ledger) counts() (ok, failed, unknown int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.outcomes {
		switch o {
		case history.OK:
			ok++
		case history.Failed:
			failed++
		default:
			unknown++
		}
	}
	return ok, failed, unknown
}

// check asserts the invariants on pool's payments table against l (see
// audit) and returns the ops found applied.
func (l *ledger) check(t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	problems, applied, err := l.audit(pgtest.Context(t, time.Minute), pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	return applied
}

// audit checks the invariants on pool's payments table against l: one row
// per key; the amount equals the number of ops in Data; every acknowledged op
// applied exactly once, no failed op applied, none of unknown outcome twice;
// and the history linearizable per key. It returns what does not hold and
// the ops found applied.
func (l *ledger) audit(ctx context.Context, pool *pgxpool.Pool) (problems []string, applied map[string]int, err error) {
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	rows, err := pool.Query(ctx, "SELECT service_id, line_item_id, amount_cents, data FROM payments")
	if err != nil {
		return nil, nil, err
	}
	applied = map[string]int{}
	perKey := map[payment.Key]int{}
	var k payment.Key
	var amount int64
	var data []byte
	_, err = pgx.ForEachRow(rows, []any{&k.ServiceID, &k.LineItemID, &amount, &data}, func() error {
		perKey[k]++
		var ops []string
		if data != nil {
			if err := json.Unmarshal(data, &ops); err != nil {
				return err
			}
		}
		if int64(len(ops)) != amount {
			problem("%s: amount %d but %d ops recorded", k, amount, len(ops))
		}
		for _, op := range ops {
			applied[op]++
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for k, n := range perKey {
		if n != 1 {
			problem("%s: %d rows", k, n)
		}
	}
	l.mu.Lock()
	for op, o := range l.outcomes {
		n := applied[op]
		switch {
		case o == history.OK && n != 1:
			problem("op %s acknowledged, applied %d times", op, n)
		case o == history.Failed && n != 0:
			problem("op %s failed, applied %d times", op, n)
		case o == history.Unknown && n > 1:
			problem("op %s of unknown outcome applied %d times", op, n)
		}
	}
	for op, n := range applied {
		if _, ok := l.outcomes[op]; !ok {
			problem("op %s applied %d times but never called", op, n)
		}
	}
	l.mu.Unlock()
	if ok, why := history.Check(l.rec.Ops(), 30*time.Second); !ok {
		problem("history: %s", why)
	}
	return problems, applied, nil
}

// lockHolders returns the backend pids that hold and that wait for k's
// advisory lock.
func lockHolders(ctx context.Context, pool *pgxpool.Pool, k payment.Key) (holders, waiters []int32, err error) {
	rows, err := pool.Query(ctx, `SELECT pid, granted FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, k.LockKey().ID())
	if err != nil {
		return nil, nil, err
	}
	var pid int32
	var granted bool
	_, err = pgx.ForEachRow(rows, []any{&pid, &granted}, func() error {
		if granted {
			holders = append(holders, pid)
		} else {
			waiters = append(waiters, pid)
		}
		return nil
	})
	return holders, waiters, err
}

// waitFor polls cond every 5ms until it is true or ctx is done.
func waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitWaiters waits until n backends wait for k's lock.
func waitWaiters(ctx context.Context, pool *pgxpool.Pool, k payment.Key, n int) ([]int32, error) {
	var h, w []int32
	err := waitFor(ctx, fmt.Sprintf("%d waiters", n), func() (bool, error) {
		var err error
		h, w, err = lockHolders(ctx, pool, k)
		return len(w) == n, err
	})
	if err != nil {
		err = fmt.Errorf("%w (last seen: holders %v, waiters %v)", err, h, w)
	}
	return w, err
}

// assertHealthy checks that no advisory lock is left in pool's database, no
// connection of pool stays acquired, and no backend of this database is
// left beyond the connections the pools hold.
func assertHealthy(t *testing.T, pool *pgxpool.Pool, pools ...*pgxpool.Pool) {
	t.Helper()
	ctx := pgtest.Context(t, 10*time.Second)
	var locks, backends int
	var conns, acquired int32
	err := waitFor(ctx, "a healthy pool", func() (bool, error) {
		err := pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
				AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),
			(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())`).Scan(&locks, &backends)
		conns, acquired = 0, 0
		for _, p := range append(pools, pool) {
			conns += p.Stat().TotalConns()
			acquired += p.Stat().AcquiredConns()
		}
		return locks == 0 && acquired == 0 && backends <= int(conns), err
	})
	if err != nil {
		t.Fatalf("%v: %d advisory locks, %d connections acquired, %d backends for %d pooled connections",
			err, locks, acquired, backends, conns)
	}
}

// runCalls has workers goroutines, released at once, make calls With calls
// each, alternating between two payments, through l.
func runCalls(ctx context.Context, l *ledger, repo *payment.Repository, workers, calls int) error {
	_, err := racetest.Hammer(ctx, "w", workers, calls, 2, func(ctx context.Context, k int, op string) (racetest.Call, error) {
		return racetest.Call{}, l.call(ctx, repo, key(k), op, nil)
	})
	return err
}

// holdThrough starts a recorded call on k through repo whose fn signals
// locked, waits for release, then runs after (if not nil) and returns its
// error. It returns the call's result channel.
func holdThrough(ctx context.Context, l *ledger, repo *payment.Repository, k payment.Key, op string,
	locked chan<- struct{}, release <-chan struct{}, after func(ctx context.Context, tx pgx.Tx) error) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- l.call(ctx, repo, k, op, func(ctx context.Context, tx pgx.Tx) error {
			close(locked)
			<-release
			if after != nil {
				return after(ctx, tx)
			}
			return nil
		})
	}()
	return done
}

// waitGranted starts a waiter on k through repo and returns when it waits;
// the channel gets the time its fn ran, then the call's error.
func waitGranted(t *testing.T, ctx context.Context, l *ledger, pool *pgxpool.Pool, repo *payment.Repository, k payment.Key) (<-chan time.Time, <-chan error) {
	t.Helper()
	granted, done, got := make(chan time.Time, 1), make(chan error, 1), make(chan struct{})
	go func() {
		done <- l.call(ctx, repo, k, "waiter", func(context.Context, pgx.Tx) error {
			granted <- time.Now()
			close(got)
			return nil
		})
	}()
	// The waiter queues behind the holder, unless the fault came first (a
	// holder idle for IdleTimeout, on a machine so busy that the waiter
	// started later): then it got the lock without waiting, which within
	// checks against the fault's time.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-got:
			cancel()
		case <-wctx.Done():
		}
	}()
	if _, err := waitWaiters(wctx, pool, k, 1); err != nil && ctx.Err() == nil && wctx.Err() != nil {
		return granted, done // granted meanwhile
	} else if err != nil {
		t.Fatal(err)
	}
	return granted, done
}

// within waits for the waiter's grant and reports, as a FIGURE line, how long
// after since (the fault) it came. How long is the machine's business: the
// verdict is that the grant came after the fault and without the holder's
// help (the caller releases the holder only after within), and a grant
// that never comes within limit plus a minute is a hang.
func within(t *testing.T, what string, granted <-chan time.Time, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	select {
	case at := <-granted:
		d := at.Sub(since)
		t.Logf("FIGURE %s: the waiter got the lock %v after the fault (%v on a quiet machine)", what, d.Round(time.Millisecond), limit)
		if d < 0 {
			t.Errorf("%s: the waiter got the lock %v before the fault", what, -d)
		}
		return d
	case <-time.After(limit + time.Minute):
		t.Fatalf("%s: the waiter did not get the lock within %v", what, limit+time.Minute)
		return 0
	}
}

// assertRolledBack checks that err, a holder's error after a fault, says the
// transaction ended before COMMIT: safe to retry, not ErrCommitUnknown, and
// with SQLSTATE code unless code is "".
func assertRolledBack(t *testing.T, ctx context.Context, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if err == nil || errors.Is(err, lock.ErrCommitUnknown) || !txn.Retryable(ctx, err) ||
		(code != "" && (!errors.As(err, &pgErr) || pgErr.Code != code)) {
		t.Errorf("holder: %v; want an error safe to retry (SQLSTATE %q), not ErrCommitUnknown", err, code)
	}
}

// pollRetry is the Retry of the even-numbered pollers (see pollerRepos).
var pollRetry = lock.Retry{Attempts: 10, Backoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}

// pollerRepos returns poll's repo for pool: even-numbered workers retry with
// pollRetry, odd-numbered ones make one attempt.
func pollerRepos(pool *pgxpool.Pool) func(w int) *payment.Repository {
	plain := payment.NewRepository(pool)
	retrying := payment.NewRepository(pool, entity.WithLockOptions(lock.Options{Retry: pollRetry}))
	return func(w int) *payment.Repository {
		if w%2 == 0 {
			return retrying
		}
		return plain
	}
}

// poll has workers goroutines call With through l in a loop until stop is
// closed, as pollers do: worker w through repo(w), its i-th call (op id
// prefix + "w.i") on payment (w+i) % keys, each call bounded by 30 s, with
// a pause of 10 ms after an error. Once all have returned, it returns the op
// ids of the calls that ran into that bound.
func poll(ctx context.Context, l *ledger, repo func(w int) *payment.Repository, prefix string, workers, keys int, stop <-chan struct{}) []string {
	var mu sync.Mutex
	var hung []string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				op := fmt.Sprintf("%s%d.%d", prefix, w, i)
				callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := l.call(callCtx, repo(w), key((w+i)%keys), op, nil)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					mu.Lock()
					hung = append(hung, op)
					mu.Unlock()
				}
				if err != nil {
					time.Sleep(10 * time.Millisecond) // a poller's pause after an error
				}
			}
		})
	}
	wg.Wait()
	return hung
}

// failures counts the failed calls of poll's workers with Retry and without.
func (l *ledger) failures() (withRetry, without int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for op, o := range l.outcomes {
		var w, i int
		if _, err := fmt.Sscanf(op[strings.LastIndexByte(op, 'w')+1:], "%d.%d", &w, &i); err != nil || o != history.Failed {
			continue
		}
		if w%2 == 0 {
			withRetry++
		} else {
			without++
		}
	}
	return withRetry, without
}

// longestGap returns the longest stretch of time without a successful call
// in ops, as callers saw it: between the returns of consecutive successes.
func longestGap(ops []history.Op) time.Duration {
	var okAt []int64
	for _, op := range ops {
		if op.Outcome == history.OK {
			okAt = append(okAt, op.Return)
		}
	}
	slices.Sort(okAt)
	var gap int64
	for i := 1; i < len(okAt); i++ {
		gap = max(gap, okAt[i]-okAt[i-1])
	}
	return time.Duration(gap)
}

// unknownApplied counts the calls of unknown outcome in l found in applied.
func (l *ledger) unknownApplied(applied map[string]int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for op, o := range l.outcomes {
		if o == history.Unknown && applied[op] == 1 {
			n++
		}
	}
	return n
}

// startWorker starts the test binary as worker name with args and returns
// it with the first line it printed (the worker says it holds the key).
func startWorker(t *testing.T, ctx context.Context, name string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := pgtest.Command(ctx, name, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("worker %s printed %q: %v", name, line, err)
	}
	return cmd, line
}

// killWhileWaited queues a waiter for k behind the worker cmd, kills cmd
// with SIGKILL and asserts that the waiter got the lock (a second after the
// kill on a quiet machine: see within) and succeeded: the server ended the
// dead process's transaction, without the holder's help.
func killWhileWaited(t *testing.T, ctx context.Context, l *ledger, pool *pgxpool.Pool, repo *payment.Repository, k payment.Key, cmd *exec.Cmd, what string) {
	t.Helper()
	granted, waiterDone := waitGranted(t, ctx, l, pool, repo, k)
	killed := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	within(t, what, granted, killed, time.Second)
	if err := <-waiterDone; err != nil {
		t.Fatal(err)
	}
}
