// Package layout holds the test that keeps the library's layer apart from
// the CLI and the test rig.
package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/paylock/paylock"

// library lists the library's packages: lock, entity and payment, and the
// internal packages they are built on.
var library = []string{"lock", "entity", "payment", "internal/txn", "internal/keyqueue", "internal/schema", "internal/entityopt"}

// allowed reports whether a non-test file of the library may import path:
// the standard library, pgx, xxhash, the library's own packages, and
// golang.org/x/sync (the key queue's semaphore).
func allowed(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	if !strings.Contains(first, ".") {
		return true // the standard library
	}
	for _, p := range library {
		if path == module+"/"+p {
			return true
		}
	}
	for _, prefix := range []string{"github.com/jackc/pgx/v5", "github.com/cespare/xxhash/v2", "golang.org/x/sync/"} {
		if path == prefix || strings.HasPrefix(path, strings.TrimSuffix(prefix, "/")+"/") {
			return true
		}
	}
	return false
}

// TestLibraryImports fails when a non-test file of the library imports
// anything else: the CLI's packages, the test rig, another dependency.
func TestLibraryImports(t *testing.T) {
	args := []string{"list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`}
	for _, p := range library {
		args = append(args, module+"/"+p)
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(library) {
		t.Fatalf("go list listed %d packages, want %d:\n%s", len(lines), len(library), out)
	}
	for _, line := range lines {
		fields := strings.Fields(line)
		for _, imp := range fields[1:] {
			if !allowed(imp) {
				t.Errorf("%s imports %s: the library may import only the standard library, pgx, xxhash, x/sync and its own packages", fields[0], imp)
			}
		}
	}
}

// TestAllowed: the rule refuses what the layout keeps out of the library.
func TestAllowed(t *testing.T) {
	for path, want := range map[string]bool{
		"context":                             true,
		"github.com/jackc/pgx/v5/pgxpool":     true,
		"github.com/jackc/pgx/v5":             true,
		"github.com/cespare/xxhash/v2":        true,
		module + "/internal/txn":              true,
		module + "/internal/testing/pgtest":   false,
		module + "/internal/pgserver":         false,
		module + "/cmd/paylock/internal/term": false,
		"github.com/jackc/pgx/v4":             false,
		"github.com/jackc/pgx/v5x":            false,
		"go.opentelemetry.io/otel":            false,
		"github.com/ory/dockertest/v3":        false,
	} {
		if got := allowed(path); got != want {
			t.Errorf("allowed(%q) = %v, want %v", path, got, want)
		}
	}
}
