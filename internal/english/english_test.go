package english

import "testing"

func TestCount(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{{0, "0 keys have"}, {1, "1 key has"}, {2, "2 keys have"}, {101, "101 keys have"}} {
		if got := Count(tt.n, "key", "keys") + " " + Has(tt.n); got != tt.want {
			t.Errorf("Count(%d) Has(%d) = %q, want %q", tt.n, tt.n, got, tt.want)
		}
	}
}
