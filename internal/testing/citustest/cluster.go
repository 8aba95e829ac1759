// Package citustest runs a throwaway Citus cluster for the tests: a
// coordinator and two workers on this machine, each a PostgreSQL server
// started through internal/tools/pgserver with the citus library preloaded.
//
// Start starts a cluster of the test's own (for tests that stop a node);
// DB gives a test a fresh database on the cluster the test binary shares,
// with the extension created on every node and the workers added to the
// coordinator. Both need the Citus extension installed in the server the
// tests find (.ci/run builds it when it is missing): without it the test is
// skipped, saying why, except under CI=true, where it fails.
package citustest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/tools/citusdb"
	"github.com/paylock/paylock/internal/tools/pgserver"
)

// ErrNoCitus is returned by Start when the server binaries lack the Citus
// extension.
var ErrNoCitus = errors.New("citustest: the Citus extension is not installed in the PostgreSQL the tests use (.ci/run builds it)")

// Workers is the number of worker nodes Start starts.
const Workers = 2

// settings are every node's: the library preloaded, connections between
// nodes without TLS (the throwaway servers have no certificate), and 4
// shards per distributed table instead of 32: two per worker is all a test
// needs to spread keys over both, and every DDL statement, index build and
// Migrate runs on each shard (32 made the Citus tests most of the suite's
// CPU time).
var settings = []string{
	"shared_preload_libraries=citus",
	"citus.node_conninfo=sslmode=disable",
	"citus.shard_count=4",
}

// Cluster is a running coordinator and its workers. Its methods are safe
// for concurrent use.
type Cluster struct {
	// Coordinator is the node that owns the metadata.
	Coordinator *pgserver.Server
	// Workers hold the shards.
	Workers []*pgserver.Server
}

// Start starts a coordinator and Workers workers, in parallel, each a
// pgserver cluster with opts and the citus library preloaded. It blocks
// until every node accepts connections or ctx ends; on an error it stops
// what it started. It returns an error matching ErrNoCitus when the
// extension is not installed. Stop it with Stop.
func Start(ctx context.Context, opts pgserver.Options) (*Cluster, error) {
	opts.Settings = append(append([]string(nil), settings...), opts.Settings...)
	nodes := make([]*pgserver.Server, 1+Workers)
	var g errgroup.Group
	for i := range nodes {
		g.Go(func() error {
			s, err := pgserver.Start(ctx, opts)
			if err != nil && strings.Contains(err.Error(), `could not access file "citus"`) {
				err = fmt.Errorf("%w: %w", ErrNoCitus, err)
			}
			nodes[i] = s
			return err
		})
	}
	err := g.Wait()
	c := &Cluster{Coordinator: nodes[0], Workers: nodes[1:]}
	if err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Nodes returns the coordinator, then the workers.
func (c *Cluster) Nodes() []*pgserver.Server {
	return append([]*pgserver.Server{c.Coordinator}, c.Workers...)
}

// Stop stops every node (fast shutdown) and removes their directories.
func (c *Cluster) Stop() error {
	var errs []error
	for _, s := range c.Nodes() {
		if s != nil {
			errs = append(errs, s.Stop())
		}
	}
	return errors.Join(errs...)
}

// CreateDatabase creates database name on every node with the extension,
// records the coordinator's address and adds the workers to it (see
// citusdb.Create), so that the coordinator can distribute tables in name
// and every node can query them. It blocks until done or ctx ends.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return citusdb.Create(ctx, c.db(), name)
}

// DropDatabase drops database name on every node, ending its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	return citusdb.Drop(ctx, c.db(), name)
}

// db is c as citusdb sees it.
func (c *Cluster) db() citusdb.Cluster {
	node := func(s *pgserver.Server) citusdb.Node {
		return citusdb.Node{Host: "127.0.0.1", Port: s.Port, URL: s.ConnString("postgres")}
	}
	d := citusdb.Cluster{Coordinator: node(c.Coordinator)}
	for _, w := range c.Workers {
		d.Workers = append(d.Workers, node(w))
	}
	return d
}
