package payment_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/goldenkeys"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
	"github.com/paylock/paylock/payment"
)

// The cross-language tests run the Ruby example (examples/ruby) and the
// Python snippet of docs/INTEROP.md as OS processes. In CI (CI set) a
// missing interpreter or library fails them; elsewhere it skips them.

var interpreters sync.Map // name -> string (path) or error

// interpreter returns the first of candidates that runs probe, or skips t
// (fails it in CI).
func interpreter(t *testing.T, name, install string, probe []string, candidates ...string) string {
	t.Helper()
	v, ok := interpreters.Load(name)
	if !ok {
		var tried []string
		v = fmt.Errorf("no %s with its libraries (install %s); tried %v", name, install, candidates)
		for _, c := range candidates {
			out, err := exec.Command(c, probe...).CombinedOutput()
			if err == nil {
				v = c
				break
			}
			tried = append(tried, fmt.Sprintf("%s: %v: %s", c, err, lastLine(out)))
		}
		if err, ok := v.(error); ok {
			v = fmt.Errorf("%w: %s", err, strings.Join(tried, "; "))
		}
		interpreters.Store(name, v)
	}
	if err, ok := v.(error); ok {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return v.(string)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func ruby(t *testing.T) string {
	return interpreter(t, "ruby", "ruby ruby-pg ruby-activerecord",
		[]string{"-e", `require "active_record"; require "pg"`}, "ruby")
}

// python returns a python3 with psycopg and xxhash: Debian's first (its
// python3-* packages install there), then the one on PATH.
func python(t *testing.T) string {
	return interpreter(t, "python3", "python3-psycopg python3-xxhash",
		[]string{"-c", "import psycopg, xxhash"}, "/usr/bin/python3", "python3")
}

// interopDoc is docs/INTEROP.md.
func interopDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "INTEROP.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docBlock returns the first fenced code block of lang in doc.
func docBlock(t *testing.T, doc, lang string) string {
	t.Helper()
	m := regexp.MustCompile("(?ms)^```" + lang + "\n(.*?)^```$").FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("docs/INTEROP.md has no ```%s block", lang)
	}
	return m[1]
}

// pythonSnippet writes the Python snippet of docs/INTEROP.md as the module
// paylock_interop in a new directory and returns the directory.
func pythonSnippet(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	err := os.WriteFile(filepath.Join(dir, "paylock_interop.py"), []byte(docBlock(t, interopDoc(t), "python")), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// script runs an interpreter on a script with DATABASE_URL set.
func script(ctx context.Context, dsn, interp string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, interp, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dsn, "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}

func output(t *testing.T, cmd *exec.Cmd) []string {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// TestInteropGolden: the Ruby example and the Python snippet compute the
// golden keys of testdata/keys.json: the ids through the SQL function (parts
// as an array and as separate arguments from Ruby, as an array from Python),
// Python's own xxhash, and the key strings of the paylock_key comments.
func TestInteropGolden(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	dsn := pool.Config().ConnString()
	keys := goldenkeys.Read(t)
	golden := goldenkeys.Path(t)
	check := func(t *testing.T, lines []string) {
		if len(lines) != len(keys) {
			t.Fatalf("%d lines for %d keys", len(lines), len(keys))
		}
		for i, line := range lines {
			f := strings.Fields(line)
			want := []string{fmt.Sprint(keys[i].ID), fmt.Sprint(keys[i].ID), keys[i].Key}
			if !slices.Equal(f, want) {
				t.Errorf("key %s: got %.120q, want %.120q", shortKey(keys[i].Key), f, want)
			}
		}
	}
	// Not parallel: the subtests would wait for a free slot while ctx runs.
	t.Run("Ruby", func(t *testing.T) {
		check(t, output(t, script(ctx, dsn, ruby(t), filepath.Join("..", "examples", "ruby", "poller.rb"), "golden", golden)))
	})
	t.Run("Python", func(t *testing.T) {
		check(t, output(t, script(ctx, dsn, python(t), filepath.Join("..", "examples", "python", "poller.py"),
			pythonSnippet(t), "golden", golden)))
	})
}

// TestInteropDocSnippets: the Python snippet of docs/INTEROP.md runs as
// written (its __main__ creates a payment, then updates it), and the Ruby
// code the doc shows is examples/ruby/payment.rb, which sends Go's Ensure
// statement word for word.
func TestInteropDocSnippets(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (7, 'acme')"); err != nil {
		t.Fatal(err)
	}
	py := python(t)
	snippet := filepath.Join(pythonSnippet(t), "paylock_interop.py")
	for i, want := range []string{"1250 paid True", "2500 paid False"} {
		lines := output(t, script(ctx, pool.Config().ConnString(), py, snippet))
		if got := strings.SplitN(lines[0], " ", 2); len(got) != 2 || got[1] != want {
			t.Errorf("run %d printed %q, want ID %s", i+1, lines, want)
		}
	}
	p, err := payment.NewRepository(pool).Get(ctx, payment.Key{ServiceID: 7, LineItemID: "li_123"})
	if err != nil || p.AmountCents != 2500 || p.Status != "paid" {
		t.Errorf("payment 7/li_123 = %+v, %v; want 2500 paid", p, err)
	}

	rb, err := os.ReadFile(filepath.Join("..", "examples", "ruby", "payment.rb"))
	if err != nil {
		t.Fatal(err)
	}
	if block := docBlock(t, interopDoc(t), "ruby"); block != string(rb) {
		t.Errorf("the ```ruby block of docs/INTEROP.md is not examples/ruby/payment.rb")
	}
	ensure, _ := payment.Table{}.Ensure(payment.Key{})
	if !strings.Contains(strings.Join(strings.Fields(string(rb)), " "), strings.Join(strings.Fields(ensure), " ")) {
		t.Errorf("examples/ruby/payment.rb does not send Go's Ensure statement:\n%s", ensure)
	}
}

// poller is a Ruby or Python process of the race, started and ready.
type poller struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr bytes.Buffer
}

// startPoller starts cmd and waits until it prints "ready".
func startPoller(t *testing.T, name string, cmd *exec.Cmd) *poller {
	t.Helper()
	p := &poller{name: name, cmd: cmd}
	cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdout = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := p.stdout.ReadString('\n'); line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("%s printed %q (%v) instead of ready: %s", name, line, err, p.stderr.String())
	}
	return p
}

// result is what a poller printed once released: its calls, and the
// errors of the naive code.
type result struct {
	calls  []racetest.Call
	errors map[string]int // error class -> count
}

// finish reads p's output to the end and waits for it.
func (p *poller) finish() (result, error) {
	r := result{errors: map[string]int{}}
	out, err := io.ReadAll(p.stdout)
	if werr := p.cmd.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return r, fmt.Errorf("%s: %w: %s", p.name, err, p.stderr.String())
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "ERR" {
			r.errors[f[3]]++
			continue
		}
		c, err := racetest.ParseCall(line)
		if err != nil {
			return r, fmt.Errorf("%s printed %q: %w", p.name, line, err)
		}
		r.calls = append(r.calls, c)
	}
	return r, nil
}

// release lets every poller go at once, runs also meanwhile, and returns
// what each poller printed, in order.
func release(t *testing.T, pollers []*poller, also func()) []result {
	t.Helper()
	for _, p := range pollers {
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		p.stdin.Close()
	}
	if also != nil {
		also()
	}
	results := make([]result, len(pollers))
	var errs []error
	for i, p := range pollers {
		var err error
		results[i], err = p.finish()
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return results
}

// language names the language of an op id by its prefix.
func language(op string) string {
	switch {
	case strings.HasPrefix(op, "go"):
		return "Go"
	case strings.HasPrefix(op, "rb"):
		return "Ruby"
	case strings.HasPrefix(op, "py"):
		return "Python"
	}
	return "?"
}

// TestInteropRace: Go pollers (payment.With), Ruby pollers (Payment.with of
// examples/ruby, two processes) and Python pollers (with_payment of
// docs/INTEROP.md, two processes), all released at once on the same five
// keys, leave one row per key whose amount is its number of calls, with
// every op id exactly once, one creator per key, a history linearizable per
// key, and calls of the three languages taking turns on the keys; before
// the unique index exists and with it. Before that,
// the seed's naive Ruby find-else-insert, run the same way, duplicates
// payments on a table without the unique index and fails with unique
// violations on one with it.
func TestInteropRace(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	rb, py := ruby(t), python(t)
	snippet := pythonSnippet(t)
	pool := setupRace(t, ctx)
	dsn := pool.Config().ConnString()
	rbPoller := filepath.Join("..", "examples", "ruby", "poller.rb")

	t.Run("NaiveRuby", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "CREATE TABLE naive_indexed (LIKE payments INCLUDING ALL)"); err != nil {
			t.Fatal(err)
		}
		const procs, threads, calls, keys = 2, 4, 10, 10
		// Each thread meets each key once, so a round has one chance per key
		// to race; on a loaded machine a round may see none. Up to 4 rounds,
		// on emptied tables, until the naive code has shown both failures.
		var (
			plain  []racetest.Call
			unique int
			other  = map[string]int{}
			report racetest.Report
			rounds int
		)
		for rounds = 1; rounds <= 4; rounds++ {
			if _, err := pool.Exec(ctx, "TRUNCATE naive_payments, naive_indexed"); err != nil {
				t.Fatal(err)
			}
			var pollers []*poller
			for _, table := range []string{"naive_payments", "naive_indexed"} {
				for p := range procs {
					name := fmt.Sprintf("ruby naive %s %d", table, p)
					pollers = append(pollers, startPoller(t, name, script(ctx, dsn, rb, rbPoller, "naive", table,
						fmt.Sprintf("rb%d.%d.", rounds, p), fmt.Sprint(threads), fmt.Sprint(calls), fmt.Sprint(keys))))
				}
			}
			results := release(t, pollers, nil)
			plain, unique = nil, 0
			for i, r := range results {
				if i < procs {
					plain = append(plain, r.calls...)
					addCounts(other, r.errors)
					continue
				}
				for class, n := range r.errors {
					if class == "ActiveRecord::RecordNotUnique" {
						unique += n
					} else {
						other[class] += n
					}
				}
			}
			report = audit(t, ctx, pool, "naive_payments", plain, false)
			if report.Duplicates > 0 && unique > 0 {
				break
			}
		}
		t.Logf("FIGURE naive Ruby, round %d", min(rounds, 4))
		if len(other) > 0 {
			t.Errorf("naive Ruby failed with %v, want only RecordNotUnique, and only on the indexed table", other)
		}
		t.Logf("FIGURE naive Ruby, no unique index: %v", report)
		t.Logf("FIGURE naive Ruby, unique index: %d of %d calls failed with a unique violation", unique, procs*threads*calls)
		if report.Duplicates == 0 {
			t.Error("the naive Ruby code made no duplicate payment without the unique index: the race is too weak to prove anything")
		}
		if unique == 0 {
			t.Error("the naive Ruby code hit no unique violation on the indexed table: the race is too weak to prove anything")
		}
	})

	// Before the unique index exists (a rollout's first step), the shared
	// advisory lock alone keeps the languages from creating a payment twice:
	// a client that computed another id would make duplicates here. With
	// the index, the row lock and the index would hide such a mistake.
	t.Run("BeforeIndex", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "DROP INDEX "+payment.UniqueIndex); err != nil {
			t.Fatal(err)
		}
		mixedRace(t, ctx, pool, rb, py, snippet)
		if err := payment.Migrate(ctx, pool); err != nil { // refuses to index duplicates
			t.Fatal(err)
		}
	})
	t.Run("WithIndex", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "TRUNCATE payments"); err != nil {
			t.Fatal(err)
		}
		mixedRace(t, ctx, pool, rb, py, snippet)
	})
}

// mixedRace releases Go, Ruby and Python pollers at once on the payments
// table and audits it.
func mixedRace(t *testing.T, ctx context.Context, pool *pgxpool.Pool, rb, py, snippet string) {
	const (
		keys                        = raceKeys
		goWorkers, goCalls          = 8, 30
		rbProcs, rbThreads, rbCalls = 2, 4, 15
		pyProcs, pyThreads, pyCalls = 2, 4, 15
	)
	dsn := pool.Config().ConnString()
	rbPoller := filepath.Join("..", "examples", "ruby", "poller.rb")
	pyPoller := filepath.Join("..", "examples", "python", "poller.py")
	var pollers []*poller
	for p := range rbProcs {
		pollers = append(pollers, startPoller(t, fmt.Sprintf("ruby %d", p), script(ctx, dsn, rb, rbPoller, "with", "payments",
			fmt.Sprintf("rb%d.", p), fmt.Sprint(rbThreads), fmt.Sprint(rbCalls), fmt.Sprint(keys))))
	}
	for p := range pyProcs {
		pollers = append(pollers, startPoller(t, fmt.Sprintf("python %d", p), script(ctx, dsn, py, pyPoller, snippet, "race",
			fmt.Sprintf("py%d.", p), fmt.Sprint(pyThreads), fmt.Sprint(pyCalls), fmt.Sprint(keys))))
	}
	var goCallsDone []racetest.Call
	var goErr error
	start := time.Now()
	results := release(t, pollers, func() {
		goCallsDone, goErr = racetest.Hammer(ctx, "go", goWorkers, goCalls, keys, withDo(payment.NewRepository(pool)))
	})
	elapsed := time.Since(start)
	if goErr != nil {
		t.Fatal(goErr)
	}
	all := goCallsDone
	for _, r := range results {
		all = append(all, r.calls...)
	}
	want := goWorkers*goCalls + rbProcs*rbThreads*rbCalls + pyProcs*pyThreads*pyCalls
	report := audit(t, ctx, pool, "payments", all, true)
	for _, p := range report.Problems {
		t.Error(p)
	}
	if report.Calls != want {
		t.Errorf("%d calls succeeded, want %d", report.Calls, want)
	}
	if ok, why := racetest.Linearizable(all); !ok {
		t.Error("history:", why)
	}

	// The op ids of each row, in the order the calls committed, show
	// the languages taking turns on the same payment.
	rows, err := racetest.Rows(ctx, pool, "SELECT service_id || '/' || line_item_id, amount_cents, data FROM payments")
	if err != nil {
		t.Fatal(err)
	}
	perLang := map[string]int{}
	switches := map[string]int{}
	for _, row := range rows {
		var ops []string
		if err := json.Unmarshal(row.Ops, &ops); row.Ops != nil && err != nil {
			t.Fatal(err)
		}
		for i, op := range ops {
			perLang[language(op)]++
			if i > 0 && language(ops[i-1]) != language(op) {
				switches[language(ops[i-1])+"->"+language(op)]++
			}
		}
	}
	t.Logf("FIGURE %s, Go, Ruby and Python pollers: %v in %v; calls per language %v; turns passed between languages %v", t.Name(),
		report, elapsed.Round(time.Millisecond), perLang, switches)
	for _, a := range []string{"Go", "Ruby", "Python"} {
		for _, b := range []string{"Go", "Ruby", "Python"} {
			if a != b && switches[a+"->"+b]+switches[b+"->"+a] == 0 {
				t.Errorf("%s and %s never took turns on a payment: they did not race", a, b)
			}
		}
	}
}

func addCounts(dst, src map[string]int) {
	for k, v := range src {
		dst[k] += v
	}
}
