package payment_test

import (
	"testing"

	"github.com/paylock/paylock/internal/testing/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Workers{"race": raceWorker, "citusrace": citusRaceWorker})
}
