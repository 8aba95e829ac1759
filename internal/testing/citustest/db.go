package citustest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/pgserver"
)

// DB is a database of its own for one test on a Citus cluster.
type DB struct {
	// Cluster runs it.
	Cluster *Cluster
	// Name is the database's name, the same on every node.
	Name string
}

// CoordinatorURL returns a URL for the database on the coordinator.
func (d *DB) CoordinatorURL() string { return d.Cluster.Coordinator.ConnString(d.Name) }

// WorkerURL returns a URL for the database on worker i (0 or 1).
func (d *DB) WorkerURL(i int) string { return d.Cluster.Workers[i].ConnString(d.Name) }

// URLs returns a URL for the database on every node, the coordinator's
// first.
func (d *DB) URLs() []string {
	var urls []string
	for _, s := range d.Cluster.Nodes() {
		urls = append(urls, s.ConnString(d.Name))
	}
	return urls
}

var (
	shared struct {
		once    sync.Once
		cluster *Cluster
		err     error
	}
	counter atomic.Int64
)

// hangBound bounds starting a cluster, creating a database and dropping it:
// a minute on a quiet machine, many times that on a busy one (three servers
// start, each with the extension); only a hang takes longer.
const hangBound = 10 * time.Minute

// NewDB creates a fresh database for t on the cluster the test binary
// shares (started by the first test that asks, with fsync off, and stopped
// when the binary's tests end: the package's TestMain must be pgtest.Main),
// and drops it when t ends. Without the extension t is skipped, or fails
// under CI=true.
func NewDB(t testing.TB) *DB {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangBound)
		defer cancel()
		shared.cluster, shared.err = Start(ctx, pgserver.Options{Fast: true})
		if shared.err == nil {
			pgtest.AtEnd(shared.cluster.Stop)
		}
	})
	if shared.err != nil {
		unavailable(t, shared.err)
	}
	return OnCluster(t, shared.cluster)
}

// OnCluster creates a fresh database for t on c (see Cluster.CreateDatabase)
// and drops it when t ends.
func OnCluster(t testing.TB, c *Cluster) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangBound)
	defer cancel()
	d := &DB{Cluster: c, Name: fmt.Sprintf("citus%d_%d", os.Getpid(), counter.Add(1))}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangBound)
		defer cancel()
		if err := c.DropDatabase(ctx, d.Name); err != nil {
			t.Errorf("citustest: %v", err)
		}
	})
	if err := c.CreateDatabase(ctx, d.Name); err != nil {
		t.Fatal(err)
	}
	return d
}

// StartCluster starts a cluster of t's own (Start, fsync off), for a test
// that stops or restarts a node, and stops it when t ends. Without the
// extension t is skipped, or fails under CI=true.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangBound)
	defer cancel()
	c, err := Start(ctx, pgserver.Options{Fast: true})
	if err != nil {
		unavailable(t, err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("citustest: stop: %v", err)
		}
	})
	return c
}

// unavailable fails or skips t for err from Start.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, ErrNoCitus) {
		t.Fatalf("citustest: start the cluster: %v", err)
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v", err)
	}
	t.Skipf("%v (CI=true makes this fail)", err)
}
