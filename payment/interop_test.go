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
	"strconv"
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

// The cross-language tests run the examples of examples/ruby, examples/python
// and examples/node, which docs/INTEROP.md shows, as OS processes. In CI (CI
// set) a missing interpreter or library fails them; elsewhere it skips them.

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

// example returns the absolute path of a file under examples/.
func example(t *testing.T, elem ...string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join(append([]string{"..", "examples"}, elem...)...))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ruby(t *testing.T) string {
	return interpreter(t, "ruby", "ruby ruby-pg ruby-activerecord",
		[]string{"-e", `require "active_record"; require "pg"`}, "ruby")
}

// python returns a python3 with psycopg and xxhash: Debian's first (its
// python3-* packages are installed for it alone), then the one on PATH.
func python(t *testing.T) string {
	return interpreter(t, "python3", "python3-psycopg python3-xxhash",
		[]string{"-c", "import psycopg, xxhash"}, "/usr/bin/python3", "python3")
}

// node returns a node that finds node-postgres from examples/node.
func node(t *testing.T) string {
	return interpreter(t, "node", "nodejs npm, then npm ci in examples/node",
		[]string{"-e", fmt.Sprintf("require.resolve('pg', { paths: [%q] })", example(t, "node"))}, "node")
}

// lang is one language of the interop tests and its example.
type lang struct {
	name   string // as the test output names it
	prefix string // of the event ids its pollers apply
	interp func(*testing.T) string
	poller []string // the example poller, under examples/
}

var (
	rubyLang   = lang{"Ruby", "rb", ruby, []string{"ruby", "poller.rb"}}
	pythonLang = lang{"Python", "py", python, []string{"python", "poller.py"}}
	nodeLang   = lang{"Node.js", "js", node, []string{"node", "poller.js"}}
	languages  = []lang{rubyLang, pythonLang, nodeLang}
)

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

// script runs an interpreter with DATABASE_URL set and PGAPPNAME app (the
// application_name its connections show in pg_stat_activity).
func script(ctx context.Context, dsn, app, interp string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, interp, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dsn, "PGAPPNAME="+app, "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}

func output(t *testing.T, cmd *exec.Cmd) []string {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", strings.Join(cmd.Args, " "), err, out, stderr.String())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// TestInteropCheckKeys: each example's --check-keys compares its ids (the
// SQL function's, and Python's own xxhash) and key strings with the golden
// keys of testdata/keys.json, the ids read from id_str, and finds them
// equal; given a copy with one id and one key string wrong, it names both
// and exits 1, as it would for a client that computes them wrong. No id of
// the file prints back as written from a double (JavaScript's number).
func TestInteropCheckKeys(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	dsn := paytest.Pool(t).Config().ConnString()
	keys := goldenkeys.Read(t)
	for _, k := range keys {
		// What JSON.parse does to the id: a double, printed as JavaScript
		// prints a number (the shortest digits that read back as it).
		if s := strconv.FormatFloat(float64(k.ID), 'f', -1, 64); s == k.IDStr {
			t.Errorf("key %s: id %s prints back as written from a double: docs/INTEROP.md says none does", k.Key, k.IDStr)
		}
	}
	b, err := os.ReadFile(goldenkeys.Path(t))
	if err != nil {
		t.Fatal(err)
	}
	var broken []map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&broken); err != nil {
		t.Fatal(err)
	}
	broken[0]["id_str"] = strconv.FormatInt(keys[0].ID+1, 10)
	broken[1]["key"] = keys[1].Key + "x"
	badFile := filepath.Join(t.TempDir(), "keys.json")
	if b, err = json.Marshal(broken); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(badFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Not parallel: the subtests would wait for a free slot while ctx runs.
	for _, l := range languages {
		t.Run(l.name, func(t *testing.T) {
			interp := l.interp(t)
			lines := output(t, script(ctx, dsn, "check", interp, example(t, l.poller...), "--check-keys", goldenkeys.Path(t)))
			if want := fmt.Sprintf("%d of %d keys match", len(keys), len(keys)); len(lines) != 1 || lines[0] != want {
				t.Errorf("--check-keys printed %q, want %q", lines, want)
			}
			cmd := script(ctx, dsn, "check", interp, example(t, l.poller...), "--check-keys", badFile)
			out, err := cmd.Output()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("--check-keys on a wrong file: %v, want exit status 1\n%s", err, out)
			}
			lines = strings.Split(strings.TrimSpace(string(out)), "\n")
			want := fmt.Sprintf("%d of %d keys match", len(keys)-2, len(keys))
			if len(lines) != 3 || !strings.HasPrefix(lines[0], "key "+keys[0].Key+":") ||
				!strings.HasPrefix(lines[1], "key "+keys[1].Key+"x:") || lines[2] != want {
				t.Errorf("--check-keys on a wrong file printed\n%s\nwant the two wrong keys, then %q", out, want)
			}
		})
	}
}

// TestInteropDocSnippets: the code docs/INTEROP.md shows is the examples'
// code: the ```ruby block is examples/ruby/payment.rb, the ```js block
// examples/node/payment.js, and the ```python block the library part of
// examples/python/poller.py; each sends Go's Ensure statement (psycopg with
// its own placeholders).
func TestInteropDocSnippets(t *testing.T) {
	t.Parallel()
	doc := interopDoc(t)
	ensure, _ := payment.Table{}.Ensure(payment.Key{})
	for _, tt := range []struct{ block, file string }{
		{"ruby", "ruby/payment.rb"},
		{"js", "node/payment.js"},
		{"python", "python/poller.py"},
	} {
		b, err := os.ReadFile(example(t, tt.file))
		if err != nil {
			t.Fatal(err)
		}
		code, block := string(b), docBlock(t, doc, tt.block)
		if tt.block == "python" {
			code, _, _ = strings.Cut(code, "\n\n# The poller:")
			code += "\n"
			ensure = strings.NewReplacer("$1", "%(s)s", "$2", "%(l)s").Replace(ensure)
		}
		if block != code {
			t.Errorf("the ```%s block of docs/INTEROP.md is not examples/%s", tt.block, tt.file)
		}
		if !strings.Contains(strings.Join(strings.Fields(code), " "), strings.Join(strings.Fields(ensure), " ")) {
			t.Errorf("examples/%s does not send Go's Ensure statement:\n%s", tt.file, ensure)
		}
	}
}

// poller is an example poller (or the naive Ruby code) of the race, started
// and ready.
type poller struct {
	name   string
	lang   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr bytes.Buffer
}

// startPoller starts cmd and waits until it prints "ready".
func startPoller(t *testing.T, name, lang string, cmd *exec.Cmd) *poller {
	t.Helper()
	p := &poller{name: name, lang: lang, cmd: cmd}
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

// result is what a poller printed once released: the calls that applied an
// event, the events it skipped as already applied, and the errors of the
// naive code.
type result struct {
	calls   []racetest.Call
	skipped []string
	errors  map[string]int // error class -> count
}

// eventLog is the JSON line an example poller prints per event.
type eventLog struct {
	Event        string `json:"event"`
	Payment      string `json:"payment"`
	Skipped      string `json:"skipped"`
	PaymentID    int64  `json:"payment_id"`
	Created      bool   `json:"created"`
	AmountBefore int64  `json:"amount_before"`
	StartedNs    nanos  `json:"started_ns"`
	FinishedNs   nanos  `json:"finished_ns"`
}

// nanos is a time in Unix nanoseconds, a JSON number or, from Node.js, whose
// numbers are doubles, a decimal string.
type nanos int64

func (n *nanos) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseInt(strings.Trim(string(b), `"`), 10, 64)
	*n = nanos(v)
	return err
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
		if strings.HasPrefix(line, "{") {
			var e eventLog
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				return r, fmt.Errorf("%s printed %q: %w", p.name, line, err)
			}
			if e.Skipped != "" {
				r.skipped = append(r.skipped, e.Event)
				continue
			}
			r.calls = append(r.calls, racetest.Call{Key: e.Payment, Op: e.Event, Created: e.Created, ID: e.PaymentID,
				Read: e.AmountBefore, CallAt: int64(e.StartedNs), ReturnAt: int64(e.FinishedNs)})
			continue
		}
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

// release writes each poller its input and closes its stdin, so they all go
// at once, runs also meanwhile, and returns what each poller printed, in
// order.
func release(t *testing.T, pollers []*poller, inputs []string, also func()) []result {
	t.Helper()
	for i, p := range pollers {
		if _, err := io.WriteString(p.stdin, inputs[i]); err != nil {
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

// event is one line of an example poller's input: add 1 to the payment
// (1, li_k) and record id.
func event(id string, k int) string {
	return fmt.Sprintf(`{"event": %q, "service_id": "1", "line_item_id": "li_%d", "amount_cents": 1}`+"\n", id, k)
}

// TestInteropRace: Go pollers (payment.With) and the example pollers of
// Ruby, Python and Node.js (two processes each, four workers in each), all
// released at once on the same five payments, leave one row per payment
// whose amount is its number of calls, with every event exactly once, one
// creator per payment, a history linearizable per payment, and calls of
// every two languages taking turns on the payments; before the unique index
// exists and with it. One event per payment is delivered to a poller of
// each language: one applies it, the others skip it. Before that, the
// seed's naive Ruby find-else-insert, run the same way, duplicates payments
// on a table without the unique index and fails with unique violations on
// one with it.
func TestInteropRace(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 3*time.Minute)
	for _, l := range languages {
		l.interp(t)
	}
	pool := setupRace(t, ctx)
	dsn := pool.Config().ConnString()

	t.Run("NaiveRuby", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "CREATE TABLE naive_indexed (LIKE payments INCLUDING ALL)"); err != nil {
			t.Fatal(err)
		}
		const procs, threads, calls, keys = 2, 4, 10, 10
		naive := filepath.Join("testdata", "interop", "naive.rb")
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
			var inputs []string
			for _, table := range []string{"naive_payments", "naive_indexed"} {
				for p := range procs {
					name := fmt.Sprintf("ruby naive %s %d", table, p)
					pollers = append(pollers, startPoller(t, name, "Ruby", script(ctx, dsn, "naive", ruby(t), naive, table,
						fmt.Sprintf("rb%d.%d.", rounds, p), fmt.Sprint(threads), fmt.Sprint(calls), fmt.Sprint(keys))))
					inputs = append(inputs, "go\n")
				}
			}
			results := release(t, pollers, inputs, nil)
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
	// advisory lock alone keeps the languages from creating a payment twice
	// (TestInteropWrongID shows a wrong id there). With the index, the row
	// lock and the index would hide such a mistake.
	t.Run("BeforeIndex", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "DROP INDEX "+payment.UniqueIndex); err != nil {
			t.Fatal(err)
		}
		mixedRace(t, ctx, pool)
		if err := payment.Migrate(ctx, pool); err != nil { // refuses to index duplicates
			t.Fatal(err)
		}
	})
	t.Run("WithIndex", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "TRUNCATE payments"); err != nil {
			t.Fatal(err)
		}
		mixedRace(t, ctx, pool)
	})
}

// mixedRace releases Go pollers and every language's example pollers at once
// on the payments table and audits it.
func mixedRace(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
	const (
		keys               = raceKeys
		goWorkers, goCalls = 8, 30
		procs, workers     = 2, 4 // per language
		events             = 60   // per process
	)
	dsn := pool.Config().ConnString()
	var (
		pollers []*poller
		inputs  []string
	)
	for _, l := range languages {
		for p := range procs {
			var in strings.Builder
			for i := range events {
				in.WriteString(event(fmt.Sprintf("%s%d.%d", l.prefix, p, i), i%keys))
				if p == 0 && i == events/2 {
					for k := range keys { // delivered to every language
						in.WriteString(event(fmt.Sprintf("re.%d", k), k))
					}
				}
			}
			name := fmt.Sprintf("%s %d", l.name, p)
			pollers = append(pollers, startPoller(t, name, l.name, script(ctx, dsn, "race", l.interp(t), example(t, l.poller...), fmt.Sprint(workers))))
			inputs = append(inputs, in.String())
		}
	}
	var goCallsDone []racetest.Call
	var goErr error
	start := time.Now()
	results := release(t, pollers, inputs, func() {
		goCallsDone, goErr = racetest.Hammer(ctx, "go", goWorkers, goCalls, keys, withDo(payment.NewRepository(pool)))
	})
	elapsed := time.Since(start)
	if goErr != nil {
		t.Fatal(goErr)
	}
	all := goCallsDone
	langOf := map[string]string{}
	for _, c := range goCallsDone {
		langOf[c.Op] = "Go"
	}
	var skipped []string
	for i, r := range results {
		all = append(all, r.calls...)
		skipped = append(skipped, r.skipped...)
		for _, c := range r.calls {
			langOf[c.Op] = pollers[i].lang
		}
	}
	want := goWorkers*goCalls + len(languages)*procs*events + keys
	report := audit(t, ctx, pool, "payments", all, true)
	for _, p := range report.Problems {
		t.Error(p)
	}
	if report.Calls != want {
		t.Errorf("%d calls succeeded, want %d", report.Calls, want)
	}
	if len(skipped) != (len(languages)-1)*keys {
		t.Errorf("the pollers skipped %d events as already applied (%q), want %d: each redelivered event applied once",
			len(skipped), skipped, (len(languages)-1)*keys)
	}
	if ok, why := racetest.Linearizable(all); !ok {
		t.Error("history:", why)
	}

	// The event ids of each row, in the order the calls committed, show
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
			perLang[langOf[op]]++
			if i > 0 && langOf[ops[i-1]] != langOf[op] {
				switches[langOf[ops[i-1]]+"->"+langOf[op]]++
			}
		}
	}
	t.Logf("FIGURE %s, Go, Ruby, Python and Node.js pollers: %v in %v; calls per language %v; turns passed between languages %v", t.Name(),
		report, elapsed.Round(time.Millisecond), perLang, switches)
	names := []string{"Go"}
	for _, l := range languages {
		names = append(names, l.name)
	}
	for i, a := range names {
		for _, b := range names[i+1:] {
			if switches[a+"->"+b]+switches[b+"->"+a] == 0 {
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

// TestInteropPollerFails: an example poller given an event it can't apply
// (a service with no services row) exits with status 1 and applies none of
// the events after it.
func TestInteropPollerFails(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	dsn := pool.Config().ConnString()
	for _, l := range languages {
		t.Run(l.name, func(t *testing.T) {
			cmd := script(ctx, dsn, "fails", l.interp(t), example(t, l.poller...), "1")
			cmd.Stdin = strings.NewReader(`{"event": "ev_bad", "service_id": "99", "line_item_id": "li_bad", "amount_cents": 1}` + "\n" +
				event("ev_after_"+l.prefix, 0))
			out, err := cmd.Output()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || strings.TrimSpace(string(out)) != "ready" {
				t.Errorf("exit %v, stdout %q; want exit status 1 after printing ready alone", err, out)
			}
		})
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d payments (%v), want none", n, err)
	}
}

// TestInteropPollerRefusesNoWorkers: a poller given WORKERS that is not a
// positive whole number exits with status 2 before it reads an event,
// instead of reading them all with no worker to apply them and exiting 0.
func TestInteropPollerRefusesNoWorkers(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	dsn := pool.Config().ConnString()
	for _, l := range languages {
		t.Run(l.name, func(t *testing.T) {
			for _, workers := range []string{"0", "-1", "x"} {
				cmd := script(ctx, dsn, "noworkers", l.interp(t), example(t, l.poller...), workers)
				cmd.Stdin = strings.NewReader(event("ev_noworkers_"+l.prefix, 0))
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 2 || len(out) != 0 || !strings.Contains(stderr.String(), "WORKERS") {
					t.Errorf("WORKERS %q: exit %v, stdout %q, stderr %q; want exit status 2, nothing on stdout and a line naming WORKERS",
						workers, err, out, stderr.String())
				}
			}
		})
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d payments (%v), want none", n, err)
	}
}
