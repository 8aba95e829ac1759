package pgversion

import (
	"errors"
	"testing"
)

// TestCheck: the verdict comes from server_version_num, the message names
// the server by its server_version. A real server older than Minimum is
// refused in cmd/paylock's and pgtest's tests (make test-versions gives them
// one).
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		num, version string
		want         string // "" for accepted
		tooOld       bool
	}{
		{"140000", "14.0", "", false},
		{"150018", "15.18 (Debian 15.18-0+deb12u1)", "", false},
		{"180004", "18.4", "", false},
		{"190000", "19devel", "", false},
		{"139999", "13.99", "paylock needs PostgreSQL 14 or newer; this server is PostgreSQL 13.99", true},
		{"130023", "13.23", "paylock needs PostgreSQL 14 or newer; this server is PostgreSQL 13.23", true},
		{"90624", "9.6.24", "paylock needs PostgreSQL 14 or newer; this server is PostgreSQL 9.6.24", true},
		{"", "", `read the server's version: server_version_num "" is not a version number`, false},
		{"14.1", "14.1", `read the server's version: server_version_num "14.1" is not a version number`, false},
	} {
		err := check(tc.num, tc.version)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("check(%q, %q) = %q, want %q", tc.num, tc.version, got, tc.want)
		}
		if errors.Is(err, ErrTooOld) != tc.tooOld {
			t.Errorf("check(%q, %q): errors.Is(err, ErrTooOld) = %v, want %v", tc.num, tc.version, !tc.tooOld, tc.tooOld)
		}
	}
}
