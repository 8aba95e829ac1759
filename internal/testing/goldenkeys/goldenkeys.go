// Package goldenkeys reads the golden lock keys of the repository's
// testdata/keys.json, shared by the Go, SQL, Ruby, Python and Node.js tests:
// each entry is a key's namespace and parts, its 64-bit id (as a JSON number
// and, for readers whose numbers are doubles, as a decimal string) and its
// string form.
package goldenkeys

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Key is one entry of testdata/keys.json.
type Key struct {
	Namespace string   `json:"namespace"`
	Parts     []string `json:"parts"`
	ID        int64    `json:"id"`
	// IDStr is ID in decimal: JavaScript's JSON.parse rounds every id of
	// the file to a double, so a Node.js client reads this one.
	IDStr string `json:"id_str"`
	Key   string `json:"key"` // lock.Key.String
}

// Path returns the absolute path of testdata/keys.json in the module that
// holds the working directory (a test runs in its package's directory).
func Path(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata", "keys.json")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("goldenkeys: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Read returns the golden keys, failing t if the file can't be read.
func Read(t testing.TB) []Key {
	t.Helper()
	b, err := os.ReadFile(Path(t))
	if err != nil {
		t.Fatal(err)
	}
	var keys []Key
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatalf("testdata/keys.json: %v", err)
	}
	for _, k := range keys {
		if k.IDStr != strconv.FormatInt(k.ID, 10) {
			t.Fatalf("testdata/keys.json: key %q: id_str %q is not id %d", k.Key, k.IDStr, k.ID)
		}
	}
	return keys
}
