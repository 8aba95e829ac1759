// Package citustest runs a throwaway Citus cluster for the tests: a
// coordinator and two workers on this machine, each a PostgreSQL server
// started through internal/pgserver with the citus library preloaded.
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
	"sync"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/pgserver"
)

// ErrNoCitus is returned by Start when the server binaries lack the Citus
// extension.
var ErrNoCitus = errors.New("citustest: the Citus extension is not installed in the PostgreSQL the tests use (.ci/run builds it)")

// Workers is the number of worker nodes Start starts.
const Workers = 2

// settings are every node's: the library preloaded, and connections
// between nodes without TLS (the throwaway servers have no certificate).
var settings = []string{
	"shared_preload_libraries=citus",
	"citus.node_conninfo=sslmode=disable",
}

// Cluster is a running coordinator and its workers. Its methods are safe
// for concurrent use.
type Cluster struct {
	// Coordinator is the node that owns the metadata.
	Coordinator *pgserver.Server
	// Workers hold the shards.
	Workers []*pgserver.Server

	// addNodes is held while workers are added to a database: Citus fails
	// one of two databases' citus_add_node at once to the same worker
	// ("failure on connection marked as essential").
	addNodes sync.Mutex
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
// records the coordinator's address (citus_set_coordinator_host) and adds
// the workers to it (citus_add_node), so that the coordinator can
// distribute tables in name and every node can query them. It blocks until
// done or ctx ends.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	var g errgroup.Group
	for _, s := range c.Nodes() {
		g.Go(func() error {
			if err := exec(ctx, s.ConnString("postgres"), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
				return fmt.Errorf("citustest: create database on port %d: %w", s.Port, err)
			}
			if err := exec(ctx, s.ConnString(name), "CREATE EXTENSION citus"); err != nil {
				return fmt.Errorf("citustest: create extension on port %d: %w", s.Port, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	sql := fmt.Sprintf("SELECT citus_set_coordinator_host('127.0.0.1', %d)", c.Coordinator.Port)
	for _, w := range c.Workers {
		sql += fmt.Sprintf("; SELECT citus_add_node('127.0.0.1', %d)", w.Port)
	}
	c.addNodes.Lock()
	defer c.addNodes.Unlock()
	if err := exec(ctx, c.Coordinator.ConnString(name), sql); err != nil {
		return fmt.Errorf("citustest: add nodes: %w", err)
	}
	return nil
}

// DropDatabase drops database name on every node, ending its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, s := range c.Nodes() {
		wg.Go(func() {
			err := exec(ctx, s.ConnString("postgres"), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("citustest: drop database on port %d: %w", s.Port, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// exec runs sql on a connection of its own to url.
func exec(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}
