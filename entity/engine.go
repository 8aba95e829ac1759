package entity

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/txn"
)

// ErrAdvisoryUnsupported is returned by CheckEngine when the server's
// advisory locks would not serialize callers: use WithStrategy(RowLock)
// there. The error says what the probe saw.
var ErrAdvisoryUnsupported = errors.New("entity: advisory locks don't serialize callers on this engine")

// Beginner begins a transaction on a connection of its own each time: a
// *pgxpool.Pool. CheckEngine needs two transactions open at once on two
// sessions; a single *pgx.Conn or a pgx.Tx can't give that and is refused.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// CheckEngine reports whether strategy s serializes callers on the server
// that b connects to. For Advisory it tries the locks rather than trusting a
// version string: it opens two transactions on two sessions, takes a
// transaction-scoped advisory lock on a random id in the first with
// pg_advisory_xact_lock, and requires that the second can't take it with
// pg_try_advisory_xact_lock while the first holds it and can once the first
// has rolled back: With uses both functions (the second when its key is
// cold in its Repository, the first when it must wait). An engine without advisory locks, one whose locks
// are no-ops, and sessions that land on different nodes or databases (whose
// locks don't see each other) fail the probe with ErrAdvisoryUnsupported. A
// Citus worker is refused as well, because its locks are local to that node
// even though two sessions on it block each other. RowLock works wherever
// the unique index does, so CheckEngine accepts it without a probe.
//
// CheckEngine holds two of b's connections for a few statements (behind a
// pooler, two server connections too), so a pool needs MaxConns of at least
// 2; calls in one process run one at a time, so that concurrent calls on a
// small pool can't each hold one connection and wait for a second. ctx bounds
// it. Both transactions are rolled back, so it leaves no lock behind. Call it
// once at startup, with a Repository's pool and strategy.
//
// The probe sees only the nodes its two sessions reach: behind a load
// balancer whose nodes' locks are local, both may land on one node and pass.
func CheckEngine(ctx context.Context, b Beginner, s Strategy) (err error) {
	if s != Advisory {
		return nil
	}
	defer func() {
		if err != nil && !errors.Is(err, ErrAdvisoryUnsupported) {
			err = fmt.Errorf("entity: check engine: %w", err)
		}
	}()
	if p, ok := b.(*pgxpool.Pool); ok && p.Config().MaxConns < 2 {
		return fmt.Errorf("the pool's MaxConns is %d: the probe needs two connections at once", p.Config().MaxConns)
	}
	select {
	case probing <- struct{}{}:
		defer func() { <-probing }()
	case <-ctx.Done():
		return ctx.Err()
	}
	first, err := b.Begin(ctx)
	if err != nil {
		return err
	}
	defer txn.Rollback(ctx, first.Conn().PgConn(), first)
	second, err := b.Begin(ctx)
	if err != nil {
		return err
	}
	defer txn.Rollback(ctx, second.Conn().PgConn(), second)

	if first.Conn() == second.Conn() {
		return errors.New("both transactions run on one connection: pass a pool")
	}
	var version string
	var citus bool
	if err := first.QueryRow(ctx, "SELECT version(), to_regproc('citus_is_coordinator') IS NOT NULL").Scan(&version, &citus); err != nil {
		return err
	}
	if citus {
		var worker bool
		if err := first.QueryRow(ctx, "SELECT NOT citus_is_coordinator()").Scan(&worker); err != nil {
			return err
		}
		if worker {
			return fmt.Errorf("%w (a Citus worker node: its advisory locks are local to it; connect to the coordinator or use RowLock)", ErrAdvisoryUnsupported)
		}
	}

	id := rand.Int64()
	// The first lock is taken with the function With uses, so a server that
	// refuses it (EXECUTE revoked) fails the probe as it would fail With.
	if _, err := first.Exec(ctx, txn.AcquireSQL("$1::bigint"), id); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42883" || pgErr.Code == "0A000") { // undefined_function, feature_not_supported
			return fmt.Errorf("%w (%s: %w; use RowLock)", ErrAdvisoryUnsupported, version, err)
		}
		return err
	}
	try := func(tx pgx.Tx) (bool, error) {
		var ok bool
		err := tx.QueryRow(ctx, txn.TryAcquireSQL("$1::bigint"), id).Scan(&ok)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42883" || pgErr.Code == "0A000") { // undefined_function, feature_not_supported
			return false, fmt.Errorf("%w (%s: %w; use RowLock)", ErrAdvisoryUnsupported, version, err)
		}
		return ok, err
	}
	if ok, err := try(second); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%w (%s: a lock held by one session did not stop another from taking it; use RowLock)", ErrAdvisoryUnsupported, version)
	}
	if err := first.Rollback(ctx); err != nil {
		return err
	}
	if ok, err := try(second); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w (%s: a transaction's advisory lock outlived its rollback; use RowLock)", ErrAdvisoryUnsupported, version)
	}
	return nil
}

// probing lets one CheckEngine probe run at a time in this process.
var probing = make(chan struct{}, 1)
