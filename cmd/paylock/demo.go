package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/cmd/paylock/internal/demo"
	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/tools/pgversion"
	"github.com/paylock/paylock/internal/tools/worker"
)

var cmdDemo = &command{
	name:    "demo",
	summary: "show the race and the cure: naive find-then-create vs payment.With, side by side",
	help: `
Pollers (--pollers, default 8 goroutines; --processes runs each as its own OS
process) receive events from a simulated external API: every payment gets 1
to 6 events with amounts, each event is delivered 1 to 3 times, and a
payment's deliveries reach several pollers at once. They apply them first
with the naive find-then-create (on naive_payments, a copy of payments
without the unique index), then through payment.Repository.With, and the demo
prints a side-by-side table: events handled, rows created, duplicate rows,
payments with a wrong amount, balance expected vs found, ops/s.

Where it runs: with no database configured (no --database-url, DATABASE_URL
or PG* variable) it starts a throwaway PostgreSQL cluster from the server
binaries on the machine — durable settings, fsync on, like production — and
removes it at the end. With a database it creates its own schema
(paylock_demo_<pid>_<n>), works only there, and drops it at the end.

Exit 0 when paylock's column is exact: one row per payment and every
payment's amount equal to the sum of its distinct events.`,
	flags: func(fs *flag.FlagSet) any {
		d := demo.DefaultScenario
		f := new(demoFlags)
		fs.IntVar(&f.pollers, "pollers", d.Pollers, "concurrent pollers")
		fs.BoolVar(&f.processes, "processes", false, "run each poller as a separate OS process instead of a goroutine")
		fs.IntVar(&f.payments, "payments", d.Payments, "distinct payments the simulated API sends")
		fs.DurationVar(&f.work, "work", d.Work, "time a handler spends on each payment it changes")
		fs.IntVar(&f.seed, "seed", int(d.Seed), "seed of the simulated API's feed")
		return f
	},
	validate: validateDemo,
	run:      runDemo,
}

// cmdDemoWorker is one poller process of `paylock demo --processes`.
var cmdDemoWorker = &command{
	name:    "demo-worker",
	summary: "one poller process of 'paylock demo --processes' (internal)",
	hidden:  true,
	flags: func(fs *flag.FlagSet) any {
		d := demo.DefaultScenario
		f := new(demoWorkerFlags)
		fs.StringVar(&f.mode, "mode", "", "naive or paylock")
		fs.StringVar(&f.schema, "schema", "", "the demo's schema")
		fs.IntVar(&f.index, "index", 0, "this poller's index")
		fs.IntVar(&f.pollers, "pollers", d.Pollers, "pollers")
		fs.IntVar(&f.payments, "payments", d.Payments, "payments")
		fs.DurationVar(&f.work, "work", d.Work, "work per change")
		fs.IntVar(&f.seed, "seed", int(d.Seed), "seed")
		return f
	},
	run: runDemoWorker,
}

// The "paylock" worker runs a command line as the binary would: demo
// --processes starts its pollers as `paylock demo-worker ...` with it, in
// this binary and in the test binary alike.
func init() {
	worker.Register("paylock", func(ctx context.Context, args []string) error {
		if code := run(ctx, args, os.Stdout, os.Stderr); code != 0 {
			return worker.ExitCode(code) // run has said why, as the binary would
		}
		return nil
	})
}

// scenarioFlags are the flags of the demo's scenario, of paylock demo and
// of its poller processes alike.
type scenarioFlags struct {
	pollers, payments int
	work              time.Duration
	seed              int
}

// demoFlags are paylock demo's flags.
type demoFlags struct {
	scenarioFlags
	processes bool
}

// demoWorkerFlags are paylock demo-worker's flags.
type demoWorkerFlags struct {
	scenarioFlags
	mode, schema string
	index        int
}

// scenario checks the flags and returns the scenario they describe.
func (f *scenarioFlags) scenario() (demo.Scenario, error) {
	s := demo.DefaultScenario
	s.Pollers, s.Payments, s.Work, s.Seed = f.pollers, f.payments, f.work, uint64(f.seed)
	switch {
	case s.Pollers < 1 || s.Pollers > 64:
		return s, usagef("--pollers %d: between 1 and 64", s.Pollers)
	case s.Payments < 1:
		return s, usagef("--payments %d: at least 1", s.Payments)
	case s.Work < 0:
		return s, usagef("--work %s: must not be negative", s.Work)
	}
	return s, nil
}

// demoPool opens a pool whose search_path is the demo's schema.
func demoPool(ctx context.Context, c *call, connString, schema string, conns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, c.configError(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "paylock " + c.cmd.name
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return pool, nil
}

func validateDemo(c *call) error {
	if err := noArgs(c); err != nil {
		return err
	}
	_, err := c.flags.(*demoFlags).scenario()
	return err
}

func runDemo(ctx context.Context, c *call) (err error) {
	f := c.flags.(*demoFlags)
	s, err := f.scenario()
	if err != nil {
		return err
	}
	w := c.stdout
	processes := f.processes

	connString, where, stop, err := c.serverOrThrowaway(ctx, w)
	if err != nil {
		return err
	}
	defer stop(&err)

	// The demo's own schema, dropped at the end even after Ctrl-C.
	schema := fmt.Sprintf("paylock_demo_%d_%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
	admin, err := pgx.Connect(ctx, connString)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if err := pgversion.Check(ctx, admin); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := admin.Exec(cctx, "DROP SCHEMA "+schema+" CASCADE"); derr != nil && err == nil {
			err = fmt.Errorf("drop schema %s: %w", schema, derr)
		}
	}()
	pool, err := demoPool(ctx, c, connString, schema, s.Pollers+2)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := demo.Setup(ctx, pool, s); err != nil {
		return err
	}

	all := s.Deliveries()
	kind := "goroutines"
	if processes {
		kind = "OS processes"
	}
	fmt.Fprintf(w, "paylock demo: %d pollers (%s) receive %d deliveries for %d payments from a simulated API\n",
		s.Pollers, kind, len(all), s.Payments)
	fmt.Fprintf(w, "that sends 1-%d events per payment and delivers each event 1-%d times, concurrently.\n",
		s.MaxEvents, s.MaxDeliveries)
	fmt.Fprintf(w, "database: %s, schema %s (dropped at the end)\n\n", where, schema)

	var results []demo.Result
	for _, mode := range []demo.Mode{demo.Naive, demo.Paylock} {
		var handled atomic.Int64
		stopProgress := showProgress(w, modeTitle(mode), &handled, len(all))
		start := time.Now()
		if processes {
			err = runProcesses(ctx, c, s, mode, schema, connString, &handled)
		} else {
			err = runGoroutines(ctx, pool, s, mode, all, &handled)
		}
		elapsed := time.Since(start)
		stopProgress(elapsed)
		if err != nil {
			return fmt.Errorf("%s run: %w", mode, err)
		}
		r, err := demo.Audit(ctx, pool, mode, all)
		if err != nil {
			return err
		}
		r.Handled, r.Elapsed = int(handled.Load()), elapsed
		results = append(results, r)
	}
	fmt.Fprintln(w)
	writeDemoTable(w, results)
	fmt.Fprintln(w)
	naive, paylock := results[0], results[1]
	if naive.Exact() {
		fmt.Fprintln(w, "naive: exact this time — the race is timing-dependent; run again, or raise --pollers or --work.")
	} else {
		fmt.Fprintf(w, "naive: %d duplicate rows and %d payments with a wrong amount: the race the problem describes.\n",
			naive.DuplicateRows, naive.WrongPayments)
	}
	if !paylock.Exact() {
		return fmt.Errorf("paylock's column is not exact: %d rows for %d payments, %d wrong amounts, balance %s, want %s",
			paylock.Rows, paylock.Payments, paylock.WrongPayments, money(paylock.Found), money(paylock.Expected))
	}
	fmt.Fprintln(w, "paylock: exact — one row per payment, every event counted once.")
	return nil
}

func modeTitle(m demo.Mode) string {
	if m == demo.Naive {
		return "naive find-then-create"
	}
	return "paylock payment.With"
}

// showProgress shows handled/total while a run goes: a line redrawn in place
// on a terminal, otherwise a "progress:" line every 5 seconds. The returned
// func ends it with the final count.
func showProgress(w io.Writer, title string, handled *atomic.Int64, total int) func(time.Duration) {
	tty := term.IsTerminal(w)
	done := make(chan struct{})
	finished := make(chan struct{})
	start := time.Now()
	every := 5 * time.Second
	if tty {
		every = 100 * time.Millisecond
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r\x1b[2K%-24s %5d/%d events  %s", title, handled.Load(), total, time.Since(start).Round(100*time.Millisecond))
				} else {
					fmt.Fprintf(w, "progress: %s %d/%d events, %s\n", title, handled.Load(), total, time.Since(start).Round(time.Second))
				}
			}
		}
	}()
	return func(elapsed time.Duration) {
		close(done)
		<-finished
		if tty {
			io.WriteString(w, "\r\x1b[2K")
		}
		fmt.Fprintf(w, "%-24s %5d/%d events  %s\n", title, handled.Load(), total, elapsed.Round(time.Millisecond))
	}
}

func runGoroutines(ctx context.Context, pool *pgxpool.Pool, s demo.Scenario, mode demo.Mode, all []demo.Delivery, handled *atomic.Int64) error {
	p := demo.NewPoller(pool, mode, s)
	start := make(chan struct{})
	g, ctx := errgroup.WithContext(ctx)
	for i := range s.Pollers {
		mine := s.Share(all, i)
		g.Go(func() error {
			<-start
			for _, d := range mine {
				if err := p.Handle(ctx, d); err != nil {
					return err
				}
				handled.Add(1)
			}
			return nil
		})
	}
	close(start)
	return g.Wait()
}

// runProcesses runs each poller as a demo-worker process. A worker prints
// "handled N" as it goes; the last such line is its total.
func runProcesses(ctx context.Context, c *call, s demo.Scenario, mode demo.Mode, schema, connString string, handled *atomic.Int64) error {
	g, ctx := errgroup.WithContext(ctx)
	stderr := &syncWriter{w: c.stderr} // the workers' stderr, copied by one goroutine each
	for i := range s.Pollers {
		args := []string{"demo-worker", "--mode", string(mode), "--schema", schema, "--index", strconv.Itoa(i),
			"--pollers", strconv.Itoa(s.Pollers), "--payments", strconv.Itoa(s.Payments), "--work", s.Work.String(),
			"--seed", strconv.FormatUint(s.Seed, 10)}
		if connString != "" {
			args = append(args, "--database-url", connString)
		}
		cmd := worker.Command(ctx, "paylock", args...)
		cmd.Stderr = stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start poller process %d: %w", i, err)
		}
		g.Go(func() error {
			var last int64
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if n, ok := strings.CutPrefix(sc.Text(), "handled "); ok {
					v, _ := strconv.ParseInt(n, 10, 64)
					handled.Add(v - last)
					last = v
				}
			}
			if err := cmd.Wait(); err != nil {
				return fmt.Errorf("poller process %d: %w", i, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// syncWriter serializes writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func runDemoWorker(ctx context.Context, c *call) error {
	f := c.flags.(*demoWorkerFlags)
	s, err := f.scenario()
	if err != nil {
		return err
	}
	mode := demo.Mode(f.mode)
	if mode != demo.Naive && mode != demo.Paylock {
		return usagef("--mode %q: naive or paylock", mode)
	}
	index := f.index
	if index < 0 || index >= s.Pollers || f.schema == "" {
		return usagef("--index %d of --pollers %d, and --schema, are required", index, s.Pollers)
	}
	pool, err := demoPool(ctx, c, c.connString(), f.schema, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	p := demo.NewPoller(pool, mode, s)
	mine := s.Share(s.Deliveries(), index)
	for i, d := range mine {
		if err := p.Handle(ctx, d); err != nil {
			return err
		}
		if (i+1)%10 == 0 || i+1 == len(mine) {
			fmt.Fprintf(c.stdout, "handled %d\n", i+1)
		}
	}
	return nil
}

func writeDemoTable(w io.Writer, rs []demo.Result) {
	row := func(label string, f func(demo.Result) string) {
		fmt.Fprintf(w, "%-30s", label)
		for _, r := range rs {
			fmt.Fprintf(w, " %24s", f(r))
		}
		fmt.Fprintln(w)
	}
	row("", func(r demo.Result) string { return modeTitle(r.Mode) })
	row("events handled", func(r demo.Result) string { return strconv.Itoa(r.Handled) })
	row("payments sent by the API", func(r demo.Result) string { return strconv.Itoa(r.Payments) })
	row("rows created", func(r demo.Result) string { return strconv.Itoa(r.Rows) })
	row("duplicate rows", func(r demo.Result) string { return strconv.Itoa(r.DuplicateRows) })
	row("payments with a wrong amount", func(r demo.Result) string { return strconv.Itoa(r.WrongPayments) })
	row("balance expected", func(r demo.Result) string { return money(r.Expected) })
	row("balance found", func(r demo.Result) string { return money(r.Found) })
	row("difference", func(r demo.Result) string { return money(r.Found - r.Expected) })
	row("ops/s", func(r demo.Result) string { return fmt.Sprintf("%.0f", r.OpsPerSec()) })
	row("exact", func(r demo.Result) string {
		if r.Exact() {
			return "yes"
		}
		return "NO"
	})
}

func money(cents int64) string {
	sign := ""
	if cents < 0 {
		sign, cents = "-", -cents
	}
	return fmt.Sprintf("%s%d.%02d", sign, cents/100, cents%100)
}
