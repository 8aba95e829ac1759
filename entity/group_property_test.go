package entity_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/entity"
)

// Random groups against the reference behaviour: the same calls one by
// one, without group commit.

// TestGroupCommitProperty: for random groups of calls that succeed, fail or
// panic, with and without SQL, the grouped run leaves the same row and the
// same ledger as running the calls that succeeded one by one, in order,
// without group commit; and each of them saw what it would have seen then.
func TestGroupCommitProperty(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	rng := rand.New(rand.NewPCG(11, uint64(time.Now().UnixNano())))
	plain := entity.New(pool, itemTable{})
	errFn := errors.New("fn failed")
	// op returns call j's fn of kind kind on key; seen gets the amount fn saw.
	op := func(kind, j int, seen *int64) itemFn {
		return func(ctx context.Context, tx pgx.Tx, p *item) error {
			*seen = p.Amount
			p.Amount += int64(j + 1)
			var ops []int
			if err := json.Unmarshal(p.Data, &ops); err != nil {
				return fmt.Errorf("data %q: %w", p.Data, err)
			}
			data, err := json.Marshal(append(ops, j))
			if err != nil {
				return err
			}
			p.Data = data
			if kind%2 == 1 { // SQL
				if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprintf("%s/%d", p.Name, j)); err != nil {
					return err
				}
			}
			switch kind {
			case 2, 3:
				return errFn
			case 4, 5:
				panic(errFn)
			case 7:
				_, _ = tx.Exec(ctx, "SELECT 1/0")
			}
			return nil
		}
	}
	for round := range 12 {
		n := 2 + rng.IntN(12)
		repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(2+rng.IntN(n)))
		kinds := make([]int, n)
		for j := range kinds {
			kinds[j] = rng.IntN(8) // 0, 1, 6: ok; 2, 3: error; 4, 5: panic; 7: a failed statement
		}
		grp := itemKey{OwnerID: 1, Name: fmt.Sprintf("g%d", round)}
		ref := itemKey{OwnerID: 1, Name: fmt.Sprintf("r%d", round)}
		if err := repo.With(ctx, grp, func(_ context.Context, _ pgx.Tx, p *item) error {
			p.Data = json.RawMessage(`[]`)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := plain.With(ctx, ref, func(_ context.Context, _ pgx.Tx, p *item) error {
			p.Data = json.RawMessage(`[]`)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		saw := make([]int64, n)
		var fns []itemFn
		for j, kind := range kinds {
			fns = append(fns, op(kind, j, &saw[j]))
		}
		res := grouped(t, ctx, repo, grp, nil, fns...)
		for j, r := range res {
			ok := kinds[j] == 0 || kinds[j] == 1 || kinds[j] == 6
			if ok != (r.err == nil && r.panicked == nil) {
				t.Fatalf("round %d (kinds %v): call %d ended with %v, %v", round, kinds, j, r.err, r.panicked)
			}
			if !ok {
				continue
			}
			var want int64
			if err := plain.With(ctx, ref, func(ctx context.Context, tx pgx.Tx, p *item) error {
				want = p.Amount
				return op(kinds[j], j, new(int64))(ctx, tx, p)
			}); err != nil {
				t.Fatal(err)
			}
			if saw[j] != want {
				t.Errorf("round %d (kinds %v): call %d saw amount %d, one by one %d", round, kinds, j, saw[j], want)
			}
		}
		var gAmount, rAmount int64
		var gData, rData string
		q := "SELECT amount, data::text FROM items WHERE name = $1"
		if err := pool.QueryRow(ctx, q, grp.Name).Scan(&gAmount, &gData); err != nil {
			t.Fatal(err)
		}
		if err := pool.QueryRow(ctx, q, ref.Name).Scan(&rAmount, &rData); err != nil {
			t.Fatal(err)
		}
		if gAmount != rAmount || gData != rData {
			t.Errorf("round %d (kinds %v): grouped left %d %s, one by one %d %s", round, kinds, gAmount, gData, rAmount, rData)
		}
	}
	var gEntries, rEntries []string
	for _, e := range ledger(t, ctx, pool) {
		if e[0] == 'g' {
			gEntries = append(gEntries, e[1:])
		} else {
			rEntries = append(rEntries, e[1:])
		}
	}
	if !slices.Equal(gEntries, rEntries) {
		t.Errorf("ledger grouped %v, one by one %v", gEntries, rEntries)
	}
}
