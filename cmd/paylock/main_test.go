package main

import (
	"testing"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestMain runs the tests; a re-executed test binary runs the "paylock"
// worker (see demo.go) instead, as `paylock demo --processes` does.
func TestMain(m *testing.M) { pgtest.Main(m, nil) }
