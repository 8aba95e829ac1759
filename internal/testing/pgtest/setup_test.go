package pgtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/tools/pgversion"
)

// TestSetupRefusesServerOlderThan14: the harness, pointed at a server older
// than paylock supports, stops with pgversion's sentence instead of running
// tests that would fail on its first missing feature.
func TestSetupRefusesServerOlderThan14(t *testing.T) {
	old := OldServer(t)
	t.Setenv(EnvDatabase, old.ConnString("postgres"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stop, err := setup(ctx)
	if err == nil {
		stop()
		t.Fatal("setup accepted a server older than 14")
	}
	if !errors.Is(err, pgversion.ErrTooOld) {
		t.Fatalf("setup: %v, want pgversion.ErrTooOld", err)
	}
	t.Log(err)
}
