package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
)

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

// writeJSON writes rep as indented JSON, escaped for a terminal.
func writeJSON(w io.Writer, rep *Report) error {
	doc, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(term.EscapeJSON(doc), '\n'))
	return err
}

// oneLine folds a multi-line message (pgx's dial errors) onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
