// Package pgtest gives every test a real, fresh PostgreSQL database.
//
// A package's TestMain hands m to Main, which finds a server once per test
// binary, in this order:
//
//  1. PAYLOCK_TEST_DATABASE, a connection URL to a server where that role may
//     CREATE DATABASE;
//  2. a throwaway cluster started from initdb and postgres found on PATH or
//     under /usr/lib/postgresql/N/bin (see internal/tools/pgserver), stopped when
//     the tests end;
//  3. a postgres container started through github.com/ory/dockertest/v3 when
//     a Docker engine answers.
//
// When none of these works, Main fails with one message naming all three; a
// server older than paylock supports fails it too, saying so
// (internal/tools/pgversion).
// DB and Pool then create a database per test (CREATE DATABASE ... TEMPLATE),
// so tests can run with t.Parallel without sharing rows or locks.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/tools/pgserver"
	"github.com/paylock/paylock/internal/tools/pgversion"
	"github.com/paylock/paylock/internal/tools/worker"
)

// EnvDatabase names the variable that points the tests at an existing server.
const EnvDatabase = "PAYLOCK_TEST_DATABASE"

const template = "paylock_template"

var (
	adminURL string       // a URL to the server's maintenance database
	counter  atomic.Int64 // database names
	prefix   = fmt.Sprintf("t%d_", os.Getpid())
)

// Workers maps a worker name to the function a re-executed test binary runs
// in place of the tests; see Command.
type Workers map[string]worker.Func

// Main runs the tests in m against a PostgreSQL server and exits. It
// registers workers with package worker first; when the binary was started
// by Command as a worker, it runs that worker instead of the tests.
func Main(m *testing.M, workers Workers) {
	for name, fn := range workers {
		worker.Register(name, fn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	worker.Serve(ctx)
	cancel()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	stop, err := setup(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	code := m.Run()
	for _, drop := range exampleDrops {
		if err := drop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
	for _, err := range runAtEnd() {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
	}
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest: stop:", err)
	}
	return code
}

// setup finds or starts a server and creates the template database.
func setup(ctx context.Context) (stop func() error, err error) {
	var reasons []string
	switch {
	case os.Getenv(EnvDatabase) != "":
		adminURL = os.Getenv(EnvDatabase)
		stop = func() error { return nil }
	default:
		s, err := pgserver.Start(ctx, pgserver.Options{Fast: true})
		if err == nil {
			adminURL, stop = s.ConnString("postgres"), s.Stop
			break
		}
		reasons = append(reasons, "local binaries: "+err.Error())
		u, dstop, derr := startDocker()
		if derr != nil {
			reasons = append(reasons, "docker: "+derr.Error())
			return nil, fmt.Errorf("no PostgreSQL for the tests. Set %s to a server URL, "+
				"or install the server (apt-get install -y postgresql) so initdb and postgres are found, "+
				"or run a Docker engine. Tried: %s", EnvDatabase, strings.Join(reasons, "; "))
		}
		adminURL, stop = u, dstop
	}
	if err := createTemplate(ctx); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

func createTemplate(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect %s: %w", redact(adminURL), err)
	}
	defer conn.Close(ctx)
	if err := pgversion.Check(ctx, conn); err != nil {
		return err
	}
	// An earlier run against a shared server may have left it behind.
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", template).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+template+" TEMPLATE template0 ENCODING 'UTF8'"); err != nil &&
			!isDuplicateDatabase(err) {
			return fmt.Errorf("create template database: %w", err)
		}
	}
	return nil
}

// DB creates a fresh database for t and returns a connection URL to it. The
// database is dropped when t ends.
func DB(t testing.TB) string {
	t.Helper()
	url, drop, err := newDatabase()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return url
}

// ExampleURL creates a fresh database for an Example function, which has no
// *testing.T, and returns its URL. It panics if that fails; the database is
// dropped when the test binary's tests end.
func ExampleURL() string {
	url, drop, err := newDatabase()
	if err != nil {
		panic(err)
	}
	exampleDrops = append(exampleDrops, drop)
	return url
}

var exampleDrops []func() error

func newDatabase() (dbURL string, drop func() error, err error) {
	if adminURL == "" {
		return "", nil, errors.New("no server; call pgtest.Main from TestMain")
	}
	name := fmt.Sprintf("%s%d", prefix, counter.Add(1))
	if err := admin("CREATE DATABASE " + name + " TEMPLATE " + template); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	drop = func() error {
		if err := admin("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database: %w", err)
		}
		return nil
	}
	return withDatabase(adminURL, name), drop, nil
}

// admin runs sql on the server's maintenance database.
func admin(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// Pool returns a pool on a fresh database (see DB), closed when t ends. The
// pool's application_name is the test's name, so pg_stat_activity tells the
// tests apart. configure, when non-nil, may change the config first.
func Pool(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(DB(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgtest"
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func withDatabase(rawURL, db string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		// keyword/value form
		return rawURL + " dbname=" + db
	}
	u.Path = "/" + db
	return u.String()
}

func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
