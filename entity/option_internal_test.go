package entity

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/entityopt"
)

// TestOptionOpaque: code outside the module can make only the zero Option,
// which changes nothing; entityopt.WithoutKeyQueue, which it can't import,
// turns the per-key queue off.
func TestOptionOpaque(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "host=127.0.0.1 port=1") // never connects
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if r := New[int, int](pool, nil, Option{}); r.queue == nil {
		t.Fatal("the zero Option turned the per-key queue off")
	}
	if r := New[int, int](pool, nil, entityopt.WithoutKeyQueue.(Option)); r.queue != nil {
		t.Fatal("entityopt.WithoutKeyQueue left the per-key queue on")
	}
}
