package citustest

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
)

// Pool returns a pool on url (a node's database, see DB), its config
// edited by configure if set, and closes it when t ends.
func Pool(t testing.TB, url string, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Strategy returns the strategy entity.CheckEngine accepts on pool's node:
// entity.Advisory, or entity.RowLock where CheckEngine refuses it with
// entity.ErrAdvisoryUnsupported (a Citus worker).
func Strategy(ctx context.Context, pool *pgxpool.Pool) (entity.Strategy, error) {
	err := entity.CheckEngine(ctx, pool, entity.Advisory)
	switch {
	case err == nil:
		return entity.Advisory, nil
	case errors.Is(err, entity.ErrAdvisoryUnsupported):
		return entity.RowLock, nil
	default:
		return entity.Advisory, err
	}
}
