package entity_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// TestCommitPipelineErrorBeforeCommit: the row's UPDATE, which goes in one
// pipeline with COMMIT, fails with a connection exception the server
// reports (08006: what a Citus coordinator says of a worker out of reach;
// here a trigger raises it). The pipeline stops there, so COMMIT never
// runs: the call fails knowing nothing was committed (not
// lock.ErrCommitUnknown), and Retry runs it again, once, with and without
// group commit.
func TestCommitPipelineErrorBeforeCommit(t *testing.T) {
	t.Parallel()
	pool, ctx := itemsPool(t, nil)
	// Each key's first UPDATE to status 'fail' raises 08006; a sequence
	// counts them, outside the transaction the failure rolls back.
	if _, err := pool.Exec(ctx, `CREATE SEQUENCE seq_li_commit_08; CREATE SEQUENCE seq_li_commit_08_retry;
CREATE SEQUENCE seq_li_commit_08_group; CREATE SEQUENCE seq_li_commit_08_group_retry;
CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status = 'fail' AND nextval(format('%I', 'seq_' || NEW.name)) = 1 THEN
		RAISE EXCEPTION 'worker out of reach' USING ERRCODE = '08006';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION fail_once()`); err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]entity.Option{nil, {entity.WithGroupCommit(8)}} {
		name := "li_commit_08"
		if opts != nil {
			name += "_group"
		}
		key := itemKey{OwnerID: 1, Name: name}
		fn := func(_ context.Context, _ pgx.Tx, p *item) error {
			p.Status, p.Amount = "fail", p.Amount+1
			return nil
		}
		// Without Retry: the trigger's 08006, nothing committed.
		repo := entity.New(pool, itemTable{}, opts...)
		err := repo.With(ctx, key, fn)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "08006" || errors.Is(err, lock.ErrCommitUnknown) {
			t.Fatalf("%s: With = %v, want the server's 08006, known not committed", name, err)
		}
		var rows int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM items WHERE name = $1", name).Scan(&rows); err != nil || rows != 0 {
			t.Fatalf("%s: %d rows (%v) after the failed call, want none: nothing committed", name, rows, err)
		}
		// The same failure again on a key of its own, with Retry: the second
		// attempt commits, once.
		key.Name += "_retry"
		repo = entity.New(pool, itemTable{}, append(opts,
			entity.WithLockOptions(lock.Options{Retry: lock.Retry{Attempts: 3, Backoff: time.Millisecond}}))...)
		if err := repo.With(ctx, key, fn); err != nil {
			t.Fatalf("%s: With with Retry = %v, want nil after a second attempt", key.Name, err)
		}
		if amount, status := itemRow(t, ctx, pool, key); amount != 1 || status != "fail" {
			t.Fatalf("%s: amount %d status %q, want 1 and fail: applied once", key.Name, amount, status)
		}
	}
}
