package entity

import (
	"errors"
	"testing"
)

func TestEngineProblem(t *testing.T) {
	for _, tt := range []struct {
		version     string
		citusWorker bool
		strategy    Strategy
		refused     bool
	}{
		{"PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu", false, Advisory, false},
		{"CockroachDB CCL v24.1.0 (x86_64-pc-linux-gnu, built 2024/05/15)", false, Advisory, true},
		{"CockroachDB CCL v24.1.0 (x86_64-pc-linux-gnu, built 2024/05/15)", false, RowLock, false},
		{"PostgreSQL 11.2-YB-2.18.0.0-b0 on x86_64-pc-linux-gnu", false, Advisory, true},
		{"PostgreSQL 16.2 on x86_64-pc-linux-gnu", true, Advisory, true},
		{"PostgreSQL 16.2 on x86_64-pc-linux-gnu", true, RowLock, false},
	} {
		err := engineProblem(tt.version, tt.citusWorker, tt.strategy)
		if refused := errors.Is(err, ErrAdvisoryUnsupported); refused != tt.refused {
			t.Errorf("%q citus worker %v %v: %v, want refused %v", tt.version, tt.citusWorker, tt.strategy, err, tt.refused)
		}
	}
}
