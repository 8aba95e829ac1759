package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/tools/pgserver"
	"github.com/paylock/paylock/internal/tools/pgversion"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// command is one subcommand. Its run gets the parsed call and writes only to
// the call's writers.
type command struct {
	name    string
	usage   string // the arguments, for the usage line
	summary string // one line for `paylock help`
	help    string // the rest of --help, after the flags
	hidden  bool
	// noDatabase: the command never connects, so it has no --database-url.
	noDatabase bool
	// flags defines the command's flags on fs, bound to the fields of a new
	// value that it returns (a pointer to the command's flags struct); the
	// call keeps it in c.flags. May be nil.
	flags   func(fs *flag.FlagSet) any
	rewrite func([]string) []string // adjusts the arguments before parsing, may be nil
	run     func(ctx context.Context, c *call) error
	// validate checks a parsed call's arguments and flag values, touching
	// nothing; a usageError from it is exit 2. run calls it before c.cmd.run,
	// and checkCommandLine too, so the docs' command lines get the same
	// checks. May be nil.
	validate func(c *call) error
}

// call is one invocation of a command: its parsed flags and positional
// arguments, and where it writes.
type call struct {
	cmd         *command
	fs          *flag.FlagSet
	flags       any      // what cmd.flags returned: the bound flag values
	argv        []string // the arguments after the command name, as given
	args        []string // positional arguments
	databaseURL string
	stdout      io.Writer
	stderr      io.Writer
}

// commands lists the subcommands in the order `paylock help` shows them.
var commands []*command

func init() {
	commands = []*command{cmdLocks, cmdKey, cmdMigrate, cmdDedupe, cmdDemo, cmdBench, cmdDemoWorker}
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitCode ends a command with that code; the command has already said why.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// run runs the command line args (without the program name) and returns the
// exit code: 0 ok, 1 failure, 2 usage. Errors are one line on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printHelp(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c, _ := parseCall(args[1:2]); c != nil {
				printCommandHelp(stdout, c.cmd, c.fs)
				return exitOK
			}
			fmt.Fprintf(stderr, "paylock: unknown command %q; run 'paylock help'\n", args[1])
			return exitUsage
		}
		printHelp(stdout)
		return exitOK
	}
	c, err := parseCall(args)
	if c == nil {
		fmt.Fprintf(stderr, "paylock: %v; run 'paylock help'\n", err)
		return exitUsage
	}
	c.stdout, c.stderr = stdout, stderr
	if errors.Is(err, flag.ErrHelp) {
		printCommandHelp(stdout, c.cmd, c.fs)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "paylock %s: %s; run 'paylock %s --help'\n", name, term.Visible(oneLine(err.Error())), name)
		return exitUsage
	}
	if c.cmd.validate != nil {
		if err := c.cmd.validate(c); err != nil {
			return exitFor(err, c)
		}
	}
	return exitFor(c.cmd.run(ctx, c), c)
}

// parseCall parses a command line (args[0] is the command) without running
// it: it looks the command up and parses its flags, leaving the positional
// arguments in c.args. It returns a nil call for an unknown command, and
// flag.ErrHelp for --help.
func parseCall(args []string) (c *call, err error) {
	cmd := lookup(args[0])
	if cmd == nil {
		return nil, fmt.Errorf("unknown command %q", args[0])
	}
	c = &call{cmd: cmd, argv: args[1:]}
	c.fs, c.flags = newFlagSet(cmd)
	if !cmd.noDatabase {
		c.fs.StringVar(&c.databaseURL, "database-url", "", databaseURLUsage)
	}
	rest := args[1:]
	if cmd.rewrite != nil {
		rest = cmd.rewrite(rest)
	}
	c.args, err = parseInterspersed(c.fs, rest)
	return c, flagError(cmd, c.fs, rest, err)
}

// databaseURLUsage is --database-url's line in every --help that has it.
const databaseURLUsage = "PostgreSQL connection URL or keyword/value string (default: $DATABASE_URL, else the PG* variables)"

// checkCommandLine parses a command line as run would, flags included, and
// runs nothing: docs_test.go checks every command line the docs show with it.
func checkCommandLine(args []string) error {
	if len(args) == 0 {
		return errors.New("no command")
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && lookup(args[1]) == nil {
			return fmt.Errorf("unknown command %q", args[1])
		}
		return nil
	}
	c, err := parseCall(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil
	case err != nil:
		return err
	case c.cmd.validate != nil:
		return c.cmd.validate(c)
	}
	return nil
}

// exitFor reports err in one line on stderr and returns the exit code.
func exitFor(err error, c *call) int {
	name := c.cmd.name
	var ue usageError
	var code exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "paylock %s: %s; run 'paylock %s --help'\n", name, term.Visible(readOnce(name, oneLine(err.Error()))), name)
		return exitUsage
	default:
		fmt.Fprintf(c.stderr, "paylock %s: %s\n", name, term.Visible(readOnce(name, oneLine(err.Error()))))
		return exitFailure
	}
}

// errorPrefixes are the prefixes that paylock's packages put on their
// errors ("lock: acquire ...", "dedupe: merge ...").
var errorPrefixes = map[string]bool{"lock": true, "dedupe": true, "payment": true, "entity": true, "schema": true}

// readOnce drops from a message the package prefixes it already has: each
// layer of an error chain names its package, so that the command's
// "paylock dedupe: dedupe: merge 1 key ...: lock: acquire 1 key: lock:
// lock_timeout expired" would say dedupe and lock twice. A prefix is kept
// where it first appears, and the command's own name (already said by
// "paylock NAME: ") not at all.
func readOnce(name, msg string) string {
	seen := map[string]bool{name: true}
	parts := strings.Split(msg, ": ")
	out := parts[:0]
	for i, p := range parts {
		if i < len(parts)-1 && errorPrefixes[p] {
			if seen[p] {
				continue
			}
			seen[p] = true
		}
		out = append(out, p)
	}
	return strings.Join(out, ": ")
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// newFlagSet returns cmd's flag set and the value its flags are bound to.
func newFlagSet(cmd *command) (*flag.FlagSet, any) {
	fs := flag.NewFlagSet("paylock "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by run, in one line
	fs.Usage = func() {}
	var flags any
	if cmd.flags != nil {
		flags = cmd.flags(fs)
	}
	return fs, flags
}

// Go's flag package words its errors for Go programs ("flag provided but not
// defined: -x", "invalid boolean value ..."); flagError says the same in the
// CLI's words, naming flags as the docs do (--watch).
var (
	flagUndefined = regexp.MustCompile(`^flag provided but not defined: -(.*)$`)
	flagBadValue  = regexp.MustCompile(`^invalid (?:boolean )?value ("(?:[^"\\]|\\.)*") for (?:flag )?-([^:]+): (.*)$`)
	flagBadBool   = regexp.MustCompile(`^invalid boolean flag ([^:]+): (.*)$`)
	flagNoValue   = regexp.MustCompile(`^flag needs an argument: -(.*)$`)
	flagSyntax    = regexp.MustCompile(`^bad flag syntax: (.*)$`)
)

// flagError rewords an error of fs.Parse for cmd's command line (args, as
// parsed); nil and flag.ErrHelp pass unchanged.
func flagError(cmd *command, fs *flag.FlagSet, args []string, err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	msg := err.Error()
	if m := flagUndefined.FindStringSubmatch(msg); m != nil {
		if m[1] == "database-url" && cmd.noDatabase {
			return usagef("--database-url: paylock %s needs no database", cmd.name)
		}
		if cmd.usage != "" && slices.Contains(args, "-"+m[1]) && !slices.Contains(args, "--"+m[1]) {
			// "-1", "-li_9" where the command takes arguments: likely one
			// of them, not a mistyped flag
			return usagef("unknown flag -%s: an argument that begins with '-' goes after --", m[1])
		}
		return usagef("unknown flag --%s", m[1])
	}
	if m := flagBadValue.FindStringSubmatch(msg); m != nil {
		detail := m[3]
		if f := fs.Lookup(m[2]); f != nil && (detail == "parse error" || strings.HasPrefix(detail, "strconv.")) {
			if g, ok := f.Value.(flag.Getter); ok {
				switch g.Get().(type) {
				case time.Duration:
					detail = "want a duration such as 5s or 500ms"
				case int, int64, uint, uint64:
					detail = "want a whole number"
				case bool:
					detail = "want true or false"
				}
			}
		}
		return usagef("--%s %s: %s", m[2], m[1], detail)
	}
	if m := flagBadBool.FindStringSubmatch(msg); m != nil {
		return usagef("--%s: %s", m[1], m[2])
	}
	if m := flagNoValue.FindStringSubmatch(msg); m != nil {
		return usagef("--%s needs a value", m[1])
	}
	if m := flagSyntax.FindStringSubmatch(msg); m != nil {
		return usagef("malformed flag %q", m[1])
	}
	return err
}

// parseInterspersed parses flags anywhere among the positional arguments
// (`paylock locks --key payments 7 li_1 --json`); "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, nil
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, `paylock: serialize find-or-create-then-update of PostgreSQL rows with advisory locks.

Usage: paylock COMMAND [flags] [args]

Commands:
`)
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprint(w, `
Every command but key takes --database-url; without it DATABASE_URL, else the
usual PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) say where to
connect. With none of them set, demo and bench start a throwaway PostgreSQL.
Exit codes: 0 ok, 1 failure, 2 usage. Run 'paylock COMMAND --help' for more.
`)
}

// flagLine is the start of a flag's line in flag.PrintDefaults' output.
var flagLine = regexp.MustCompile(`(?m)^  -`)

func printCommandHelp(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: paylock %s [flags]", cmd.name)
	if cmd.usage != "" {
		fmt.Fprintf(w, " %s", cmd.usage)
	}
	fmt.Fprintf(w, "\n\n%s\n\nFlags:\n", cmd.summary)
	// Go's flag package lists the flags as -name; the CLI names them as the
	// rest of the help and the docs do: --name.
	var flags strings.Builder
	fs.SetOutput(&flags)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprint(w, flagLine.ReplaceAllString(flags.String(), "  --"))
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.help))
	}
}

// connString returns the connection string: --database-url, else
// DATABASE_URL, else "" (pgx then reads the PG* variables).
func (c *call) connString() string {
	if c.databaseURL != "" {
		return c.databaseURL
	}
	return os.Getenv("DATABASE_URL")
}

// databaseConfigured reports whether anything says where a database is.
func (c *call) databaseConfigured() bool {
	if c.connString() != "" {
		return true
	}
	for _, v := range []string{"PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE", "PGUSER"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// serverOrThrowaway returns the connection string of the configured database
// (see connString: "" leaves it to the PG* variables) or, when nothing is
// configured, of a throwaway PostgreSQL cluster it starts, saying so on w:
// durable settings, removed by stop. where describes the server for a
// report. demo and bench use it; every other command connects only where it
// is told. stop sets *err to the error of removing the server when *err is nil.
func (c *call) serverOrThrowaway(ctx context.Context, w io.Writer) (connString, where string, stop func(err *error), err error) {
	if c.databaseConfigured() {
		if _, err := pgxpool.ParseConfig(c.connString()); err != nil {
			return "", "", nil, c.configError(err)
		}
		return c.connString(), "the configured database", func(*error) {}, nil
	}
	fmt.Fprintln(w, "starting a throwaway PostgreSQL cluster (no database configured)...")
	srv, err := pgserver.Start(ctx, pgserver.Options{})
	if err != nil {
		return "", "", nil, fmt.Errorf("no database configured and no throwaway server: %w (%s, or install postgresql)", err, configureHint)
	}
	stop = func(err *error) {
		if serr := srv.Stop(); serr != nil && *err == nil {
			*err = fmt.Errorf("stop the throwaway server: %w", serr)
		}
	}
	where = fmt.Sprintf("a throwaway PostgreSQL cluster in %s (durable: fsync on; removed at the end)", srv.Dir)
	return srv.ConnString("postgres"), where, stop, nil
}

// configureHint says how to name a database.
const configureHint = "set --database-url or DATABASE_URL (postgres://user:password@host:5432/dbname), or PGHOST, PGPORT, PGUSER, PGDATABASE"

// poolConfig parses the connection string and names the application, so
// pg_stat_activity shows the CLI for what it is.
func (c *call) poolConfig() (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(c.connString())
	if err != nil {
		return nil, c.configError(err)
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "paylock " + c.cmd.name
	}
	return cfg, nil
}

// configError reports a connection string that does not parse: a mistake
// in the command line when --database-url gave it (exit 2), else in the
// environment, where DATABASE_URL or the PG* variables gave it (exit 1: the
// command line was fine).
func (c *call) configError(err error) error {
	switch {
	case c.databaseURL != "":
		return usagef("--database-url: %v", err)
	case os.Getenv("DATABASE_URL") != "":
		return fmt.Errorf("configuration error: DATABASE_URL does not parse: %w", err)
	}
	return fmt.Errorf("configuration error: the PG* variables (PGHOST, PGPORT, ...) do not parse: %w", err)
}

// connect opens a pool and checks that the server answers and is one paylock
// supports (internal/tools/pgversion).
func (c *call) connect(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := c.poolConfig()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		if !c.databaseConfigured() {
			return nil, fmt.Errorf("no database configured: %s; PostgreSQL's default, %s, failed: %w", configureHint, describe(cfg), err)
		}
		return nil, fmt.Errorf("connect to %s: %w", describe(cfg), err)
	}
	if err := pgversion.Check(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

func describe(cfg *pgxpool.Config) string {
	cc := cfg.ConnConfig
	return fmt.Sprintf("%s@%s:%d/%s", cc.User, cc.Host, cc.Port, cc.Database)
}

// oneLine folds a multi-line message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// noArgs is the validate of a command that takes no positional arguments.
func noArgs(c *call) error {
	if len(c.args) > 0 {
		return usagef("unexpected argument %q", c.args[0])
	}
	return nil
}

// keyFromArgs reads NAMESPACE PART... or one "namespace/part/part" string
// (lock.Key.String: a namespace can't hold a '/').
func keyFromArgs(args []string) (lock.Key, error) {
	if len(args) == 0 {
		return lock.Key{}, usagef("missing NAMESPACE [PART...]")
	}
	var k lock.Key
	if len(args) == 1 && strings.Contains(args[0], "/") {
		var err error
		if k, err = lock.ParseKey(args[0]); err != nil {
			return lock.Key{}, usagef("%v", err)
		}
		return k, nil
	}
	k = lock.NewKey(args[0], args[1:]...)
	if err := k.Validate(); err != nil {
		return lock.Key{}, usagef("%v", err)
	}
	return k, nil
}

// paymentKeyNote says, for a payments key that no payment.Key makes (a
// service id such as "07", "+7" or "0", an empty line item id...), which key
// Go's callers and the examples lock instead, or why none: its id is not
// theirs, so `paylock locks --key` with it finds nobody. "" for any other key.
func paymentKeyNote(k lock.Key) string {
	parts := k.Parts()
	if k.Namespace() != payment.Namespace || len(parts) != 2 {
		return ""
	}
	n, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return fmt.Sprintf("note: service_id %q is not a number: no payment.Key has this key", parts[0])
	}
	pk := payment.Key{ServiceID: n, LineItemID: parts[1]}
	if err := pk.Validate(); err != nil {
		return fmt.Sprintf("note: no payment.Key has this key (%v)", err)
	}
	if want := pk.LockKey(); want.ID() != k.ID() {
		return fmt.Sprintf("note: a payment's key holds its service id in canonical decimal: payment.Key{ServiceID: %d} locks %s (id %d), not this key",
			n, want, want.ID())
	}
	return ""
}

// keyFields labels a key's parts where the namespace is known: a payment's
// are service_id and line_item_id.
func keyFields(k lock.Key) map[string]string {
	parts := k.Parts()
	if k.Namespace() == payment.Namespace && len(parts) == 2 {
		return map[string]string{"service_id": parts[0], "line_item_id": parts[1]}
	}
	return nil
}

// humanKey renders a key for people: payments service_id=7 line_item_id="li_1".
// Parts are quoted with %q, which escapes control characters; a service_id
// is left bare only when it is the decimal number payment.Key makes of it.
func humanKey(k lock.Key) string {
	parts := k.Parts()
	if f := keyFields(k); f != nil {
		sid := strconv.Quote(f["service_id"])
		if n, err := strconv.ParseInt(f["service_id"], 10, 64); err == nil && strconv.FormatInt(n, 10) == f["service_id"] {
			sid = f["service_id"]
		}
		return fmt.Sprintf("%s service_id=%s line_item_id=%q", k.Namespace(), sid, f["line_item_id"])
	}
	var b strings.Builder
	b.WriteString(k.Namespace())
	for _, p := range parts {
		fmt.Fprintf(&b, " %q", p)
	}
	return b.String()
}
