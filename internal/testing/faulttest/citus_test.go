package faulttest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/history"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// citusNodes is a migrated database on a Citus cluster with service 1:
// a pool per node (the coordinator's first) and, for each, the strategy
// entity.CheckEngine chose there.
type citusNodes struct {
	db         *citustest.DB
	pools      []*pgxpool.Pool
	strategies []entity.Strategy
	// shard is the index in pools of the worker that holds service 1's
	// shard, where every payment of these tests lives.
	shard int
}

func newCitusNodes(t *testing.T, ctx context.Context, db *citustest.DB) *citusNodes {
	t.Helper()
	n := &citusNodes{db: db}
	for _, url := range db.URLs() {
		n.pools = append(n.pools, citustest.Pool(t, url, func(c *pgxpool.Config) { c.MaxConns = 16 }))
	}
	paytest.Seed(t, ctx, n.pools[0])
	for _, pool := range n.pools {
		s, err := citustest.Strategy(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		n.strategies = append(n.strategies, s)
	}
	var port int
	if err := n.pools[0].QueryRow(ctx, `SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
		WHERE p.shardid = get_shard_id_for_distribution_column('payments', 1)`).Scan(&port); err != nil {
		t.Fatal(err)
	}
	for i, w := range db.Cluster.Workers {
		if w.Port == port {
			n.shard = i + 1
		}
	}
	if n.shard == 0 {
		t.Fatalf("service 1's shard is on port %d, no worker's", port)
	}
	return n
}

// repo returns a NewDistributedRepository on node i with its strategy and
// opts.
func (n *citusNodes) repo(i int, opts ...entity.Option) *payment.Repository {
	return payment.NewDistributedRepository(n.pools[i], append(opts, entity.WithStrategy(n.strategies[i]))...)
}

// waitLockWaits waits until at least want backends of the database wait
// for a lock on node i.
func (n *citusNodes) waitLockWaits(ctx context.Context, i, want int) error {
	return waitFor(ctx, fmt.Sprintf("%d lock waits on node %d", want, i), func() (bool, error) {
		var got int
		err := n.pools[i].QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got)
		return got >= want, err
	})
}

// citusHoldWorker is holdWorker on a Citus node: args are the node's
// database URL, the line item and an op id. With RowLock (the strategy on a
// worker) and a distributed repository, it increments the payment, writes a
// partial update of its own through tx, prints "holding" and waits to be
// killed.
func citusHoldWorker(ctx context.Context, args []string) error {
	pool, err := pgxpool.New(ctx, args[0])
	if err != nil {
		return err
	}
	defer pool.Close()
	repo := payment.NewDistributedRepository(pool, entity.WithStrategy(entity.RowLock))
	return repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: args[1]}, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
		if err := increment(p, args[2]); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE payments SET status = 'partial' WHERE service_id = 1 AND id = $1", p.ID); err != nil {
			return err
		}
		fmt.Fprintln(os.Stdout, "holding")
		<-ctx.Done()
		return ctx.Err()
	})
}

// TestCitusKilledHolder: a process connected to a worker that doesn't hold
// the payment's shard holds the payment in the middle of fn when it is
// killed with SIGKILL, while a caller on every node (advisory on the
// coordinator, RowLock on the workers) waits for it on the shard. Citus
// ends the dead process's transaction: every waiter succeeds, the partial
// update is nowhere, one row, every acknowledged op exactly once.
func TestCitusKilledHolder(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	n := newCitusNodes(t, ctx, citustest.NewDB(t))
	if n.strategies[0] != entity.Advisory || n.strategies[1] != entity.RowLock || n.strategies[2] != entity.RowLock {
		t.Fatalf("strategies per node %v, want advisory on the coordinator, rowlock on the workers", n.strategies)
	}
	l := newLedger()
	k := key(1)
	for i := range n.pools {
		if err := l.call(ctx, n.repo(i), k, fmt.Sprint("before.", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	other := 3 - n.shard // the worker without the shard
	cmd, line := startWorker(t, ctx, "citushold", n.db.URLs()[other], k.LineItemID, "killed")
	if line != "holding\n" {
		t.Fatalf("worker printed %q", line)
	}
	errs := make(chan error, len(n.pools))
	for i := range n.pools {
		go func() { errs <- l.call(ctx, n.repo(i), k, fmt.Sprint("after.", i), nil) }()
	}
	if err := n.waitLockWaits(ctx, n.shard, len(n.pools)); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for range n.pools {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	applied := l.check(t, n.pools[0])
	if applied["killed"] != 0 {
		t.Error("the killed holder's increment was applied")
	}
	var partial int
	if err := n.pools[0].QueryRow(ctx, "SELECT count(*) FROM payments WHERE status = 'partial'").Scan(&partial); err != nil || partial != 0 {
		t.Errorf("%d rows with the killed holder's partial update (%v)", partial, err)
	}
}

// TestCitusWorkerRestart stops the worker that holds the payments' shard
// as a crash would (immediate shutdown) and starts it again, while pollers
// on every node (advisory on the coordinator, RowLock on the workers; half
// of them with lock.Options.Retry) update 4 payments: every call returns,
// work continues after the restart, one row per key, every acknowledged op
// applied exactly once, none that failed, none of unknown outcome twice;
// the history is linearizable per key. The cluster is the test's own.
func TestCitusWorkerRestart(t *testing.T) {
	t.Parallel()
	restartCitusNode(t, func(n *citusNodes) int { return n.shard })
}

// TestCitusCoordinatorRestart is TestCitusWorkerRestart with the
// coordinator stopped as a crash would and started again: the
// coordinator's pollers lose their connections and fail (or retry) until
// it is back; the workers' pollers, whose statements go from their worker
// straight to the shard, carry on. After the restart every node's pollers
// succeed again; one row per key, every acknowledged op exactly once.
func TestCitusCoordinatorRestart(t *testing.T) {
	t.Parallel()
	calls := restartCitusNode(t, func(*citusNodes) int { return 0 })
	for i, s := range calls[1:] {
		if s.failed+s.unknown > 0 {
			t.Errorf("pollers on worker %d: %d calls failed, %d of unknown outcome while the coordinator restarted (%v); want none",
				i, s.failed, s.unknown, s.kinds)
		}
	}
}

// restartCitusNode runs the restart tests on a cluster of the test's own:
// 4 pollers per node, half with Retry, on 4 payments of service 1; the node
// which picks (an index in n.pools) is stopped with an immediate shutdown
// and started again once 100 calls succeeded, and the pollers go on until
// each node's pollers have had 30 more successes. It returns what each
// node's pollers saw.
func restartCitusNode(t *testing.T, which func(*citusNodes) int) []nodeCalls {
	ctx := pgtest.Context(t, 3*time.Minute)
	cluster := citustest.StartCluster(t)
	n := newCitusNodes(t, ctx, citustest.OnCluster(t, cluster))
	const perNode, keys = 4, 4
	retry := entity.WithLockOptions(lock.Options{Retry: pollRetry})
	var repos []*payment.Repository
	for i := range n.pools {
		repos = append(repos, n.repo(i, retry), n.repo(i))
	}
	l := newLedger()
	stop := make(chan struct{})
	hungc := make(chan []string, 1)
	// Worker w polls through node w/perNode; even ones with Retry (see
	// ledger.failures).
	go func() {
		hungc <- poll(ctx, l, func(w int) *payment.Repository { return repos[2*(w/perNode)+w%2] }, "w", perNode*len(n.pools), keys, stop)
	}()
	waitOK := func(want []int) error {
		return waitFor(ctx, fmt.Sprintf("%v successful calls per node", want), func() (bool, error) {
			for i, s := range l.perNode(perNode, len(n.pools)) {
				if s.ok < want[i] {
					return false, nil
				}
			}
			return true, nil
		})
	}
	if err := waitOK([]int{30, 30, 30}); err != nil {
		close(stop)
		<-hungc
		t.Fatal(err)
	}
	node := which(n)
	var before []int
	for _, s := range l.perNode(perNode, len(n.pools)) {
		before = append(before, s.ok+30)
	}
	start := time.Now()
	restartErr := n.db.Cluster.Nodes()[node].Restart(ctx, "immediate")
	restarted := time.Since(start)
	afterErr := waitOK(before)
	close(stop)
	hung := <-hungc
	if restartErr != nil {
		t.Fatal(restartErr)
	}
	if afterErr != nil {
		t.Fatalf("work did not continue on every node after the restart: %v (per node: %+v)", afterErr, l.perNode(perNode, len(n.pools)))
	}
	if len(hung) > 0 {
		t.Errorf("%d calls ran into their 30s deadline: %v", len(hung), hung)
	}
	gap := longestGap(l.rec.Ops())
	ok, failed, unknown := l.counts()
	failedRetrying, failedPlain := l.failures()
	applied := l.check(t, n.pools[0])
	t.Logf("FIGURE citus node %d restart: restart took %v; longest stretch without a success %v; calls: %d ok, %d failed (%d with Retry, %d without), %d unknown (%d of them committed)",
		node, restarted.Round(time.Millisecond), gap.Round(time.Millisecond), ok, failed, failedRetrying, failedPlain, unknown, l.unknownApplied(applied))
	calls := l.perNode(perNode, len(n.pools))
	for i, s := range calls {
		t.Logf("FIGURE citus node %d restart: pollers on node %d: %d ok, %d failed (%d with Retry), %d unknown; errors: %v",
			node, i, s.ok, s.failed, s.failedRetrying, s.unknown, s.kinds)
	}
	return calls
}

// nodeCalls is what poll's workers on one node saw.
type nodeCalls struct {
	ok, failed, failedRetrying, unknown int
	kinds                               map[string]int // failed and unknown calls by errorKind
}

// perNode splits l's calls by node, worker w polling through node
// w/perNode.
func (l *ledger) perNode(perNode, nodes int) []nodeCalls {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]nodeCalls, nodes)
	for i := range out {
		out[i].kinds = map[string]int{}
	}
	for op, o := range l.outcomes {
		var w, i int
		if _, err := fmt.Sscanf(op[strings.LastIndexByte(op, 'w')+1:], "%d.%d", &w, &i); err != nil || w/perNode >= nodes {
			continue
		}
		s := &out[w/perNode]
		switch o {
		case history.OK:
			s.ok++
			continue
		case history.Failed:
			s.failed++
			if w%2 == 0 {
				s.failedRetrying++
			}
		default:
			s.unknown++
		}
		s.kinds[errorKind(l.errs[op])]++
	}
	return out
}

// errorKind names the kind of a call's error, for the figures: a
// SQLSTATE, ErrCommitUnknown, a failed dial, or the start of the message.
func errorKind(err error) string {
	var pgErr *pgconn.PgError
	var connectErr *pgconn.ConnectError
	switch {
	case errors.Is(err, lock.ErrCommitUnknown):
		return "commit unknown"
	case errors.As(err, &pgErr) && pgErr.Code == "XX000": // internal_error: which one?
		return pgErr.Code + " " + pgErr.Message
	case errors.As(err, &pgErr):
		return pgErr.Code
	case errors.As(err, &connectErr):
		return "dial"
	case err == nil:
		return "none"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

// TestCitusCommitLostOnTheWorker: the coordinator commits a With call's
// transaction on the shard's worker (one shard: no two-phase commit), the
// worker commits it and its session ends before the coordinator reads the
// answer (here: the worker waits for a synchronous standby that doesn't
// exist, and its backend is terminated in that wait, after the local
// commit). Citus then fails the coordinator's COMMIT with an ERROR (XX000,
// "could not commit transaction for shard"), although the work is
// committed: With must say ErrCommitUnknown, not a failure, and never
// retry it.
func TestCitusCommitLostOnTheWorker(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	cluster := citustest.StartCluster(t)
	n := newCitusNodes(t, ctx, citustest.OnCluster(t, cluster))
	worker := n.pools[n.shard]
	k := key(1)
	l := newLedger()
	// Each transaction on a connection of its own to the worker, which
	// reads the worker's settings as they are then.
	coord := citustest.Pool(t, n.db.CoordinatorURL(), func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["citus.max_cached_conns_per_worker"] = "0"
	})
	repo := payment.NewDistributedRepository(coord, entity.WithLockOptions(lock.Options{Retry: pollRetry}))
	if err := l.call(ctx, repo, k, "before", nil); err != nil {
		t.Fatal(err)
	}
	syncStandby := func(ctx context.Context, names string) error {
		if _, err := worker.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = '"+names+"'"); err != nil {
			return err
		}
		_, err := worker.Exec(ctx, "SELECT pg_reload_conf()")
		return err
	}
	if err := syncStandby(ctx, "nobody"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syncStandby(context.Background(), "") })
	var fnCalls atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- l.call(ctx, repo, k, "lost", func(context.Context, pgx.Tx) error { fnCalls.Add(1); return nil })
	}()
	var pid int32
	err := waitFor(ctx, "the shard's COMMIT waiting for the standby", func() (bool, error) {
		err := worker.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'
			AND datname = current_database() AND pid <> pg_backend_pid()`).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := worker.Exec(ctx, "SELECT pg_terminate_backend($1::int)", pid); err != nil {
		t.Fatal(err)
	}
	err = <-done
	if !errors.Is(err, lock.ErrCommitUnknown) {
		t.Errorf("With whose COMMIT the worker committed = %v; want ErrCommitUnknown", err)
	}
	if got := fnCalls.Load(); got != 1 {
		t.Errorf("fn ran %d times; want once (never retried)", got)
	}
	if err := syncStandby(ctx, ""); err != nil {
		t.Fatal(err)
	}
	applied := l.check(t, n.pools[0])
	if applied["lost"] != 1 {
		t.Errorf("the op is applied %d times; this test wants the case where the worker committed it", applied["lost"])
	}
}
