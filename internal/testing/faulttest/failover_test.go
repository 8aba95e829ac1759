package faulttest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/history"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/pgserver"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// failoverKeys is the number of payments the failover tests update.
const failoverKeys = 4

// replicated starts a cluster of the test's own with settings and a hot
// standby of it (pg_basebackup -R) with none, creates the database
// "failover" with the schema and service 1 on the primary, and returns both
// servers and a pool on the primary.
func replicated(t *testing.T, ctx context.Context, settings ...string) (primary, standby *pgserver.Server, pool *pgxpool.Pool) {
	t.Helper()
	primary, err := pgserver.Start(ctx, pgserver.Options{Fast: true, Settings: settings})
	if err != nil {
		t.Fatalf("start the primary: %v", err)
	}
	t.Cleanup(func() { primary.Stop() })
	standby, err = primary.Standby(ctx, pgserver.Options{Fast: true})
	if errors.Is(err, pgserver.ErrNoBasebackup) && os.Getenv("CI") != "true" {
		t.Skipf("%v (CI=true makes this fail)", err)
	}
	if err != nil {
		t.Fatalf("start the standby: %v", err)
	}
	t.Cleanup(func() { standby.Stop() })
	return primary, standby, serverPool(t, ctx, primary, "failover")
}

// sum returns the sum of the amounts in pool's payments table: the number of
// calls committed.
func sum(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, "SELECT coalesce(sum(amount_cents), 0) FROM payments").Scan(&n)
	return n, err
}

// waitSum waits until pool's payments sum to at least n.
func waitSum(ctx context.Context, pool *pgxpool.Pool, n int) error {
	return waitFor(ctx, fmt.Sprintf("%d committed calls", n), func() (bool, error) {
		s, err := sum(ctx, pool)
		return s >= n, err
	})
}

// pollerRecord is what a failover worker process reports: its ledger.
type pollerRecord struct {
	Ops      []history.Op
	Outcomes map[string]history.Outcome
	Hung     []string // op ids of calls that ran into their deadline
}

// failoverWorker is TestFailover's poller process: args are the database
// URL, an op id prefix and the number of goroutines. It polls (see poll)
// the failover payments through one pool on the URL until its stdin closes,
// then prints its pollerRecord as JSON.
func failoverWorker(ctx context.Context, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("want 3 args, got %q", args)
	}
	workers, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(args[0])
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(workers)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	l := newLedger()
	hung := poll(ctx, l, pollerRepos(pool), args[1], workers, failoverKeys, stop)
	return json.NewEncoder(os.Stdout).Encode(pollerRecord{Ops: l.rec.Ops(), Outcomes: l.outcomes, Hung: hung})
}

// pollers are running failoverWorker processes.
type pollers struct {
	cmds  []*exec.Cmd
	stdin []io.Closer
	out   []*bytes.Buffer
	once  sync.Once
	err   error
}

// startPollers starts procs failoverWorker processes of workers goroutines
// each on url. They run until stop; t's end stops them too.
func startPollers(t *testing.T, ctx context.Context, url string, procs, workers int) *pollers {
	t.Helper()
	p := &pollers{}
	t.Cleanup(func() { p.stop() })
	for i := range procs {
		cmd := pgtest.Command(ctx, "failover", url, fmt.Sprintf("p%dw", i), strconv.Itoa(workers))
		out := new(bytes.Buffer)
		cmd.Stdout = out
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p.cmds, p.stdin, p.out = append(p.cmds, cmd), append(p.stdin, stdin), append(p.out, out)
	}
	return p
}

// stop closes the processes' stdin, which makes them finish their calls and
// report, and waits for them.
func (p *pollers) stop() error {
	p.once.Do(func() {
		for _, in := range p.stdin {
			in.Close()
		}
		for i, cmd := range p.cmds {
			if err := cmd.Wait(); err != nil {
				p.err = errors.Join(p.err, fmt.Errorf("poller process %d: %w", i, err))
			}
		}
	})
	return p.err
}

// merge adds the processes' records to l and returns the op ids of their
// calls that ran into their deadline.
func (p *pollers) merge(l *ledger) ([]string, error) {
	var hung []string
	for i, out := range p.out {
		var r pollerRecord
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("poller process %d printed %q: %w", i, out.String(), err)
		}
		l.rec.Add(r.Ops...)
		l.mu.Lock()
		for op, o := range r.Outcomes {
			l.outcomes[op] = o
		}
		l.mu.Unlock()
		hung = append(hung, r.Hung...)
	}
	return hung, nil
}

// TestFailover: a primary with a synchronous standby; 3 poller processes of
// 4 goroutines each (half with Retry) update 4 payments through one
// multi-host URL with target_session_attrs=read-write. Mid-run the primary
// is stopped with an immediate shutdown (its processes exit at once, as in
// a crash) and the standby promoted. Every call returns (none reaches its
// 30 s deadline); work continues on the new primary; there, one row per key,
// every acknowledged call applied exactly once, no failed call applied, none
// of unknown outcome twice, and the history is linearizable.
func TestFailover(t *testing.T) {
	t.Parallel()
	const procs, workers, before, after = 3, 4, 150, 150
	ctx := pgtest.Context(t, 2*time.Minute)
	primary, standby, pool := replicated(t, ctx, "synchronous_standby_names=*")
	var syncState string
	if err := pool.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication").Scan(&syncState); err != nil || syncState != "sync" {
		t.Fatalf("standby: sync_state %q, %v; want sync", syncState, err)
	}

	p := startPollers(t, ctx, pgserver.ConnStringFailover("failover", primary, standby), procs, workers)
	if err := waitSum(ctx, pool, before); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := primary.Shutdown("immediate"); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	stopTook := down.Sub(stopped)
	promoting := time.Now()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoteTook := time.Since(promoting)

	newPrimary, err := pgxpool.New(ctx, standby.ConnString("failover"))
	if err != nil {
		t.Fatal(err)
	}
	defer newPrimary.Close()
	n, err := sum(ctx, newPrimary)
	if err != nil {
		t.Fatal(err)
	}
	afterErr := waitSum(ctx, newPrimary, n+after)
	stopErr := p.stop()
	if afterErr != nil {
		t.Fatalf("work did not continue on the new primary: %v", afterErr)
	}
	if stopErr != nil {
		t.Fatal(stopErr)
	}
	l := newLedger()
	hung, err := p.merge(l)
	if err != nil {
		t.Fatal(err)
	}
	if len(hung) > 0 {
		t.Errorf("%d calls ran into their 30s deadline: %v", len(hung), hung)
	}

	ops := l.rec.Ops()
	// The outage: from the stop to the first success of a call begun once
	// the old primary was gone, so committed on the new one.
	outage := time.Duration(-1)
	for _, op := range ops {
		d := time.Duration(op.Return - stopped.UnixNano())
		if op.Outcome == history.OK && op.Call > down.UnixNano() && (outage < 0 || d < outage) {
			outage = d
		}
	}
	ok, failed, unknown := l.counts()
	failedRetrying, failedPlain := l.failures()
	applied := l.check(t, newPrimary)
	t.Logf("FIGURE failover: immediate stop took %v, promotion %v; outage (stop to the first success of a call begun on the new primary) %v; longest stretch without a success %v; calls: %d ok, %d failed (%d with Retry, %d without), %d unknown (%d of them committed)",
		stopTook.Round(time.Millisecond), promoteTook.Round(time.Millisecond), outage.Round(time.Millisecond),
		longestGap(ops).Round(time.Millisecond), ok, failed, failedRetrying, failedPlain, unknown, l.unknownApplied(applied))
}

// TestFailoverLaggingStandby is the proof that the check TestFailover relies
// on fails when replication loses acknowledged commits, and that synchronous
// replication is what prevents it. The standby falls behind (its WAL
// receiver is stopped: primary_conninfo emptied), calls go on, then the
// primary is stopped with an immediate shutdown and the standby promoted.
//
//   - Async: the primary acknowledged calls the standby never got; on the
//     new primary each is reported "acknowledged, applied 0 times".
//   - Sync (synchronous_standby_names): COMMIT waits for the standby, so
//     nothing more is acknowledged; the waiting calls end with
//     ErrCommitUnknown at the stop and the invariants hold.
func TestFailoverLaggingStandby(t *testing.T) {
	t.Parallel()
	t.Run("Async", func(t *testing.T) {
		t.Parallel()
		l, problems, lagged := laggingFailover(t, false)
		var lost int
		for _, op := range lagged {
			want := fmt.Sprintf("op %s acknowledged, applied 0 times", op)
			if slices.Contains(problems, want) {
				lost++
			} else {
				t.Errorf("call %s, acknowledged by the primary after the standby stopped receiving, not reported lost; problems: %q", op, problems)
			}
		}
		if ok, _, _ := l.counts(); lost == 0 || ok < len(lagged) {
			t.Fatalf("%d calls lost, %d acknowledged", lost, ok)
		}
		for _, p := range problems {
			if !strings.HasPrefix(p, "history: ") && !strings.Contains(p, "lag.") {
				t.Errorf("unexpected problem: %s", p)
			}
		}
		t.Logf("FIGURE failover to a lagging async standby: %d of %d acknowledged calls lost; the audit reported %d problems",
			lost, len(lagged), len(problems))
	})
	t.Run("Sync", func(t *testing.T) {
		t.Parallel()
		l, problems, lagged := laggingFailover(t, true)
		for _, p := range problems {
			t.Error(p)
		}
		l.mu.Lock()
		for _, op := range lagged {
			if o := l.outcomes[op]; o != history.Unknown {
				t.Errorf("call %s, waiting for the standby when the primary stopped: %v, want unknown", op, o)
			}
		}
		l.mu.Unlock()
		t.Logf("FIGURE failover to a lagging sync standby: %d calls waited for the standby at COMMIT and ended unknown; none acknowledged and lost", len(lagged))
	})
}

// laggingFailover runs TestFailoverLaggingStandby's scenario, with
// synchronous replication when sync, and returns the ledger, the audit's
// problems on the new primary and the op ids of the calls made after the
// standby stopped receiving.
func laggingFailover(t *testing.T, sync bool) (l *ledger, problems, lagged []string) {
	ctx := pgtest.Context(t, 2*time.Minute)
	var settings []string
	if sync {
		settings = append(settings, "synchronous_standby_names=*")
	}
	primary, standby, pool := replicated(t, ctx, settings...)
	repo := payment.NewRepository(pool, entity.WithLockOptions(lock.Options{Retry: pollRetry}))
	l = newLedger()
	for i := range 10 {
		if err := l.call(ctx, repo, key(i%2), fmt.Sprint("caught-up.", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	// The standby replays everything so far, then stops receiving.
	admin, err := pgx.Connect(ctx, standby.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var lsn string
	if err := pool.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	err = waitFor(ctx, "the standby to replay "+lsn, func() (bool, error) {
		var ok bool
		err := admin.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok)
		return ok, err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{"ALTER SYSTEM SET primary_conninfo = ''", "SELECT pg_reload_conf()"} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	err = waitFor(ctx, "the standby's WAL receiver to stop", func() (bool, error) {
		var n int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_wal_receiver").Scan(&n)
		return n == 0, err
	})
	if err != nil {
		t.Fatal(err)
	}

	// Calls on the primary alone: acknowledged when async; waiting for the
	// standby at COMMIT when sync, until the primary stops.
	done := make(chan error, 2)
	for i := range 2 {
		op := fmt.Sprint("lag.", i)
		lagged = append(lagged, op)
		if sync {
			go func() { done <- l.call(ctx, repo, key(2+i), op, nil) }()
		} else if err := l.call(ctx, repo, key(i), op, nil); err != nil {
			t.Fatal(err)
		}
	}
	if sync {
		err := waitFor(ctx, "2 commits waiting for the standby", func() (bool, error) {
			var n int
			err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'").Scan(&n)
			return n == 2, err
		})
		if err != nil {
			t.Fatal(err)
		}
		// PostgreSQL releases locks after that wait: the key stays held.
		for i := range 2 {
			if holders, _, err := lockHolders(ctx, pool, key(2+i)); err != nil || len(holders) != 1 {
				t.Errorf("%s while its COMMIT waits for the standby: holders %v, %v; want 1", key(2+i), holders, err)
			}
		}
	}
	if err := primary.Shutdown("immediate"); err != nil {
		t.Fatal(err)
	}
	if sync {
		for range 2 {
			if err := <-done; !errors.Is(err, lock.ErrCommitUnknown) {
				t.Errorf("a call waiting for the standby at COMMIT when the primary stopped: %v, want ErrCommitUnknown", err)
			}
		}
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	newPrimary, err := pgxpool.New(ctx, standby.ConnString("failover"))
	if err != nil {
		t.Fatal(err)
	}
	defer newPrimary.Close()
	problems, _, err = l.audit(ctx, newPrimary)
	if err != nil {
		t.Fatal(err)
	}
	return l, problems, lagged
}
