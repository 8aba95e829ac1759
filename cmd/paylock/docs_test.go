package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
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
var commandPrefixes = []string{"paylock ", "go run ./cmd/paylock "}

func commandArgs(line string) (string, bool) {
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
// spans, where a span with [options], ... or CAPITAL placeholders is a
// synopsis.
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
		synopsis := strings.ContainsAny(span, "[") || strings.Contains(span, "...")
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
	cmd := lookup(words[0])
	if cmd == nil {
		return fmt.Errorf("unknown command %q", words[0])
	}
	if cmd.raw {
		return nil
	}
	fs := newFlagSet(cmd)
	fs.String("database-url", "", "")
	for _, w := range words[1:] {
		name, ok := strings.CutPrefix(strings.Trim(w, "[]"), "--")
		if name, _, _ = strings.Cut(name, "="); ok && fs.Lookup(name) == nil {
			return fmt.Errorf("paylock %s has no flag --%s", cmd.name, name)
		}
	}
	return nil
}

// TestDocsCommandLines runs every paylock command line of README.md and
// docs/*.md through the CLI's own parsing (flags and, for bench, its option
// checks), so a renamed or misspelt flag in the docs fails here.
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
		"```sh\npaylock dedupe --dry-run     # a comment\n```\n\n    go run ./cmd/paylock bench --workloads hot\n"
	got := docCommands("x.md", doc)
	want := []docCommand{
		{"x.md:5", "locks --json", false},
		{"x.md:10", "dedupe --dry-run     # a comment", false},
		{"x.md:13", "bench --workloads hot", false},
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
