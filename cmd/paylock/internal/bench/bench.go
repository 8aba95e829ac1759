// Package bench implements `paylock bench`: the ways to find-or-create-then-
// update a payment under contention, side by side on one server, in one run.
//
// Each strategy (see strategies) runs each workload (see workloads) for
// --duration, in --rounds rounds whose strategy order rotates, so drift in a
// shared machine hits all alike. Every op adds 1 to its payment's amount;
// after each run a check counts duplicate rows (rows beyond one per key) and
// lost updates (successful ops minus the sum of the amounts). When pgbench is
// found, paylock's statements run by pgbench in pipeline mode make a row of
// their own: the server-side limit.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/pgserver"
	"github.com/paylock/paylock/internal/tcpproxy"
	"github.com/paylock/paylock/internal/worker"
	"github.com/paylock/paylock/payment"
)

// EnvDatabase names the variable --database-url defaults to, as for every
// paylock command.
const EnvDatabase = "DATABASE_URL"

// options are the flags.
type options struct {
	db         string
	strategies []string
	workloads  []string
	workers    int
	processes  int
	pool       int
	duration   time.Duration
	rounds     int
	latency    time.Duration
	json       bool
	waitEvents bool
	pgbench    string // path, "" for none
	pgbenchM   string // pgbench's query mode
}

// Row is one line of the result: a strategy on a workload, over all rounds.
type Row struct {
	Workload    string  `json:"workload"`
	Strategy    string  `json:"strategy"`
	Ops         int64   `json:"ops"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	Duplicates  int64   `json:"duplicates"`
	Lost        int64   `json:"lost_updates"`
	Errors      int64   `json:"errors"`
	Retries     int64   `json:"retries"`
	FirstError  string  `json:"first_error,omitempty"`
	VsRowlock   float64 `json:"vs_rowlock,omitempty"`
	VsPgbench   float64 `json:"vs_pgbench,omitempty"`
	Waits       string  `json:"busy_backends,omitempty"` // with --wait-events
	result      loadResult
	elapsedRuns time.Duration
	waits       waits
}

// Report is the --json output.
type Report struct {
	Date              time.Time `json:"date"`
	Args              []string  `json:"args"`
	Cores             int       `json:"cores"`
	ServerVersion     string    `json:"server_version"`
	SynchronousCommit string    `json:"synchronous_commit"`
	Fsync             string    `json:"fsync"`
	Workers           int       `json:"workers"`
	Processes         int       `json:"processes"`
	Pool              int       `json:"pool"`
	Duration          string    `json:"duration_per_run"`
	Rounds            int       `json:"rounds"`
	Latency           string    `json:"latency"`
	Rows              []*Row    `json:"rows"`
}

// Main runs `paylock bench` with args and returns the exit code: 0, 1 for a
// failure, 2 for bad usage. ctx cancels the run.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, worker, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "paylock bench: %s; run 'paylock bench --help'\n", term.Visible(oneLine(err.Error())))
		return 2
	}
	if worker != "" {
		err = workerMain(ctx, worker, os.Stdin, stdout)
	} else {
		err = run(ctx, opts, args, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "paylock bench:", term.Visible(oneLine(err.Error())))
		return 1
	}
	return 0
}

// Parse parses args as Main would and runs nothing: nil for a valid command
// line (--help included), else the usage error Main would report.
func Parse(args []string) error {
	_, _, err := parse(args, io.Discard)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func parse(args []string, stderr io.Writer) (opts options, worker string, err error) {
	fs := flag.NewFlagSet("paylock bench", flag.ContinueOnError)
	// The flag package would print a bad flag's error raw; Main prints it
	// escaped. fs.Usage, which it calls for --help and errors, writes to
	// stderr itself.
	fs.SetOutput(io.Discard)
	var strategyList, workloadList string
	var noPgbench bool
	names := []string{}
	for _, s := range strategies {
		names = append(names, s.name)
	}
	fs.StringVar(&opts.db, "database-url", os.Getenv(EnvDatabase), "PostgreSQL URL of a server where the role may CREATE DATABASE (default $"+
		EnvDatabase+"; none: a throwaway durable server is started)")
	fs.StringVar(&strategyList, "strategies", strings.Join(names, ","), "strategies to run, comma-separated")
	fs.StringVar(&workloadList, "workloads", "hot,warm,cold", "workloads to run, comma-separated: hot, warm, cold")
	fs.IntVar(&opts.workers, "workers", 32, "concurrent callers in all")
	fs.IntVar(&opts.processes, "processes", 1, "OS processes the workers are spread over")
	fs.IntVar(&opts.pool, "pool", 0, "pool connections per process (0: as many as its workers)")
	fs.DurationVar(&opts.duration, "duration", 5*time.Second, "length of each run")
	fs.IntVar(&opts.rounds, "rounds", 2, "runs of each strategy per workload, in rotating order")
	fs.DurationVar(&opts.latency, "latency", 0, "round-trip time to add between client and server, through an in-process TCP proxy")
	fs.BoolVar(&opts.json, "json", false, "print the report as JSON")
	fs.BoolVar(&opts.waitEvents, "wait-events", false, "sample pg_stat_activity every 10ms during each run and report what its busy backends (on a hot key: the lock holder) were doing")
	fs.BoolVar(&noPgbench, "no-pgbench", false, "leave out the pgbench row")
	fs.StringVar(&opts.pgbenchM, "pgbench-mode", "prepared", "pgbench's query mode: prepared (as paylock runs its statements with pgx's default statement cache) or extended (unnamed, as paylock sends them in exec mode)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: paylock bench [flags]\n\nRuns the strategies side by side on one server:")
		for _, s := range strategies {
			fmt.Fprintf(stderr, "  %-13s %s\n", s.name, s.doc)
		}
		fmt.Fprintf(stderr, "  %-13s %s\n", pgbenchName, "paylock's statements run by pgbench in pipeline mode, when pgbench is found")
		for _, s := range extraStrategies {
			fmt.Fprintf(stderr, "  %-13s %s (only when named)\n", s.name, s.doc)
		}
		fmt.Fprintln(stderr, "\nflags:")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		return opts, "", err
	}
	if fs.NArg() > 0 {
		return opts, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	known := slices.Clone(names)
	for _, s := range extraStrategies {
		known = append(known, s.name)
	}
	if opts.pgbenchM != "extended" && opts.pgbenchM != "prepared" {
		return opts, "", fmt.Errorf("--pgbench-mode %q: want extended or prepared", opts.pgbenchM)
	}
	for _, s := range strings.Split(strategyList, ",") {
		if s = strings.TrimSpace(s); s == pgbenchName {
			continue
		} else if !slices.Contains(known, s) {
			return opts, "", fmt.Errorf("unknown strategy %q (want one of %s, %s)", s, strings.Join(known, ", "), pgbenchName)
		}
		opts.strategies = append(opts.strategies, strings.TrimSpace(s))
	}
	for _, w := range strings.Split(workloadList, ",") {
		if _, ok := workloads[strings.TrimSpace(w)]; !ok {
			return opts, "", fmt.Errorf("unknown workload %q (want hot, warm or cold)", w)
		}
		opts.workloads = append(opts.workloads, strings.TrimSpace(w))
	}
	switch {
	case opts.workers < 1, opts.processes < 1, opts.processes > opts.workers, opts.rounds < 1, opts.duration <= 0, opts.pool < 0, opts.latency < 0:
		return opts, "", errors.New("--workers, --processes (at most --workers), --rounds and --duration must be positive; --pool and --latency not negative")
	}
	if !noPgbench && (strings.Contains(","+strategyList+",", ","+pgbenchName+",") || strategyList == strings.Join(names, ",")) {
		opts.pgbench = findPgbench()
	}
	return opts, worker, nil
}

func run(ctx context.Context, opts options, args []string, stdout, stderr io.Writer) error {
	adminURL := opts.db
	if adminURL == "" {
		fmt.Fprintln(stderr, "paylock bench: no --database-url or $"+EnvDatabase+": starting a throwaway PostgreSQL (fsync on, synchronous_commit on)")
		s, err := pgserver.Start(ctx, pgserver.Options{})
		if err != nil {
			return err
		}
		defer s.Stop()
		adminURL = s.ConnString("postgres")
	}
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
		connString, err = withHostPort(connString, "127.0.0.1", p.Port())
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
		doc, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		_, err = stdout.Write(append(term.EscapeJSON(doc), '\n'))
		return err
	}
	printTable(stdout, rep)
	return nil
}

// runOne empties the tables, runs strategy s on workload w and checks the
// tables afterwards.
func runOne(ctx context.Context, opts options, pool *pgxpool.Pool, connString, s, w, prefix string) (res loadResult, dup, lost int64, err error) {
	if _, err := pool.Exec(ctx, "TRUNCATE payments, payments_naive RESTART IDENTITY"); err != nil {
		return res, 0, 0, err
	}
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil { // every run starts with the same WAL state
		return res, 0, 0, err
	}
	spec := loadSpec{ConnString: connString, Strategy: s, Workload: w, Workers: opts.workers, Pool: opts.pool,
		Duration: opts.duration, KeyPrefix: prefix}
	switch {
	case s == pgbenchName:
		res, err = runPgbench(ctx, opts.pgbench, opts.pgbenchM, connString, w, opts.workers, opts.duration)
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
		table = "payments_naive"
	}
	var rows, keys, sum int64
	if err := pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT (service_id, line_item_id)), coalesce(sum(amount_cents), 0) FROM "+
		table).Scan(&rows, &keys, &sum); err != nil {
		return res, 0, 0, err
	}
	return res, rows - keys, res.Ops - sum, nil
}

// finish computes the figures of each row and its ratios to rowlock and
// pgbench on the same workload.
func finish(rows []*Row) {
	base := map[string]map[string]float64{}
	for _, r := range rows {
		res := &r.result
		r.Ops, r.Errors, r.Retries, r.FirstError = res.Ops, res.Errors, res.Retries, res.FirstErr
		if r.elapsedRuns > 0 {
			r.OpsPerSec = float64(res.Ops) / r.elapsedRuns.Seconds()
		}
		r.P50Ms = float64(res.Latency.quantile(0.50)) / 1e6
		r.P99Ms = float64(res.Latency.quantile(0.99)) / 1e6
		r.Waits = r.waits.top(5)
		if base[r.Workload] == nil {
			base[r.Workload] = map[string]float64{}
		}
		base[r.Workload][r.Strategy] = r.OpsPerSec
	}
	for _, r := range rows {
		if b := base[r.Workload]["rowlock"]; b > 0 {
			r.VsRowlock = r.OpsPerSec / b
		}
		if b := base[r.Workload][pgbenchName]; b > 0 {
			r.VsPgbench = r.OpsPerSec / b
		}
	}
}

// oneLine folds a multi-line message (pgx's dial errors) onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func printTable(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "PostgreSQL %s, synchronous_commit=%s, fsync=%s; %d cores; %s UTC\n", rep.ServerVersion,
		rep.SynchronousCommit, rep.Fsync, rep.Cores, rep.Date.Format("2006-01-02 15:04"))
	fmt.Fprintf(w, "workers=%d processes=%d pool=%d duration=%s x %d rounds latency=%s\n\n", rep.Workers, rep.Processes,
		rep.Pool, rep.Duration, rep.Rounds, rep.Latency)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tstrategy\tops/s\tp50 ms\tp99 ms\tduplicates\tlost\terrors\tretries\tx rowlock\tx pgbench\t")
	ratio := func(f float64) string {
		if f == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", f)
	}
	var errs []string
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.Workload, r.Strategy, r.OpsPerSec,
			r.P50Ms, r.P99Ms, r.Duplicates, r.Lost, r.Errors, r.Retries, ratio(r.VsRowlock), ratio(r.VsPgbench))
		if r.FirstError != "" {
			errs = append(errs, fmt.Sprintf("%s %s: %s", r.Workload, r.Strategy, r.FirstError))
		}
	}
	tw.Flush()
	for _, r := range rep.Rows {
		if r.Waits != "" {
			fmt.Fprintf(w, "busy backends, %s %s: %s\n", r.Workload, r.Strategy, term.Visible(r.Waits))
		}
	}
	for _, e := range errs {
		fmt.Fprintln(w, "first error:", term.Visible(oneLine(e)))
	}
}

// createDatabase creates db on the server of adminURL with the schema and
// service 1, and returns a URL to it and a function that drops it.
func createDatabase(ctx context.Context, adminURL, db string) (string, func(), error) {
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
	u, err := withDatabase(adminURL, db)
	if err != nil {
		drop()
		return "", nil, err
	}
	return u, drop, nil
}

// setup applies the schema, adds service 1 and payments_naive (payments
// without its unique index), and reads the server's settings into rep.
func setup(ctx context.Context, pool *pgxpool.Pool, rep *Report) error {
	if err := payment.Migrate(ctx, pool); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, `INSERT INTO services VALUES (1, 'bench') ON CONFLICT DO NOTHING;
		CREATE TABLE IF NOT EXISTS payments_naive (LIKE payments INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS)`)
	if err != nil {
		return err
	}
	return pool.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')").
		Scan(&rep.ServerVersion, &rep.SynchronousCommit, &rep.Fsync)
}

// withDatabase returns connString naming database db.
func withDatabase(connString, db string) (string, error) {
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + db
		return u.String(), nil
	}
	return connString + " dbname=" + db, nil
}

// withHostPort returns connString pointing at host:port.
func withHostPort(connString, host string, port int) (string, error) {
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Host = net.JoinHostPort(host, strconv.Itoa(port))
		return u.String(), nil
	}
	return fmt.Sprintf("%s host=%s port=%d", connString, host, port), nil
}

// runProcesses spreads spec over n worker processes (this program again, as
// the worker workerName), starts them together once all are connected, and adds up
// what they measured.
func runProcesses(ctx context.Context, spec loadSpec, n int) (loadResult, error) {
	type child struct {
		cmd   *exec.Cmd
		in    io.WriteCloser
		out   *bufio.Reader
		share loadSpec
	}
	children := make([]*child, n)
	defer func() {
		for _, c := range children {
			if c != nil && c.cmd.Process != nil {
				c.cmd.Process.Kill()
				c.cmd.Wait()
			}
		}
	}()
	for i := range n {
		share := spec
		share.Workers = spec.Workers / n
		if i < spec.Workers%n {
			share.Workers++
		}
		if spec.Pool > 0 {
			share.Pool = spec.Pool
		}
		share.KeyPrefix = fmt.Sprintf("%sp%d-", spec.KeyPrefix, i)
		b, _ := json.Marshal(share)
		cmd := worker.Command(ctx, workerName, string(b))
		in, err := cmd.StdinPipe()
		if err != nil {
			return loadResult{}, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return loadResult{}, err
		}
		if err := cmd.Start(); err != nil {
			return loadResult{}, err
		}
		children[i] = &child{cmd: cmd, in: in, out: bufio.NewReader(out), share: share}
	}
	for i, c := range children {
		if line, err := c.out.ReadString('\n'); err != nil || line != "ready\n" {
			return loadResult{}, fmt.Errorf("worker process %d did not get ready (%q, %v); does main call worker.Serve?", i, line, err)
		}
	}
	for _, c := range children {
		io.WriteString(c.in, "go\n")
	}
	var total loadResult
	for i, c := range children {
		var r loadResult
		if err := json.NewDecoder(c.out).Decode(&r); err != nil {
			return loadResult{}, fmt.Errorf("worker process %d: %w", i, err)
		}
		if err := c.cmd.Wait(); err != nil {
			return loadResult{}, fmt.Errorf("worker process %d: %w", i, err)
		}
		total.merge(&r)
	}
	return total, nil
}

// workerName names the worker that runs one process's share of a run.
const workerName = "bench"

func init() {
	worker.Register(workerName, func(ctx context.Context, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("want one argument, the load spec; got %d", len(args))
		}
		return workerMain(ctx, args[0], os.Stdin, os.Stdout)
	})
}

// workerMain is a worker process: connect, say ready, wait for go, run,
// print the result as JSON.
func workerMain(ctx context.Context, specJSON string, stdin io.Reader, stdout io.Writer) error {
	var spec loadSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	pool, do, err := openLoad(ctx, spec)
	if err != nil {
		return err
	}
	defer pool.Close()
	fmt.Fprintln(stdout, "ready")
	if _, err := bufio.NewReader(stdin).ReadString('\n'); err != nil {
		return err
	}
	res := runLoad(ctx, spec, do)
	return json.NewEncoder(stdout).Encode(res)
}
