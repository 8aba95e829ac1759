package entity_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
)

// noteTable is counters with a rarely used Save statement: a counter whose
// Label fn sets to "note" gets its note column written, a column that may
// not exist (not migrated yet, or dropped since).
type noteTable struct{ counters }

func (t noteTable) Save(before, after *counter) (string, []any, error) {
	if after.Label == "note" {
		return "UPDATE counters SET note = $2 WHERE id = $1", []any{after.ID, "hello"}, nil
	}
	return t.counters.Save(before, after)
}

// TestWithABrokenSaveStatementFailsOnlyItsCalls: a Save statement that fails
// (its column is missing) fails the calls that use it and no other: not
// calls for other keys, not on the connection it failed on, not on new
// connections; not before it ever worked, nor after it worked once and the
// column was then dropped.
func TestWithABrokenSaveStatementFailsOnlyItsCalls(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 2 })
	repo := entity.New(pool, noteTable{})
	note := func(context.Context, pgx.Tx, *counter) error { return nil }
	setNote := func(_ context.Context, _ pgx.Tx, p *counter) error {
		p.Label = "note"
		return nil
	}
	change := func(_ context.Context, _ pgx.Tx, p *counter) error {
		p.N++
		return nil
	}
	others := func(t *testing.T, round string) {
		t.Helper()
		for i := range 4 { // more calls than connections: each connection is used
			key := fmt.Sprintf("li_other_%s_%d", round, i)
			if err := repo.With(ctx, key, note); err != nil {
				t.Fatalf("%s: With on another key, nothing to save: %v", round, err)
			}
			if err := repo.With(ctx, key, change); err != nil {
				t.Fatalf("%s: With on another key, another Save statement: %v", round, err)
			}
		}
	}
	undefinedColumn := func(t *testing.T, err error) {
		t.Helper()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42703" {
			t.Fatalf("With = %v, want the undefined column (42703)", err)
		}
	}
	key := "li_note"

	t.Run("NeverWorked", func(t *testing.T) {
		undefinedColumn(t, repo.With(ctx, key, setNote))
		others(t, "never")
		pool.Reset() // new connections prepare what the Repository knows
		others(t, "never_new_conns")
	})

	t.Run("WorkedThenColumnDropped", func(t *testing.T) {
		if _, err := pool.Exec(ctx, "ALTER TABLE counters ADD COLUMN note text"); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := repo.With(ctx, key, setNote); err != nil {
				t.Fatalf("With writing the note once the column exists: %v", err)
			}
		}
		if _, err := pool.Exec(ctx, "ALTER TABLE counters DROP COLUMN note"); err != nil {
			t.Fatal(err)
		}
		pool.Reset()
		others(t, "dropped")
		undefinedColumn(t, repo.With(ctx, key, setNote))
		others(t, "dropped_after")
	})
}
