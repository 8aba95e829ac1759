package entity_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
)

// A lone caller under group commit runs exactly as without the option.

// TestGroupCommitLoneCallerWire: a lone caller sends exactly what it sends
// without group commit: the same messages, byte for byte in length, in the
// same number of writes.
func TestGroupCommitLoneCallerWire(t *testing.T) {
	t.Parallel()
	type wire struct{ writes, written atomic.Int64 }
	run := func(opts ...entity.Option) (writes, written int64) {
		var w wire
		pool, ctx := itemsPool(t, func(c *pgxpool.Config) {
			c.MaxConns = 1
			// No ping of a connection idle for a second: a busy machine's
			// pauses would add writes to one run and not the other.
			c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
			dial := c.ConnConfig.DialFunc
			c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return countConn{conn, &w.writes, &w.written}, nil
			}
		})
		if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		repo := entity.New(pool, itemTable{}, opts...)
		key := itemKey{OwnerID: 1, Name: "li_gc_wire"}
		call := func(i int) {
			err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
				p.Amount++
				_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprintf("%04d", i))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 { // prepares
			call(i)
		}
		w.writes.Store(0)
		w.written.Store(0)
		for i := 3; i < 13; i++ {
			call(i)
		}
		return w.writes.Load(), w.written.Load()
	}
	writes, written := run()
	gWrites, gWritten := run(entity.WithGroupCommit(16))
	if gWrites != writes || gWritten != written {
		t.Errorf("lone caller with group commit: %d writes, %d bytes; without: %d writes, %d bytes", gWrites, gWritten, writes, written)
	}
	t.Logf("10 calls: %d writes, %d bytes", writes, written)
}

// TestGroupCommitLoneCaller: a caller alone runs in a transaction of its own,
// as without the option.
func TestGroupCommitLoneCaller(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	var rec recorder
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16), entity.WithHooks(rec.hooks()))
	key := itemKey{OwnerID: 1, Name: "li_gc_lone"}
	for range 3 {
		err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
			p.Amount++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 3", amount)
	}
	for _, ev := range rec.events {
		if ev.GroupSize != 1 {
			t.Errorf("lone caller's group size %d, want 1", ev.GroupSize)
		}
	}
	// Its fn's error, or a failed statement, rolls back as without the
	// option.
	errFn := errors.New("fn failed")
	if err := repo.With(ctx, key, func(context.Context, pgx.Tx, *item) error { return errFn }); err != errFn {
		t.Errorf("fn's error came back as %v", err)
	}
	err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount = 100
		_, _ = tx.Exec(ctx, "SELECT 1/0")
		return nil
	})
	if !errors.Is(err, entity.ErrTxAborted) {
		t.Errorf("failed statement: %v, want ErrTxAborted", err)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 3 {
		t.Errorf("amount %d, want 3", amount)
	}
}

// TestGroupCommitLoneCallerCtx: a lone caller whose ctx ends during fn
// commits nothing, as without the option.
func TestGroupCommitLoneCallerCtx(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	key := itemKey{OwnerID: 1, Name: "li_gc_lone_ctx"}
	if err := repo.With(ctx, key, itemNoop); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	err := repo.With(cctx, key, func(_ context.Context, _ pgx.Tx, p *item) error {
		p.Amount = 7
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("With = %v, want context.Canceled", err)
	}
	if amount, _ := itemRow(t, ctx, pool, key); amount != 0 {
		t.Errorf("amount %d committed after ctx ended", amount)
	}
}

// TestGroupCommitLoneCallerRowsConn: Rows from tx.Query report their
// connection (pgx.Rows.Conn) without the option; so they do for a lone
// caller with group commit.
func TestGroupCommitLoneCallerRowsConn(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	check := func(repo itemRepo, key itemKey) error {
		return repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *item) error {
			rows, err := tx.Query(ctx, "SELECT 1")
			if err != nil {
				return err
			}
			defer rows.Close()
			if rows.Conn() == nil {
				return errors.New("rows.Conn() is nil")
			}
			return nil
		})
	}
	oneErr := check(entity.New(pool, itemTable{}), itemKey{OwnerID: 1, Name: "li_r2_rc_one"})
	grpErr := check(entity.New(pool, itemTable{}, entity.WithGroupCommit(8)), itemKey{OwnerID: 1, Name: "li_r2_rc_grp"})
	if (oneErr == nil) != (grpErr == nil) {
		t.Errorf("lone caller: with group commit %v; without %v", grpErr, oneErr)
	}
}
