package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/txn"
	"github.com/paylock/paylock/payment"
)

// pgbenchName is the row of the server-side limit: paylock's statements run
// by pgbench, in pipeline mode, with no Go in the way.
const pgbenchName = "pgbench"

// findPgbench returns pgbench's path: on PATH, or beside the server binaries.
func findPgbench() string {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	if len(dirs) > 0 {
		return dirs[len(dirs)-1]
	}
	return ""
}

// pgbenchTarget is what the pgbench script must know of its database.
type pgbenchTarget struct {
	distributed bool // payments is distributed by Citus
	connCheck   bool // the server accepts client_connection_check_interval
}

// probePgbenchTarget asks pool's database what pgbenchScript must know, the
// way the library asks: payment.Distributed, and txn.Settings.Probe on one
// of pool's connections.
func probePgbenchTarget(ctx context.Context, pool *pgxpool.Pool) (pgbenchTarget, error) {
	var t pgbenchTarget
	var err error
	if t.distributed, err = payment.Distributed(ctx, pool); err != nil {
		return t, err
	}
	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		s, err := txn.Settings{}.Probe(ctx, c.Conn())
		t.connCheck = s.ConnCheck
		return err
	})
	return t, err
}

// pgbenchScript returns the script of one op: With's two round trips, with
// the same statements and settings (payment/repository.go), the first five
// in one pipeline, the commit check (txn.CheckSQL), the update and COMMIT in
// another. pgbench can't carry a value from a pipelined SELECT to the UPDATE
// (\gset is refused in a pipeline), so the update adds 1 in SQL and finds
// the row by its key; it can't compute paylock's xxhash either, so the lock
// id is the key's number. Where payments is distributed by Citus the insert
// is payment.Table's for it (INSERT ... VALUES ... ON CONFLICT DO NOTHING),
// as the library's is there; client_connection_check_interval is set only
// where the server accepts it, as With sets it.
func pgbenchScript(workload string, target pgbenchTarget) string {
	var set, li, lockID string
	switch workload {
	case "hot":
		li, lockID = "'hot'", strconv.FormatInt(payment.Key{ServiceID: 1, LineItemID: "hot"}.LockKey().ID(), 10)
	case "warm":
		set = fmt.Sprintf("\\set k random(0, %d)\n", warmKeys-1)
		li, lockID = "'w' || :k", ":k"
	default:
		set = "\\set k random(1, 9000000000000000000)\n"
		li, lockID = "'pgbench' || :k", ":k"
	}
	where := "service_id = 1 AND line_item_id = " + li
	// With tries the lock with a prepared statement when its key is cold in
	// its process, and waits with the statement that names the key
	// otherwise: cold keys never collide here, warm ones may, and a failed
	// try would end a pgbench client.
	lock := txn.WaitSQL(lockID, "pgbench")
	if workload == "cold" {
		lock = txn.TryOrFailSQL(lockID + "::bigint")
	}
	insert := `INSERT INTO payments (service_id, line_item_id) SELECT 1, ` + li + ` WHERE NOT EXISTS (SELECT FROM payments WHERE ` + where + `) ON CONFLICT DO NOTHING`
	if target.distributed {
		insert = `INSERT INTO payments (service_id, line_item_id) VALUES (1, ` + li + `) ON CONFLICT DO NOTHING`
	}
	return set + `\startpipeline
` + txn.SQLBegin + `;
` + txn.Settings{IdleTimeout: txn.DefaultIdleTimeout, ConnCheck: target.connCheck}.SetSQL() + `;
` + lock + `;
` + insert + `;
SELECT id, service_id, line_item_id, amount_cents, currency, status, data, created_at, updated_at FROM payments WHERE ` + where + ` ORDER BY id LIMIT 1 FOR NO KEY UPDATE;
\endpipeline
\startpipeline
` + txn.CheckSQL + `;
UPDATE payments SET amount_cents = amount_cents + 1, updated_at = now() WHERE ` + where + `;
COMMIT;
\endpipeline
`
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// runPgbench runs the script with workers clients for d (rounded up to whole
// seconds, pgbench's unit) and reads every transaction's latency from its log.
// A run that completed no transaction and failed none (a machine so busy that
// the clients did not get through one in d) measured nothing: it runs again
// for twice as long, until ctx ends.
func runPgbench(ctx context.Context, path, mode, connString, workload string, target pgbenchTarget, workers int, d time.Duration) (loadResult, error) {
	for {
		r, err := runPgbenchOnce(ctx, path, mode, connString, workload, target, workers, d)
		if err != nil || r.Ops > 0 || r.Errors > 0 {
			return r, err
		}
		if ctx.Err() != nil {
			return r, fmt.Errorf("pgbench: no transaction completed in %s: %w", d, ctx.Err())
		}
		d *= 2
	}
}

func runPgbenchOnce(ctx context.Context, path, mode, connString, workload string, target pgbenchTarget, workers int, d time.Duration) (loadResult, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return loadResult{}, err
	}
	dir, err := os.MkdirTemp("", "paylock-pgbench-")
	if err != nil {
		return loadResult{}, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "op.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript(workload, target)), 0o644); err != nil {
		return loadResult{}, err
	}
	secs := max(int(math.Ceil(d.Seconds())), 1)
	cmd := exec.CommandContext(ctx, path, "-n", "-M", mode, "-f", script,
		"-c", strconv.Itoa(workers), "-j", strconv.Itoa(min(workers, runtime.NumCPU())),
		"-T", strconv.Itoa(secs), "-l", "--log-prefix", filepath.Join(dir, "log"),
		"-h", cfg.Host, "-p", strconv.Itoa(int(cfg.Port)), "-U", cfg.User, cfg.Database)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+cfg.Password, "PGAPPNAME=paylock bench pgbench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("pgbench: %w: %s", err, strings.TrimSpace(string(out)))
	}
	var r loadResult
	logs, _ := filepath.Glob(filepath.Join(dir, "log.*"))
	for _, name := range logs {
		if err := readPgbenchLog(name, &r); err != nil {
			return loadResult{}, err
		}
	}
	if r.Ops == 0 && r.Errors == 0 {
		return r, nil // no tps line: see runPgbench
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return loadResult{}, fmt.Errorf("pgbench: no tps in its output: %s", out)
	}
	tps, _ := strconv.ParseFloat(string(m[1]), 64)
	if tps > 0 {
		r.Elapsed = time.Duration(float64(r.Ops) / tps * float64(time.Second))
	}
	return r, nil
}

// readPgbenchLog adds the transactions of a pgbench log: "client_id
// transaction_no time script_no time_epoch time_us", time in microseconds.
func readPgbenchLog(name string, r *loadResult) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		if fields[2] == "failed" || fields[2] == "skipped" {
			r.Errors++
			continue
		}
		us, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			return fmt.Errorf("pgbench log %s: %q", name, sc.Text())
		}
		r.Ops++
		r.Latency.add(time.Duration(us) * time.Microsecond)
	}
	return sc.Err()
}
