// Package layout holds the tests that keep the library's layers apart: the
// library imports nothing of the CLI, the tools or the test rig, and inside
// it dependencies point one way, payment → entity → lock → internal.
package layout

import (
	"fmt"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/paylock/paylock"

// public lists the library's public packages from the bottom layer up:
// each may import the ones before it and the internal ones, never one after
// it.
var public = []string{"lock", "entity", "payment"}

// machinery lists the library's internal packages, the layer below lock:
// they may import each other but no public package, save the edges in
// upward.
var machinery = []string{"internal/txn", "internal/keyqueue", "internal/schema", "internal/entityopt", "internal/english"}

// upward lists the only edges from the library's internal packages up to a
// public one, each with its reason.
var upward = map[string]string{
	"internal/schema -> lock": "payment's migration takes its advisory lock with a lock.Key (schema.MigrateKey)",
}

// adapters are library packages that the rest of the library does not
// import. Each may import the public packages, as a user would, and the
// modules of one dependency of its own (OpenTelemetry's API, not its SDK).
var adapters = map[string][]string{
	"entity/otelentity": {"go.opentelemetry.io/otel", "go.opentelemetry.io/otel/metric", "go.opentelemetry.io/otel/trace"},
}

// outside are the folders under internal/ that are not the library: the
// CLI's and the test rig's tools, and the test rig. Every other package
// under internal/ must be in machinery.
var outside = []string{"internal/tools", "internal/testing"}

// roots are the library's public trees: every package in them must be in
// public or adapters, so a new one is checked, not overlooked.
var roots = []string{"./lock/...", "./entity/...", "./payment/..."}

// external lists the modules the library may import besides the standard
// library and itself: pgx, xxhash, and golang.org/x/sync (the key queue's
// semaphore).
var external = []string{"github.com/jackc/pgx/v5", "github.com/cespare/xxhash/v2", "golang.org/x/sync"}

// check returns why a non-test file of library package from (a path
// relative to the module, as "lock") may not import path, or nil if it may.
// moduleOf returns the module an imported package belongs to: a module is
// allowed, not a path prefix (go.opentelemetry.io/otel/sdk is a module of
// its own, not part of go.opentelemetry.io/otel).
func check(from, path string, std map[string]bool, moduleOf func(string) string) error {
	if std[path] {
		return nil
	}
	rel, ours := strings.CutPrefix(path, module+"/")
	if !ours {
		m := moduleOf(path)
		if slices.Contains(external, m) {
			return nil
		}
		if slices.Contains(adapters[from], m) {
			return nil
		}
		return fmt.Errorf("%s (module %q) is another dependency: the library may import only the standard library, %s and its own packages",
			path, m, strings.Join(external, ", "))
	}
	to, toPublic := slices.Index(public, rel), slices.Contains(public, rel)
	toMachinery := slices.Contains(machinery, rel)
	if !toPublic && !toMachinery {
		return fmt.Errorf("%s is not the library (an adapter, a tool, the test rig or the CLI): the library imports only its own layers", rel)
	}
	switch {
	case adapters[from] != nil:
		if toMachinery {
			return fmt.Errorf("%s is the library's machinery: an adapter imports only the public packages, as a user would", rel)
		}
	case slices.Contains(public, from):
		if toPublic && to >= slices.Index(public, from) {
			return fmt.Errorf("%s is not below %s: dependencies point %s → internal", rel, from, strings.Join(reversed(public), " → "))
		}
	case slices.Contains(machinery, from):
		if _, ok := upward[from+" -> "+rel]; toPublic && !ok {
			return fmt.Errorf("%s is the library's machinery, the layer below every public package, and may not import %s "+
				"(the only upward edges: %s)", from, rel, strings.Join(slices.Sorted(maps.Keys(upward)), ", "))
		}
	default:
		return fmt.Errorf("%s is in none of the layout's lists", from)
	}
	return nil
}

// reversed returns a copy of s in reverse order.
func reversed(s []string) []string {
	r := slices.Clone(s)
	slices.Reverse(r)
	return r
}

// within reports whether path is prefix or a package below it.
func within(path, prefix string) bool { return path == prefix || strings.HasPrefix(path, prefix+"/") }

// modules returns a moduleOf for check: the module of each package the
// library's builds depend on, and, for a path only a file left out of them
// imports, what go list says (empty when the path is no dependency).
func modules(t *testing.T) func(string) string {
	mods := map[string]string{}
	args := append([]string{"-deps", "-f", "{{.ImportPath}} {{with .Module}}{{.Path}}{{end}}"}, roots...)
	for _, line := range goList(t, append(args, "./internal/...")...) {
		path, mod, _ := strings.Cut(line, " ")
		mods[path] = mod
	}
	return func(path string) string {
		if m, ok := mods[path]; ok {
			return m
		}
		cmd := exec.Command("go", "list", "-f", "{{with .Module}}{{.Path}}{{end}}", path)
		cmd.Dir = "../../.."
		out, _ := cmd.Output()
		mods[path] = strings.TrimSpace(string(out))
		return mods[path]
	}
}

// goList runs go list with args in the module's root and returns its lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %q: %v", args, err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// fileImports returns what the Go files of dir import, file by file,
// whatever their build constraints (a file built only with a tag or on
// another system is part of the library too): the non-test files, or with
// tests the _test.go files (of both the package and its external test
// package).
func fileImports(dir string, tests bool) (map[string][]string, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	imports := map[string][]string{}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") != tests {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			return nil, err
		}
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return nil, err
			}
			imports[filepath.Base(name)] = append(imports[filepath.Base(name)], path)
		}
	}
	return imports, nil
}

// TestLibraryImports fails when a non-test file of the library, built with
// any tags, imports against the layers: the CLI, a tool, the test rig,
// another dependency, or a library package not below its own (see check).
// It also fails on a package in the library's trees, or under internal/
// outside tools and testing, that the lists above don't name.
func TestLibraryImports(t *testing.T) {
	std := map[string]bool{}
	for _, p := range goList(t, "std") {
		std[p] = true
	}
	library := slices.Concat(public, machinery)
	for a := range adapters {
		library = append(library, a)
	}
	moduleOf := modules(t)
	args := []string{"-f", "{{.ImportPath}} {{.Dir}}"}
	args = append(args, roots...)
	args = append(args, "./internal/...")
	checked := 0
	for _, line := range goList(t, args...) {
		path, dir, _ := strings.Cut(line, " ")
		rel := strings.TrimPrefix(path, module+"/")
		if slices.ContainsFunc(outside, func(o string) bool { return within(rel, o) }) {
			continue
		}
		if !slices.Contains(library, rel) {
			t.Errorf("%s is in the library's trees but in none of public, machinery or adapters: "+
				"add it where it belongs, or move a tool to internal/tools and test rig to internal/testing", path)
			continue
		}
		imports, err := fileImports(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range slices.Sorted(maps.Keys(imports)) {
			for _, imp := range imports[file] {
				if err := check(rel, imp, std, moduleOf); err != nil {
					t.Errorf("%s (%s) imports %s: %v", rel, file, imp, err)
				}
			}
		}
		checked++
	}
	if want := len(library); checked != want {
		t.Errorf("checked %d packages, want %d", checked, want)
	}
}

// TestFileImports: a file left out of the default build by a constraint
// still has its imports read.
func TestFileImports(t *testing.T) {
	dir := t.TempDir()
	src := "//go:build paylock_debug && windows\n\npackage lock\n\nimport _ \"" + module + "/internal/testing/pgtest\"\n"
	if err := os.WriteFile(filepath.Join(dir, "debug.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "debug_test.go"), []byte("package lock\n\nimport _ \"os/exec\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := fileImports(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{module + "/internal/testing/pgtest"}; len(got) != 1 || !slices.Equal(got["debug.go"], want) {
		t.Errorf("fileImports = %q; want debug.go importing %q, and no test file", got, want)
	}
	got, err = fileImports(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"os/exec"}; len(got) != 1 || !slices.Equal(got["debug_test.go"], want) {
		t.Errorf("fileImports(tests) = %q; want debug_test.go importing %q alone", got, want)
	}
}

// TestTestsStayInTheirLayer fails when the tests of a public package (its
// _test.go files, in package x and x_test) import a public package above
// it, or a package that depends on one (internal/testing/paytest runs
// payment.Migrate): a lower layer's tests bring a fixture of their own
// (entity's items_test.go), so they test that layer alone.
func TestTestsStayInTheirLayer(t *testing.T) {
	deps := map[string][]string{}
	for _, line := range goList(t, "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "./...") {
		path, rest, _ := strings.Cut(line, " ")
		deps[path] = strings.Fields(rest)
	}
	for i, pkg := range public {
		above := public[i+1:]
		imports, err := fileImports(filepath.Join("../../..", pkg), true)
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range slices.Sorted(maps.Keys(imports)) {
			for _, imp := range imports[file] {
				if err := checkTest(pkg, imp, above, deps[imp]); err != nil {
					t.Errorf("%s (%s) imports %s: %v", pkg, file, imp, err)
				}
			}
		}
	}
}

// checkTest returns why a _test.go file of public package from may not
// import path, which depends on deps, given the public packages above
// from, or nil if it may.
func checkTest(from, path string, above, deps []string) error {
	for _, up := range above {
		switch {
		case path == module+"/"+up:
			return fmt.Errorf("%s is a layer above %s: %s's tests use a fixture of their own, not the packages built on it", up, from, from)
		case slices.Contains(deps, module+"/"+up):
			return fmt.Errorf("it depends on %s, a layer above %s: %s's tests use a fixture of their own, not the packages built on it", up, from, from)
		}
	}
	return nil
}

// TestCheckTest: the tests of a layer may import what is below it and its
// own test rig, never a layer above nor what depends on one.
func TestCheckTest(t *testing.T) {
	above := []string{"payment"}
	for _, tt := range []struct {
		path string
		deps []string
		ok   bool
	}{
		{module + "/internal/testing/pgtest", nil, true},
		{module + "/lock", []string{module + "/internal/txn"}, true},
		{module + "/examples/invoices", []string{module + "/entity", module + "/lock"}, true},
		{module + "/payment", []string{module + "/entity"}, false},
		{module + "/internal/testing/paytest", []string{module + "/entity", module + "/payment"}, false},
	} {
		err := checkTest("entity", tt.path, above, tt.deps)
		if (err == nil) != tt.ok {
			t.Errorf("checkTest(entity, %q) = %v, want ok=%v", tt.path, err, tt.ok)
		}
	}
}

// TestCheck: the rule lets each layer import what is below it and refuses
// every edge that runs up, sideways out of the library, or to another
// dependency.
func TestCheck(t *testing.T) {
	std := map[string]bool{"context": true}
	// The modules as go list would name them.
	moduleOf := func(path string) string {
		for _, m := range []string{"github.com/jackc/pgx/v5", "github.com/jackc/pgx/v4", "github.com/cespare/xxhash/v2",
			"golang.org/x/sync", "go.opentelemetry.io/otel/sdk", "go.opentelemetry.io/otel/trace", "go.opentelemetry.io/otel",
			"github.com/ory/dockertest/v3"} {
			if within(path, m) {
				return m
			}
		}
		return ""
	}
	for _, tt := range []struct {
		from, path string
		ok         bool
	}{
		{"lock", "context", true},
		{"lock", "github.com/jackc/pgx/v5/pgxpool", true},
		{"lock", "github.com/jackc/pgx/v5", true},
		{"lock", "github.com/cespare/xxhash/v2", true},
		{"internal/keyqueue", "golang.org/x/sync/semaphore", true},
		{"lock", module + "/internal/txn", true},
		{"entity", module + "/lock", true},
		{"entity", module + "/internal/keyqueue", true},
		{"payment", module + "/entity", true},
		{"payment", module + "/lock", true},
		{"payment", module + "/internal/schema", true},
		{"internal/schema", module + "/internal/txn", true},
		{"internal/schema", module + "/lock", true}, // listed in upward
		{"entity/otelentity", module + "/entity", true},
		{"entity/otelentity", "go.opentelemetry.io/otel/trace", true},

		{"lock", module + "/entity", false},    // up a layer
		{"lock", module + "/payment", false},   // up two
		{"entity", module + "/payment", false}, // up a layer
		{"lock", module + "/lock", false},      // not below itself
		{"internal/txn", module + "/lock", false},
		{"internal/keyqueue", module + "/entity", false},
		{"internal/schema", module + "/payment", false},
		{"entity/otelentity", module + "/internal/txn", false},
		{"entity", module + "/entity/otelentity", false},
		{"lock", module + "/internal/testing/pgtest", false},
		{"payment", module + "/internal/tools/baseline", false},
		{"internal/txn", module + "/internal/tools/pgserver", false},
		{"entity", module + "/cmd/paylock/internal/term", false},
		{"lock", "github.com/jackc/pgx/v4", false},
		{"lock", "github.com/jackc/pgx/v5x", false},
		{"internal/keyqueue", "golang.org/x/syncx", false},
		{"entity", "go.opentelemetry.io/otel", false}, // otelentity's alone
		{"lock", "github.com/ory/dockertest/v3", false},
		{"lock", "cli/notstd", false},                                      // a module path without a dot is not the standard library
		{"entity/otelentity", "go.opentelemetry.io/otel/sdk/trace", false}, // a module of its own below otel's path
		{"internal/newpkg", "context", true},
		{"internal/newpkg", module + "/lock", false}, // unlisted: not in the layout
	} {
		err := check(tt.from, tt.path, std, moduleOf)
		if (err == nil) != tt.ok {
			t.Errorf("check(%q, %q) = %v, want ok=%v", tt.from, tt.path, err, tt.ok)
		}
	}
}
