package entity_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
)

// TestGroupCommitSettingsInFnSavepoint: a member's fn changes settings for
// its transaction (SET LOCAL, set_config(..., true)) through a savepoint it
// began on tx (tx.Begin), and releases it; the next member reads them. One
// by one, the settings end with the first call's transaction, and the next
// call finds them as they were; grouped, the same.
func TestGroupCommitSettingsInFnSavepoint(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	plain := entity.New(pool, itemTable{})
	read := func(side string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			_, err := tx.Exec(ctx, `INSERT INTO ledger VALUES ($1 || current_setting('statement_timeout') || ' ' ||
				coalesce(nullif(current_setting('paylock_test.who', true), ''), '<none>'))`, side+" ")
			return err
		}
	}
	set := func(how string) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount++
			sp, err := tx.Begin(ctx)
			if err != nil {
				return err
			}
			switch how {
			case "exec":
				if _, err := sp.Exec(ctx, "SET LOCAL statement_timeout = '123s'"); err != nil {
					return err
				}
				if _, err := sp.Exec(ctx, "SELECT set_config('paylock_test.who', $1, true)", "member"); err != nil {
					return err
				}
			case "nested":
				sp2, err := sp.Begin(ctx)
				if err != nil {
					return err
				}
				var s string
				if err := sp2.QueryRow(ctx, "SELECT set_config('paylock_test.who', $1, true)", "member").Scan(&s); err != nil {
					return err
				}
				if _, err := sp2.Exec(ctx, "SET LOCAL statement_timeout = '123s'"); err != nil {
					return err
				}
				if err := sp2.Commit(ctx); err != nil {
					return err
				}
			case "batch":
				b := &pgx.Batch{}
				b.Queue("SET LOCAL statement_timeout = '123s'")
				b.Queue("SELECT set_config('paylock_test.who', $1, true)", "member")
				if err := sp.SendBatch(ctx, b).Close(); err != nil {
					return err
				}
			}
			return sp.Commit(ctx)
		}
	}
	for _, how := range []string{"exec", "nested", "batch"} {
		t.Run(how, func(t *testing.T) {
			one := itemKey{OwnerID: 1, Name: "sp_settings_one_" + how}
			for i, fn := range []itemFn{set(how), read("one " + how)} {
				if err := plain.With(ctx, one, fn); err != nil {
					t.Fatalf("one by one, call %d: %v", i, err)
				}
			}
			key := itemKey{OwnerID: 1, Name: "sp_settings_" + how}
			for i, r := range grouped(t, ctx, repo, key, nil, itemNoop, set(how), read("grouped "+how)) {
				if r.err != nil || r.panicked != nil {
					t.Fatalf("grouped, call %d: %v %v", i, r.err, r.panicked)
				}
			}
			var got, want string
			if err := pool.QueryRow(ctx, "SELECT substr(entry, length($1) + 2) FROM ledger WHERE entry LIKE $1 || ' %'", "grouped "+how).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if err := pool.QueryRow(ctx, "SELECT substr(entry, length($1) + 2) FROM ledger WHERE entry LIKE $1 || ' %'", "one "+how).Scan(&want); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("the next call found %s grouped, %s one by one", got, want)
			}
		})
	}
}
