package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// docFiles are the documents whose command lines and captured output the
// tests below keep true.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs/*.md found from %s: %v", must(os.Getwd()), err)
	}
	return append([]string{"../../README.md"}, files...)
}

func must[T any](v T, _ error) T { return v }

// docCommand is one `paylock ...` command line found in a document.
type docCommand struct {
	where    string // file:line
	text     string // as written
	synopsis bool   // a usage synopsis ([--flag], NAMESPACE, PART...), not a runnable line
}

var (
	fence      = regexp.MustCompile("^\\s*```")
	inlineCode = regexp.MustCompile("`([^`]+)`")
	// placeholder is a synopsis word: NAMESPACE, PART..., N, NS.
	placeholder = regexp.MustCompile(`^[A-Z][A-Z_]*(\.\.\.)?$`)
)

// commandPrefixes start a command line; what follows is paylock's args.
var commandPrefixes = []string{"paylock ", "./paylock ", "go run ./cmd/paylock ", "go run ./cmd/paylock/ "}

// envAssignment is a NAME=value word before a command.
var envAssignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=\S*\s+`)

func commandArgs(line string) (string, bool) {
	for envAssignment.MatchString(line) {
		line = envAssignment.ReplaceAllString(line, "")
	}
	for _, p := range commandPrefixes {
		if rest, ok := strings.CutPrefix(line, p); ok {
			return rest, true
		}
	}
	return "", false
}

// docCommands finds the paylock command lines of a markdown document: in a
// fenced block, the `$ ` lines when the block has any (the rest is output),
// else every line; outside blocks, indented code lines and inline code
// spans, where a span with [options], ... or CAPITAL placeholders, or only a
// command's name, is a synopsis.
func docCommands(name, text string) []docCommand {
	var cmds []docCommand
	lines := strings.Split(text, "\n")
	var prose strings.Builder // the text outside fenced blocks, for inline spans
	proseLine := []int{}      // prose byte offset -> line number, per line
	add := func(i int, s string, synopsis bool) {
		if rest, ok := commandArgs(strings.TrimSpace(s)); ok {
			cmds = append(cmds, docCommand{where: fmt.Sprintf("%s:%d", name, i+1), text: rest, synopsis: synopsis})
		}
	}
	for i := 0; i < len(lines); i++ {
		if !fence.MatchString(lines[i]) {
			if strings.HasPrefix(lines[i], "    ") {
				add(i, lines[i], false)
			}
			proseLine = append(proseLine, prose.Len())
			prose.WriteString(lines[i] + "\n")
			continue
		}
		start := i + 1
		for i++; i < len(lines) && !fence.MatchString(lines[i]); i++ {
		}
		block := lines[start:min(i, len(lines))]
		prompted := false
		for _, l := range block {
			prompted = prompted || strings.HasPrefix(l, "$ ")
		}
		for j, l := range block {
			if rest, ok := strings.CutPrefix(l, "$ "); ok {
				add(start+j, rest, false)
			} else if !prompted {
				add(start+j, l, false)
			}
		}
		proseLine = append(proseLine, prose.Len())
		prose.WriteString("\n") // keeps prose and document lines aligned
		for range block {
			proseLine = append(proseLine, prose.Len())
			prose.WriteString("\n")
		}
		if i < len(lines) {
			proseLine = append(proseLine, prose.Len())
			prose.WriteString("\n")
		}
	}
	p := prose.String()
	for _, m := range inlineCode.FindAllStringSubmatchIndex(p, -1) {
		span := strings.Join(strings.Fields(p[m[2]:m[3]]), " ")
		line := 0
		for line+1 < len(proseLine) && proseLine[line+1] <= m[0] {
			line++
		}
		// `paylock key` alone in prose names the command: a synopsis.
		synopsis := strings.ContainsAny(span, "[") || strings.Contains(span, "...") || len(strings.Fields(span)) == 2
		for _, w := range strings.Fields(span) {
			synopsis = synopsis || placeholder.MatchString(w)
		}
		add(line, span, synopsis)
	}
	return cmds
}

// shellWords splits a command line as sh would, without expansions: quotes
// and backslashes are honoured, $VAR stays as written, # starts a comment.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	in, quote := false, rune(0)
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case quote == '"':
			switch {
			case r == '"':
				quote = 0
			case r == '\\' && i+1 < len(rs) && strings.ContainsRune(`"\$`+"`", rs[i+1]):
				i++
				w.WriteRune(rs[i])
			default:
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			w.WriteRune(rs[i])
			in = true
		case unicode.IsSpace(r):
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		case r == '#' && !in:
			i = len(rs)
		default:
			w.WriteRune(r)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if in {
		words = append(words, w.String())
	}
	return words, nil
}

// checkSynopsis checks a usage synopsis: the command exists and every
// --flag it names is one of the command's flags.
func checkSynopsis(words []string) error {
	if len(words) == 0 || words[0] == "..." || placeholder.MatchString(words[0]) {
		return nil
	}
	c, err := parseCall(words[:1])
	if c == nil {
		return err
	}
	cmd, fs := c.cmd, c.fs
	for _, w := range words[1:] {
		name, ok := strings.CutPrefix(strings.Trim(w, "[]"), "--")
		if name, _, _ = strings.Cut(name, "="); ok && fs.Lookup(name) == nil {
			return fmt.Errorf("paylock %s has no flag --%s", cmd.name, name)
		}
	}
	return nil
}

// TestDocsCommandLines runs every paylock command line of README.md and
// docs/*.md through the CLI's own parsing and the checks run makes before it
// connects (flags, arguments, flag values; bench's option checks), so a
// renamed or misspelt flag or a refused value in the docs fails here.
func TestDocsCommandLines(t *testing.T) {
	t.Parallel()
	seen := map[string]int{}
	n := 0
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range docCommands(strings.TrimPrefix(file, "../../"), string(text)) {
			n++
			words, err := shellWords(c.text)
			if err == nil && c.synopsis {
				err = checkSynopsis(words)
			} else if err == nil {
				err = checkCommandLine(words)
			}
			if err != nil {
				t.Errorf("%s: `paylock %s`: %v", c.where, c.text, err)
			}
			if len(words) > 0 {
				seen[words[0]]++
			}
		}
	}
	// The extraction itself can rot: these commands are in the docs.
	for _, cmd := range []string{"locks", "key", "migrate", "dedupe", "demo", "bench"} {
		if seen[cmd] == 0 {
			t.Errorf("no `paylock %s` command line found in the docs: is the extraction broken?", cmd)
		}
	}
	t.Logf("%d command lines checked: %v", n, seen)
}

func TestDocCommandsExtraction(t *testing.T) {
	doc := "Run `paylock key\npayments/7/li_123` or `paylock key NAMESPACE PART...`.\n\n" +
		"```\n$ paylock locks --json\npaylock locks: output, not a command\n```\n\n" +
		"```sh\npaylock dedupe --dry-run     # a comment\nDATABASE_URL=postgres:///shop ./paylock locks --json\n```\n\n    go run ./cmd/paylock bench --workloads hot\n"
	got := docCommands("x.md", doc)
	want := []docCommand{
		{"x.md:5", "locks --json", false},
		{"x.md:10", "dedupe --dry-run     # a comment", false},
		{"x.md:11", "locks --json", false},
		{"x.md:14", "bench --workloads hot", false},
		{"x.md:1", "key payments/7/li_123", false},
		{"x.md:2", "key NAMESPACE PART...", true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("docCommands =\n%v\nwant\n%v", got, want)
	}
	words, err := shellWords(`migrate --database-url "$LEGACY_URL" 'a b'\ c # comment`)
	if err != nil || fmt.Sprintf("%q", words) != `["migrate" "--database-url" "$LEGACY_URL" "a b c"]` {
		t.Errorf("shellWords = %q, %v", words, err)
	}
	if err := checkCommandLine([]string{"bench", "--workload", "hot"}); err == nil {
		t.Error("bench --workload (not a flag) parsed")
	}
	if err := checkCommandLine([]string{"locks", "--jsn"}); err == nil {
		t.Error("locks --jsn (not a flag) parsed")
	}
}

// TestCheckCommandLineRefusesUsageErrors: a command line the CLI refuses
// with exit 2 (usage) without touching a database must not pass the docs'
// check either — arguments and flag values, not only flag names.
func TestCheckCommandLineRefusesUsageErrors(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing may connect: a usage error is found before that
	for _, line := range []string{
		"migrate stray", "key", "locks --key", "locks stray", "locks --watch 5x",
		"dedupe --batch 0", "dedupe --sample -1", "dedupe stray",
		"demo --pollers 0", "demo --payments 0", "demo --work -1ms", "demo stray",
	} {
		args := strings.Fields(line)
		if code, _, stderr := paylock(ctx, append(args, "--database-url", "postgres://nobody@127.0.0.1:1/x")...); code != exitUsage {
			t.Errorf("paylock %s: exit %d (%s), want %d: not a usage error, the case is wrong", line, code, strings.TrimSpace(stderr), exitUsage)
		}
		if err := checkCommandLine(args); err == nil {
			t.Errorf("checkCommandLine(%q) = nil, but paylock refuses it with a usage error", line)
		}
	}
}

// docBlock is a fenced code block of a document: its lines between the
// fences, and where they are in the document's lines.
type docBlock struct {
	start, end int // lines[start:end] is the content
	lines      []string
}

// fencedBlock returns the first fenced block of lines whose content
// satisfies match.
func fencedBlock(lines []string, match func(content []string) bool) (docBlock, bool) {
	for i := 0; i < len(lines); i++ {
		if !fence.MatchString(lines[i]) {
			continue
		}
		start := i + 1
		for i++; i < len(lines) && !fence.MatchString(lines[i]); i++ {
		}
		if b := (docBlock{start: start, end: i, lines: lines[start:min(i, len(lines))]}); match(b.lines) {
			return b, true
		}
	}
	return docBlock{}, false
}

func firstLineIs(s string) func([]string) bool {
	return func(l []string) bool { return len(l) > 0 && l[0] == s }
}

// relabel replaces what changes from one capture to the next: each pid by
// its order of first appearance (so who blocks whom still has to match),
// then times, durations, the database name and ages in JSON.
func relabel(s string) string {
	pids := map[string]string{}
	for _, m := range regexp.MustCompile(`(?:\bpid |"pid": )(\d+)`).FindAllStringSubmatch(s, -1) {
		if _, ok := pids[m[1]]; !ok {
			pids[m[1]] = fmt.Sprintf("P%d", len(pids)+1)
		}
	}
	s = regexp.MustCompile(`\b\d+\b`).ReplaceAllStringFunc(s, func(n string) string {
		if p, ok := pids[n]; ok {
			return p
		}
		return n
	})
	for _, r := range []struct{ re, with string }{
		{`^database \S+ at [^:]+:\d\d:\d\dZ`, "database DB at TIME"},
		{`"database": "[^"]*"`, `"database": "DB"`},
		{`"taken_at": "[^"]*"`, `"taken_at": "TIME"`},
		{`"(xact_age_s|waiting_s)": [\d.]+`, `"$1": N`},
		{`\b\d+(\.\d+)?(ns|µs|ms|s|m)\b`, "DUR"},
	} {
		s = regexp.MustCompile("(?m)"+r.re).ReplaceAllString(s, r.with)
	}
	return s
}

// demoTable reads the demo's table, row by row, leaving out what varies
// from run to run: how wrong the naive column came out this time, and the
// speeds. What the seeded feed fixes (events, payments, the expected
// balance) and paylock's column must match.
func demoTable(s string) string {
	naiveVaries := []string{"rows created", "duplicate rows", "payments with a wrong amount", "balance found", "difference", "exact"}
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		m := regexp.MustCompile(`^(\S.*?)\s{2,}(\S+)\s+(\S+)$`).FindStringSubmatch(l)
		if m == nil {
			fmt.Fprintf(&b, "%s\n", strings.Join(strings.Fields(l), " "))
			continue
		}
		label, naive, paylock := m[1], m[2], m[3]
		if slices.Contains(naiveVaries, label) {
			naive = "N"
		}
		if label == "ops/s" {
			naive, paylock = "N", "N"
		}
		fmt.Fprintf(&b, "%s | %s | %s\n", label, naive, paylock)
	}
	return b.String()
}

// capturedBlock compares a document's block with what the CLI printed
// (got), after relabel; with -update it writes got into the document where
// they differ. prompt, when not empty, is the block's first line ("$ paylock
// ..."), kept as it is.
func capturedBlock(t *testing.T, doc *[]string, name string, match func([]string) bool, prompt string, got []string) {
	t.Helper()
	capturedBlockBy(t, doc, name, match, prompt, got, relabel)
}

// capturedBlockBy is capturedBlock comparing after norm instead of relabel.
func capturedBlockBy(t *testing.T, doc *[]string, name string, match func([]string) bool, prompt string, got []string, norm func(string) string) {
	t.Helper()
	b, ok := fencedBlock(*doc, match)
	if !ok {
		t.Errorf("%s: no block found for %q", name, strings.Join(got[:1], ""))
		return
	}
	want := b.lines
	if prompt != "" {
		want, got = want[1:], append([]string{prompt}, got...)
	}
	out := got
	if prompt != "" {
		out = got[1:]
	}
	if g, w := norm(strings.Join(out, "\n")), norm(strings.Join(want, "\n")); g == w {
		return // pids and timings are left as captured before
	} else if *update {
		*doc = slices.Concat((*doc)[:b.start], got, (*doc)[b.end:])
	} else {
		t.Errorf("%s:%d: this block is not what the CLI prints today (go test -run TestDocsCaptured -update ./cmd/paylock/ rewrites it)\nCLI prints:\n%s\ndoc has:\n%s",
			name, b.start+1, strings.Join(out, "\n"), strings.Join(want, "\n"))
	}
}

func outputLines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }

func hasPrefix(p string) func([]string) bool {
	return func(l []string) bool { return len(l) > 0 && strings.HasPrefix(l[0], p) }
}

// TestDocsCaptured regenerates the output docs/CLI.md and README.md show as
// captured — the help text, `paylock key`, `paylock migrate` on an empty
// database, README's `paylock demo` table (see demoTable for what may vary),
// and `paylock locks` (text and
// JSON) while pollers hold and await payments through payment.Repository.With
// — and fails when a document differs from what the CLI prints today in
// anything but pids, times, durations and the database name. -update
// rewrites the blocks from this run.
func TestDocsCaptured(t *testing.T) {
	ctx := pgtest.Context(t, 20*time.Second)
	const cliPath, readmePath = "../../docs/CLI.md", "../../README.md"
	cli := outputLines(string(must(os.ReadFile(cliPath))))
	readme := outputLines(string(must(os.ReadFile(readmePath))))
	if len(cli) < 2 || len(readme) < 2 {
		t.Fatal("docs not found")
	}

	capturedBlock(t, &cli, "docs/CLI.md", hasPrefix("paylock: serialize"), "", outputLines(mustRun(t, ctx, "help")))
	capturedBlock(t, &cli, "docs/CLI.md", firstLineIs("$ paylock key payments 7 li_123"), "$ paylock key payments 7 li_123",
		outputLines(mustRun(t, ctx, "key", "payments", "7", "li_123")))

	const migratePrompt = `$ paylock migrate --database-url "$NEW_URL"`
	capturedBlock(t, &cli, "docs/CLI.md", firstLineIs(migratePrompt), migratePrompt,
		outputLines(mustRun(t, ctx, "migrate", "--database-url", pgtest.DB(t))))

	url := pgtest.DB(t)
	text, jsonOut := captureLocks(t, ctx, url)
	// The database's name changes with every run; the docs call it shop.
	db := regexp.MustCompile(`^database (\S+) at`).FindStringSubmatch(text)[1]
	text = strings.Replace(text, "database "+db+" at", "database shop at", 1)
	jsonOut = strings.Replace(jsonOut, `"database": "`+db+`"`, `"database": "shop"`, 1)

	capturedBlock(t, &cli, "docs/CLI.md", firstLineIs("$ paylock locks"), "$ paylock locks", outputLines(text))
	const jsonPrompt = "$ paylock locks --json --key payments 7 li_123"
	capturedBlock(t, &cli, "docs/CLI.md", firstLineIs(jsonPrompt), jsonPrompt, outputLines(jsonOut))

	// The waiter's statement, as pg_stat_activity shows it.
	r := decodeLocks(t, jsonOut)
	if len(r.Locks) != 1 || len(r.Locks[0].Waiters) == 0 {
		t.Fatalf("--json --key payments 7 li_123: %s", jsonOut)
	}
	capturedBlock(t, &cli, "docs/CLI.md", func(l []string) bool { return len(l) == 1 && strings.Contains(l[0], "/*paylock_key=") },
		"", []string{r.Locks[0].Waiters[0].Query})

	// README shows that one payment's section of the text output.
	var section []string
	in := false
	for _, l := range outputLines(text) {
		if strings.HasPrefix(l, `payments service_id=7 line_item_id="li_123"`) {
			in = true
		}
		if in && l == "" {
			break
		}
		if in {
			section = append(section, l)
		}
	}
	capturedBlock(t, &readme, "README.md", hasPrefix(`payments service_id=7 line_item_id="li_123"`), "", section)

	// README's demo table: `paylock demo` as `make demo` runs it, on the
	// test server. Its 6,985 deliveries take seconds, more under -race on a
	// busy machine: the bound is for a hang only.
	demoCtx := pgtest.Context(t, 10*time.Minute)
	demoOut := outputLines(mustRun(t, demoCtx, "demo", "--database-url", pgtest.DB(t)))
	i := slices.IndexFunc(demoOut, func(l string) bool { return strings.Contains(l, "naive find-then-create     paylock") })
	j := slices.IndexFunc(demoOut, func(l string) bool { return strings.HasPrefix(l, "exact ") })
	if i < 0 || j < i {
		t.Fatalf("no table in the demo's output:\n%s", strings.Join(demoOut, "\n"))
	}
	capturedBlockBy(t, &readme, "README.md", func(l []string) bool { return len(l) > 1 && strings.HasPrefix(l[1], "events handled ") },
		"", demoOut[i:j+1], demoTable)

	if *update {
		for path, lines := range map[string][]string{cliPath: cli, readmePath: readme} {
			if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// captureLocks sets up what docs/CLI.md describes — poller-1 holds payment
// 7/li_123 inside With with poller-2 and poller-3 queued behind it; poller-4
// holds 8/li_9 while its fn waits for a row an admin-console session has
// locked, with poller-5 queued; poller-6 holds 8/li_456 with nobody waiting;
// a reporting-job holds an int4 advisory lock — and returns what `paylock
// locks` and `paylock locks --json --key payments 7 li_123` print.
func captureLocks(t *testing.T, ctx context.Context, url string) (text, jsonOut string) {
	setupPool := poolFor(t, ctx, url, "setup")
	if err := payment.Migrate(ctx, setupPool); err != nil {
		t.Fatal(err)
	}
	if _, err := setupPool.Exec(ctx, "INSERT INTO services VALUES (7, 'acme'), (8, 'globex')"); err != nil {
		t.Fatal(err)
	}
	// Outside a transaction: pg_stat_activity is read once per transaction.
	monitor, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { monitor.Close(context.Background()) })
	release := make(chan struct{})
	var g errgroup.Group
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
		g.Wait()
	})
	poller := func(n int, k payment.Key, fn func(context.Context, pgx.Tx) error) {
		repo := payment.NewRepository(poolFor(t, ctx, url, fmt.Sprintf("poller-%d", n)))
		g.Go(func() error {
			err := repo.With(ctx, k, func(ctx context.Context, tx pgx.Tx, _ *payment.Payment) error { return fn(ctx, tx) })
			if err != nil {
				t.Logf("poller-%d: %v", n, err)
			}
			return err
		})
	}
	hold := func(ctx context.Context, _ pgx.Tx) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	held := func(k payment.Key) {
		t.Helper()
		waitFor(t, ctx, monitor, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
			AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1`, k.LockKey().ID())
	}
	k1, k2, k3 := payment.Key{ServiceID: 7, LineItemID: "li_123"}, payment.Key{ServiceID: 8, LineItemID: "li_9"}, payment.Key{ServiceID: 8, LineItemID: "li_456"}

	reporting := openSession(t, ctx, url, "reporting-job")
	if _, err := reporting.tx.Exec(ctx, "SELECT pg_advisory_xact_lock(1001, 42)"); err != nil {
		t.Fatal(err)
	}
	poller(1, k1, hold)
	held(k1)
	poller(2, k1, hold)
	waitWaiters(t, ctx, monitor, k1.LockKey().ID(), 1)
	poller(3, k1, hold)
	waitWaiters(t, ctx, monitor, k1.LockKey().ID(), 2)

	admin := openSession(t, ctx, url, "admin-console")
	if _, err := admin.tx.Exec(ctx, "UPDATE services SET name = 'globex inc' WHERE id = 8"); err != nil {
		t.Fatal(err)
	}
	poller(4, k2, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE services SET name = name WHERE id = 8")
		return err
	})
	waitFor(t, ctx, monitor, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'poller-4' AND wait_event_type = 'Lock'`)
	poller(5, k2, hold)
	waitWaiters(t, ctx, monitor, k2.LockKey().ID(), 1)
	poller(6, k3, hold)
	held(k3)

	time.Sleep(300 * time.Millisecond) // waits long enough to read
	text = mustRun(t, ctx, "locks", "--database-url", url)
	jsonOut = mustRun(t, ctx, "locks", "--json", "--key", "payments", "7", "li_123", "--database-url", url)

	close(release)
	admin.tx.Rollback(ctx)
	reporting.tx.Rollback(ctx)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return text, jsonOut
}

func poolFor(t *testing.T, ctx context.Context, url, app string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// waitFor blocks until query (a count, with args) returns at least 1.
func waitFor(t *testing.T, ctx context.Context, conn *pgx.Conn, query string, args ...any) {
	t.Helper()
	for {
		var n int
		if err := conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		select {
		case <-ctx.Done():
			rows, _ := conn.Query(context.Background(), "SELECT application_name, state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), query FROM pg_stat_activity WHERE datname = current_database()")
			all, _ := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ App, State, WT, WE, Q string }])
			t.Fatalf("never true: %s\nactivity: %+v", query, all)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestREADMEDedupeExcerpt: README's `paylock dedupe --dry-run` is an excerpt
// of the run docs/CLI.md shows; each line but the "..." must be that run's.
func TestREADMEDedupeExcerpt(t *testing.T) {
	t.Parallel()
	readme := outputLines(string(must(os.ReadFile("../../README.md"))))
	cli := outputLines(string(must(os.ReadFile("../../docs/CLI.md"))))
	excerpt, ok := fencedBlock(readme, hasPrefix("payments: "))
	if !ok {
		t.Fatal("README.md: no `paylock dedupe --dry-run` block")
	}
	run, ok := fencedBlock(cli, firstLineIs(`$ paylock dedupe --dry-run --database-url "$LEGACY_URL"`))
	if !ok {
		t.Fatal("docs/CLI.md: no `paylock dedupe --dry-run` block")
	}
	for i, l := range excerpt.lines {
		if strings.TrimSpace(l) == "..." {
			continue
		}
		if i+1 >= len(run.lines) || run.lines[i+1] != l {
			t.Errorf("README.md:%d: %q is not line %d of docs/CLI.md's dry run", excerpt.start+i+1, l, i+1)
		}
	}
}
