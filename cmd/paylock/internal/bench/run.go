package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/tools/baseline"
	"github.com/paylock/paylock/internal/tools/citusdb"
	"github.com/paylock/paylock/internal/tools/pgversion"
	"github.com/paylock/paylock/internal/tools/tcpproxy"
	"github.com/paylock/paylock/payment"
)

// Run runs `paylock bench` with the options, parsed from args and checked
// by Validate, on the server adminURL names (a URL or keyword/value string;
// "" leaves it to the PG* variables), where the role may CREATE DATABASE.
// It writes the report to stdout and progress to stderr. ctx cancels the run.
func Run(ctx context.Context, opts *Options, adminURL string, args []string, stdout, stderr io.Writer) error {
	db := fmt.Sprintf("paylock_bench_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)
	connString, drop, err := createDatabase(ctx, adminURL, db)
	if err != nil {
		return err
	}
	defer drop()

	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		return err
	}
	defer pool.Close()
	rep := &Report{Date: time.Now().UTC(), Args: args, Cores: runtime.NumCPU(), Workers: opts.workers,
		Processes: opts.processes, Pool: opts.pool, Duration: opts.duration.String(), Rounds: opts.rounds,
		Latency: opts.latency.String()}
	if err := setup(ctx, pool, rep); err != nil {
		return err
	}

	if opts.latency > 0 {
		cfg, err := pgconn.ParseConfig(connString)
		if err != nil {
			return err
		}
		p, err := tcpproxy.Start(net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
		if err != nil {
			return err
		}
		defer p.Close()
		p.SetLatency(opts.latency / 2) // each way
		connString, err = citusdb.WithHostPort(connString, "127.0.0.1", p.Port())
		if err != nil {
			return err
		}
	}

	names := slices.Clone(opts.strategies)
	if opts.pgbench != "" {
		names = append(names, pgbenchName)
	}
	runNo := 0
	progress := term.IsTerminal(stderr)
	for _, w := range opts.workloads {
		rows := make(map[string]*Row)
		for _, s := range names {
			r := &Row{Workload: w, Strategy: s}
			rows[s] = r
			rep.Rows = append(rep.Rows, r)
		}
		for round := range opts.rounds {
			order := append(slices.Clone(names[round%len(names):]), names[:round%len(names)]...)
			for _, s := range order {
				runNo++
				if progress {
					fmt.Fprintf(stderr, "\r%-60s", fmt.Sprintf("run %d: %s %s, round %d", runNo, w, s, round+1))
				}
				r := rows[s]
				sctx, stop := context.WithCancel(ctx)
				sampled := make(chan struct{})
				go func() {
					defer close(sampled)
					if opts.waitEvents {
						time.Sleep(opts.duration / 10) // past the start
						sampleWaits(sctx, pool, &r.waits)
					}
				}()
				res, dup, lost, err := runOne(ctx, opts, pool, connString, s, w, fmt.Sprintf("r%d-", runNo))
				stop()
				<-sampled
				if err != nil {
					return fmt.Errorf("%s %s: %w", w, s, err)
				}
				r.result.merge(&res)
				r.elapsedRuns += res.Elapsed
				r.Duplicates += dup
				r.Lost += lost
			}
		}
	}
	if progress {
		fmt.Fprintf(stderr, "\r%-60s\r", "")
	}
	finish(rep.Rows)
	if opts.json {
		return writeJSON(stdout, rep)
	}
	printTable(stdout, rep)
	return nil
}

// runOne empties the tables, runs strategy s on workload w and checks the
// tables afterwards.
func runOne(ctx context.Context, opts *Options, pool *pgxpool.Pool, connString, s, w, prefix string) (res loadResult, dup, lost int64, err error) {
	if _, err := pool.Exec(ctx, "TRUNCATE payments, "+baseline.Table+" RESTART IDENTITY"); err != nil {
		return res, 0, 0, err
	}
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil { // every run starts with the same WAL state
		return res, 0, 0, err
	}
	spec := loadSpec{ConnString: connString, Strategy: s, Workload: w, Workers: opts.workers, Pool: opts.pool,
		Duration: opts.duration, KeyPrefix: prefix}
	switch {
	case s == pgbenchName:
		var target pgbenchTarget
		if target, err = probePgbenchTarget(ctx, pool); err == nil {
			res, err = runPgbench(ctx, opts.pgbench, opts.pgbenchM, connString, w, target, opts.workers, opts.duration)
		}
	case opts.processes > 1:
		res, err = runProcesses(ctx, spec, opts.processes)
	default:
		var lp *pgxpool.Pool
		var do op
		lp, do, err = openLoad(ctx, spec)
		if err == nil {
			res = runLoad(ctx, spec, do)
			lp.Close()
		}
	}
	if err != nil {
		return res, 0, 0, err
	}
	table := "payments"
	if s == "naive" {
		table = baseline.Table
	}
	var rows, keys, sum int64
	if err := pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT (service_id, line_item_id)), coalesce(sum(amount_cents), 0) FROM "+
		table).Scan(&rows, &keys, &sum); err != nil {
		return res, 0, 0, err
	}
	return res, rows - keys, res.Ops - sum, nil
}

// createDatabase creates db on the server of adminURL, and returns a URL to
// it and a function that drops it. When adminURL names a database of a
// Citus coordinator with workers, it creates db on every node of that
// cluster, ready to distribute tables (citusdb.Create), so Migrate
// distributes payments there.
func createDatabase(ctx context.Context, adminURL, db string) (string, func(), error) {
	if c, ok, err := citusdb.Discover(ctx, adminURL); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	} else if ok {
		drop := func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			citusdb.Drop(ctx, c, db)
		}
		if err := citusdb.Create(ctx, c, db); err != nil {
			drop()
			return "", nil, fmt.Errorf("create database: %w", err)
		}
		u, err := citusdb.WithDatabase(adminURL, db)
		if err != nil {
			drop()
			return "", nil, err
		}
		return u, drop, nil
	}
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, adminURL); err == nil {
			conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
			conn.Close(ctx)
		}
	}
	u, err := citusdb.WithDatabase(adminURL, db)
	if err != nil {
		drop()
		return "", nil, err
	}
	return u, drop, nil
}

// setup refuses a server older than paylock supports (internal/tools/pgversion),
// applies the schema, adds service 1 and baseline.Table (payments
// without its unique index), and reads the server's settings into rep.
func setup(ctx context.Context, pool *pgxpool.Pool, rep *Report) error {
	if err := pgversion.Check(ctx, pool); err != nil {
		return err
	}
	if err := payment.Migrate(ctx, pool); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `INSERT INTO services VALUES (1, 'bench') ON CONFLICT DO NOTHING`); err != nil {
		return err
	}
	if err := baseline.CreateTable(ctx, pool); err != nil {
		return err
	}
	return pool.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')").
		Scan(&rep.ServerVersion, &rep.SynchronousCommit, &rep.Fsync)
}
