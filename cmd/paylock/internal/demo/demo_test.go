package demo_test

import (
	"slices"
	"testing"

	"github.com/paylock/paylock/cmd/paylock/internal/demo"
)

func TestFeed(t *testing.T) {
	s := demo.DefaultScenario
	s.Payments = 200
	all := s.Deliveries()
	if !slices.Equal(all, s.Deliveries()) {
		t.Fatal("the same Scenario gave two different feeds: processes would not share one")
	}
	// Every delivery goes to exactly one poller.
	n := 0
	for i := range s.Pollers {
		n += len(s.Share(all, i))
	}
	if n != len(all) {
		t.Fatalf("pollers' shares hold %d deliveries, the feed %d", n, len(all))
	}
	// The feed overlaps: redeliveries, and a payment's deliveries reaching
	// several pollers.
	events := map[string]int{}
	pollersPerKey := map[string]map[int]bool{}
	for i, d := range all {
		events[d.EventID]++
		k := d.Key.String()
		if pollersPerKey[k] == nil {
			pollersPerKey[k] = map[int]bool{}
		}
		pollersPerKey[k][i%s.Pollers] = true
	}
	redelivered, shared := 0, 0
	for _, c := range events {
		if c > 1 {
			redelivered++
		}
	}
	for _, p := range pollersPerKey {
		if len(p) > 1 {
			shared++
		}
	}
	if redelivered < len(events)/3 || shared < s.Payments/2 {
		t.Fatalf("%d of %d events redelivered, %d of %d payments reach several pollers: too little overlap",
			redelivered, len(events), shared, s.Payments)
	}
	want := demo.Expected(all)
	if len(want) != s.Payments {
		t.Fatalf("Expected covers %d payments, want %d", len(want), s.Payments)
	}
}
