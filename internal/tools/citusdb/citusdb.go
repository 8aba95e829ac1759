// Package citusdb creates and drops a database across a Citus cluster: the
// database on every node, the extension in each, and the coordinator's
// metadata (its own address and its workers) in the new one, since Citus
// keeps its metadata per database. The tests' cluster
// (internal/testing/citustest) and `paylock bench` against a coordinator
// use it.
package citusdb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// Node is one server of the cluster.
type Node struct {
	// Host and Port are its address as the other nodes reach it (in the
	// coordinator's pg_dist_node).
	Host string
	Port int
	// URL connects to a database of the node in which the role may CREATE
	// DATABASE.
	URL string
}

// Cluster is a coordinator and its workers.
type Cluster struct {
	Coordinator Node
	Workers     []Node
}

// Discover reads the cluster from the metadata of the database adminURL
// names, on a coordinator: its primary workers, reached with adminURL's
// role and options at their pg_dist_node address; and the coordinator at
// its pg_dist_node address if recorded, else adminURL's. ok is false when
// that database has no Citus extension or is not a coordinator with
// workers.
func Discover(ctx context.Context, adminURL string) (c Cluster, ok bool, err error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return c, false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var citus bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')").Scan(&citus); err != nil || !citus {
		return c, false, err
	}
	rows, err := conn.Query(ctx, `SELECT groupid, nodename, nodeport FROM pg_dist_node
		WHERE noderole = 'primary' AND isactive AND (groupid = 0 OR shouldhaveshards)
		AND (SELECT groupid FROM pg_dist_local_group) = 0 ORDER BY groupid, nodeid`)
	if err != nil {
		return c, false, err
	}
	cfg := conn.Config()
	c.Coordinator = Node{Host: cfg.Host, Port: int(cfg.Port), URL: adminURL}
	var group, port int
	var host string
	_, err = pgx.ForEachRow(rows, []any{&group, &host, &port}, func() error {
		if group == 0 {
			c.Coordinator.Host, c.Coordinator.Port = host, port
			return nil
		}
		u, err := WithHostPort(adminURL, host, port)
		c.Workers = append(c.Workers, Node{Host: host, Port: port, URL: u})
		return err
	})
	return c, err == nil && len(c.Workers) > 0, err
}

// Create creates database name on every node with the citus extension,
// records the coordinator's address (citus_set_coordinator_host) and adds
// the workers (citus_add_node) in it, so that the coordinator can
// distribute tables in name and every node can query them. It blocks until
// done or ctx ends. On an error, Drop removes what it made.
func Create(ctx context.Context, c Cluster, name string) error {
	var g errgroup.Group
	for _, n := range c.nodes() {
		g.Go(func() error {
			if err := exec(ctx, n.URL, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
				return fmt.Errorf("citusdb: create database on %s:%d: %w", n.Host, n.Port, err)
			}
			u, err := WithDatabase(n.URL, name)
			if err == nil {
				err = exec(ctx, u, "CREATE EXTENSION IF NOT EXISTS citus")
			}
			if err != nil {
				return fmt.Errorf("citusdb: create extension on %s:%d: %w", n.Host, n.Port, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	u, err := WithDatabase(c.Coordinator.URL, name)
	if err != nil {
		return err
	}
	addNodes.Lock()
	defer addNodes.Unlock()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return fmt.Errorf("citusdb: add nodes: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT citus_set_coordinator_host($1, $2)", c.Coordinator.Host, c.Coordinator.Port); err != nil {
		return fmt.Errorf("citusdb: set the coordinator host: %w", err)
	}
	for _, w := range c.Workers {
		if _, err := conn.Exec(ctx, "SELECT citus_add_node($1, $2)", w.Host, w.Port); err != nil {
			return fmt.Errorf("citusdb: add node %s:%d: %w", w.Host, w.Port, err)
		}
	}
	return nil
}

// addNodes is held while workers are added to a database: Citus fails one
// of two databases' citus_add_node at once to the same worker ("failure on
// connection marked as essential").
var addNodes sync.Mutex

// Drop drops database name on every node, ending its sessions.
func Drop(ctx context.Context, c Cluster, name string) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, n := range c.nodes() {
		wg.Go(func() {
			if err := exec(ctx, n.URL, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("citusdb: drop database on %s:%d: %w", n.Host, n.Port, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c Cluster) nodes() []Node { return append([]Node{c.Coordinator}, c.Workers...) }

// exec runs sql on a connection of its own to u.
func exec(ctx context.Context, u, sql string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// WithDatabase returns connString (a URL or keyword/value string) naming
// database db.
func WithDatabase(connString, db string) (string, error) {
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + db
		return u.String(), nil
	}
	return connString + " dbname=" + db, nil
}

// WithHostPort returns connString (a URL or keyword/value string)
// pointing at host:port.
func WithHostPort(connString, host string, port int) (string, error) {
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Host = net.JoinHostPort(host, strconv.Itoa(port))
		return u.String(), nil
	}
	return fmt.Sprintf("%s host=%s port=%d", connString, host, port), nil
}
