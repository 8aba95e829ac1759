package entity

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrAdvisoryUnsupported is returned by CheckEngine when the server's
// advisory locks would not serialize callers.
var ErrAdvisoryUnsupported = errors.New("entity: advisory locks don't serialize callers on this engine; use entity.WithStrategy(entity.RowLock)")

// Querier runs a query returning one row: a pool, a connection, a tx.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CheckEngine reports whether strategy s serializes callers on the server q
// is connected to. It refuses Advisory, with ErrAdvisoryUnsupported, on
// CockroachDB (no advisory locks), on YugabyteDB (without them, or with them
// only behind a flag), and on a Citus worker (the lock would be local to
// that node). RowLock works wherever the unique index does. Call it once at
// startup; Repository.Check does it for a repository.
func CheckEngine(ctx context.Context, q Querier, s Strategy) error {
	var version string
	var citus bool
	err := q.QueryRow(ctx, "SELECT version(), to_regproc('citus_is_coordinator') IS NOT NULL").Scan(&version, &citus)
	var citusWorker bool
	if err == nil && citus {
		err = q.QueryRow(ctx, "SELECT NOT citus_is_coordinator()").Scan(&citusWorker)
	}
	if err != nil {
		return fmt.Errorf("entity: check engine: %w", err)
	}
	return engineProblem(version, citusWorker, s)
}

func engineProblem(version string, citusWorker bool, s Strategy) error {
	if s != Advisory {
		return nil
	}
	switch {
	case strings.Contains(version, "CockroachDB"):
		return fmt.Errorf("%w (CockroachDB: %s)", ErrAdvisoryUnsupported, version)
	case strings.Contains(version, "-YB-"):
		return fmt.Errorf("%w (YugabyteDB: %s)", ErrAdvisoryUnsupported, version)
	case citusWorker:
		return fmt.Errorf("%w (a Citus worker node: its advisory locks are local to it; connect to the coordinator or use RowLock)", ErrAdvisoryUnsupported)
	}
	return nil
}

// Check runs CheckEngine for r's pool and strategy.
func (r *Repository[K, V]) Check(ctx context.Context) error {
	return CheckEngine(ctx, r.pool, r.strategy)
}
