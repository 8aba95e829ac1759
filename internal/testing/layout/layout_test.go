// Package layout holds the test that keeps the library's layer apart from
// the CLI and the test rig.
package layout

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/paylock/paylock"

// library lists the library's packages: lock, entity and payment, and the
// internal packages they are built on. Any of them may import another.
var library = []string{"lock", "entity", "payment", "internal/txn", "internal/keyqueue", "internal/schema", "internal/entityopt", "internal/english"}

// adapters are library packages that the rest of the library does not
// import, each with the one dependency of its own it may import too.
var adapters = map[string]string{
	"entity/otelentity": "go.opentelemetry.io/otel",
}

// roots are the library's public trees: every package in them must be in
// library or adapters, so a new one is checked, not overlooked.
var roots = []string{"./lock/...", "./entity/...", "./payment/..."}

// allowed reports whether a non-test file of a library package may import
// path: the standard library (std), pgx, xxhash, the library's own
// packages, and golang.org/x/sync (the key queue's semaphore).
func allowed(path string, std map[string]bool) bool {
	if std[path] {
		return true
	}
	for _, p := range library {
		if path == module+"/"+p {
			return true
		}
	}
	for _, prefix := range []string{"github.com/jackc/pgx/v5", "github.com/cespare/xxhash/v2", "golang.org/x/sync"} {
		if within(path, prefix) {
			return true
		}
	}
	return false
}

// within reports whether path is prefix or a package below it.
func within(path, prefix string) bool { return path == prefix || strings.HasPrefix(path, prefix+"/") }

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

// fileImports returns what the non-test Go files of dir import, file by
// file, whatever their build constraints: a file built only with a tag or
// on another system is part of the library too.
func fileImports(dir string) (map[string][]string, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	imports := map[string][]string{}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
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
// any tags, imports anything else: the CLI's packages, the test rig,
// another dependency. It also fails on a package in the library's trees
// that the lists above don't name.
func TestLibraryImports(t *testing.T) {
	std := map[string]bool{}
	for _, p := range goList(t, "std") {
		std[p] = true
	}
	args := []string{"-f", "{{.ImportPath}} {{.Dir}}"}
	args = append(args, roots...)
	for _, p := range library {
		args = append(args, module+"/"+p)
	}
	checked := 0
	for _, line := range slices.Compact(goList(t, args...)) {
		path, dir, _ := strings.Cut(line, " ")
		rel := strings.TrimPrefix(path, module+"/")
		extra, adapter := adapters[rel]
		if !adapter && !slices.Contains(library, rel) {
			t.Errorf("%s is in the library's trees but in neither library nor adapters: add it where it belongs", path)
			continue
		}
		imports, err := fileImports(dir)
		if err != nil {
			t.Fatal(err)
		}
		for file, paths := range imports {
			for _, imp := range paths {
				if !allowed(imp, std) && (!adapter || !within(imp, extra)) {
					t.Errorf("%s (%s) imports %s: the library may import only the standard library, pgx, xxhash, x/sync and its own packages", path, file, imp)
				}
			}
		}
		checked++
	}
	if want := len(library) + len(adapters); checked != want {
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
	got, err := fileImports(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{module + "/internal/testing/pgtest"}; len(got) != 1 || !slices.Equal(got["debug.go"], want) {
		t.Errorf("fileImports = %q; want debug.go importing %q, and no test file", got, want)
	}
}

// TestAllowed: the rule refuses what the layout keeps out of the library.
func TestAllowed(t *testing.T) {
	std := map[string]bool{"context": true}
	for path, want := range map[string]bool{
		"context":                             true,
		"github.com/jackc/pgx/v5/pgxpool":     true,
		"github.com/jackc/pgx/v5":             true,
		"github.com/cespare/xxhash/v2":        true,
		"golang.org/x/sync/semaphore":         true,
		module + "/internal/txn":              true,
		module + "/internal/testing/pgtest":   false,
		module + "/internal/tools/pgserver":   false,
		module + "/entity/otelentity":         false,
		module + "/cmd/paylock/internal/term": false,
		"github.com/jackc/pgx/v4":             false,
		"github.com/jackc/pgx/v5x":            false,
		"golang.org/x/syncx":                  false,
		"go.opentelemetry.io/otel":            false,
		"github.com/ory/dockertest/v3":        false,
		"cli/notstd":                          false, // a module path without a dot is not the standard library
	} {
		if got := allowed(path, std); got != want {
			t.Errorf("allowed(%q) = %v, want %v", path, got, want)
		}
	}
}
