package citustest_test

import (
	"testing"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }
