package bench

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Options are the flags of `paylock bench`: Flags binds them to a flag set,
// Validate checks them after parsing, and Run runs with them.
type Options struct {
	strategyList string
	workloadList string
	noPgbench    bool
	workers      int
	processes    int
	pool         int
	duration     time.Duration
	rounds       int
	latency      time.Duration
	json         bool
	waitEvents   bool
	pgbenchM     string // pgbench's query mode

	// Set by Validate.
	strategies []string
	workloads  []string
	pgbench    string // path, "" for none
}

// strategyNames lists the strategies that run by default.
func strategyNames() []string {
	var names []string
	for _, s := range strategies {
		names = append(names, s.name)
	}
	return names
}

// Flags defines bench's flags on fs, bound to o.
func (o *Options) Flags(fs *flag.FlagSet) {
	fs.StringVar(&o.strategyList, "strategies", strings.Join(strategyNames(), ","), "strategies to run, comma-separated")
	fs.StringVar(&o.workloadList, "workloads", "hot,warm,cold", "workloads to run, comma-separated: hot, warm, cold")
	fs.IntVar(&o.workers, "workers", 32, "concurrent callers in all")
	fs.IntVar(&o.processes, "processes", 1, "OS processes the workers are spread over")
	fs.IntVar(&o.pool, "pool", 0, "pool connections per process (0: as many as its workers)")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of each run")
	fs.IntVar(&o.rounds, "rounds", 2, "runs of each strategy per workload, in rotating order")
	fs.DurationVar(&o.latency, "latency", 0, "round-trip time to add between client and server, through an in-process TCP proxy")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	fs.BoolVar(&o.waitEvents, "wait-events", false, "sample pg_stat_activity every 10ms during each run and report what its busy backends (on a hot key: the lock holder) were doing")
	fs.BoolVar(&o.noPgbench, "no-pgbench", false, "leave out the pgbench row")
	fs.StringVar(&o.pgbenchM, "pgbench-mode", "prepared", "pgbench's query mode: prepared (as paylock runs its statements with pgx's default statement cache) or extended (unnamed, as paylock sends them in exec mode)")
}

// Help is the text of bench's --help after its flags: the strategies, and
// where it runs.
func Help() string {
	var b strings.Builder
	b.WriteString("Runs the strategies side by side on one server:\n")
	for _, s := range strategies {
		fmt.Fprintf(&b, "  %-15s %s\n", s.name, s.doc)
	}
	fmt.Fprintf(&b, "  %-15s %s\n", pgbenchName, "paylock's statements run by pgbench in pipeline mode, when pgbench is found")
	for _, s := range extraStrategies {
		fmt.Fprintf(&b, "  %-15s %s (only when named)\n", s.name, s.doc)
	}
	b.WriteString(`
Where it runs: the database the command line or environment names, as for
every command (--database-url, else DATABASE_URL, else the PG* variables),
where the role may CREATE DATABASE: bench works in a database of its own,
dropped at the end; on a Citus coordinator it creates that database on every
node. With nothing configured it starts a throwaway PostgreSQL with durable
settings (fsync on, synchronous_commit on) and removes it at the end.`)
	return b.String()
}

// Validate checks the parsed flags and the positional arguments args
// (there may be none), and resolves the lists of strategies and workloads.
// It touches no database.
func (o *Options) Validate(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	names := strategyNames()
	known := slices.Clone(names)
	for _, s := range extraStrategies {
		known = append(known, s.name)
	}
	if o.pgbenchM != "extended" && o.pgbenchM != "prepared" {
		return fmt.Errorf("--pgbench-mode %q: want extended or prepared", o.pgbenchM)
	}
	o.strategies, o.workloads, o.pgbench = nil, nil, ""
	for _, s := range strings.Split(o.strategyList, ",") {
		if s = strings.TrimSpace(s); s == pgbenchName {
			continue
		} else if !slices.Contains(known, s) {
			return fmt.Errorf("unknown strategy %q (want one of %s, %s)", s, strings.Join(known, ", "), pgbenchName)
		}
		o.strategies = append(o.strategies, strings.TrimSpace(s))
	}
	for _, w := range strings.Split(o.workloadList, ",") {
		if _, ok := workloads[strings.TrimSpace(w)]; !ok {
			return fmt.Errorf("unknown workload %q (want hot, warm or cold)", w)
		}
		o.workloads = append(o.workloads, strings.TrimSpace(w))
	}
	switch {
	case o.workers < 1, o.processes < 1, o.processes > o.workers, o.rounds < 1, o.duration <= 0, o.pool < 0, o.latency < 0:
		return errors.New("--workers, --processes (at most --workers), --rounds and --duration must be positive; --pool and --latency not negative")
	}
	if !o.noPgbench && (strings.Contains(","+o.strategyList+",", ","+pgbenchName+",") || o.strategyList == strings.Join(names, ",")) {
		o.pgbench = findPgbench()
	}
	return nil
}
