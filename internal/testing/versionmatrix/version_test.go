package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paylock/paylock/internal/tools/pgserver"
)

// TestServerVersionFromAnUnreadableDirectory: run as root from a folder
// the servers' user can't enter (a clone in root's home), postgres
// --version warns on stderr first ("could not change directory"); the
// version is read all the same. It uses the postgres on this machine
// (the Debian server CI installs).
func TestServerVersionFromAnUnreadableDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the servers run as another user only then")
	}
	bin, err := pgserver.FindBinDir()
	if err != nil {
		t.Skip("no PostgreSQL server on this machine:", err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	v, err := serverVersion(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(v, ".") || strings.ContainsAny(v, " /") {
		t.Fatalf("serverVersion(%s) = %q, want a version such as 15.18", filepath.Base(bin), v)
	}
}
