package racetest

import (
	"strings"
	"testing"
)

func TestAuditCatchesWhatItMustCatch(t *testing.T) {
	calls := []Call{{Key: "k0", Op: "a", Created: true, ID: 1}, {Key: "k0", Op: "b", Created: false, ID: 1}, {Key: "k1", Op: "c", Created: true, ID: 2}}
	for _, tt := range []struct {
		name string
		rows []Row
		want string // in a problem; "" for none
	}{
		{"Clean", []Row{{"k0", 2, []byte(`["a","b"]`)}, {"k1", 1, []byte(`["c"]`)}}, ""},
		{"LostUpdate", []Row{{"k0", 1, []byte(`["b"]`)}, {"k1", 1, []byte(`["c"]`)}}, "op a is missing"},
		{"Duplicate", []Row{{"k0", 1, []byte(`["a"]`)}, {"k0", 1, []byte(`["b"]`)}, {"k1", 1, []byte(`["c"]`)}}, "k0: 2 rows"},
		{"AppliedTwice", []Row{{"k0", 2, []byte(`["a","b","b"]`)}, {"k1", 1, []byte(`["c"]`)}}, "op b applied 2 times"},
		{"WrongSum", []Row{{"k0", 3, []byte(`["a","b"]`)}, {"k1", 1, []byte(`["c"]`)}}, "amount 3 after 2 calls"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := Audit(calls, tt.rows, true)
			got := strings.Join(r.Problems, "; ")
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Fatalf("problems %q, want %q", got, tt.want)
			}
		})
	}
	two := append(calls, Call{Key: "k1", Op: "d", Created: true, ID: 3})
	if r := Audit(two, []Row{{"k0", 2, []byte(`["a","b"]`)}, {"k1", 2, []byte(`["c","d"]`)}}, true); len(r.Problems) != 1 ||
		!strings.Contains(r.Problems[0], "k1: 2 creators, 2 row ids seen") {
		t.Fatalf("two creators: problems %q", r.Problems)
	}
}
