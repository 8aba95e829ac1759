package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeNamesTheTestedVersions: README.md names the PostgreSQL versions
// the Makefile's PG_VERSIONS and PG_TOO_OLD make test-versions use, so the
// docs say what is tested, not what was once.
func TestReadmeNamesTheTestedVersions(t *testing.T) {
	makefile, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	variable := func(name string) []string {
		m := regexp.MustCompile(`(?m)^` + name + ` \?= (.*)$`).FindSubmatch(makefile)
		if m == nil {
			t.Fatalf("Makefile: no %s ?= line", name)
		}
		var versions []string
		for _, v := range strings.Fields(string(m[1])) {
			// 14.23.0-beta.17 is PostgreSQL 14.23
			versions = append(versions, strings.Join(strings.SplitN(v, ".", 3)[:2], "."))
		}
		return versions
	}
	tested := variable("PG_VERSIONS")
	list := strings.Join(tested[:len(tested)-1], ", ") + " and " + tested[len(tested)-1]
	text := strings.Join(strings.Fields(string(readme)), " ")
	for _, want := range []string{
		"against PostgreSQL " + list + ", one after another",
		"checks that " + variable("PG_TOO_OLD")[0] + " is refused",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("README.md does not say %q (from the Makefile's PG_VERSIONS and PG_TOO_OLD)", want)
		}
	}
}
