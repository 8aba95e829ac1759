package entity_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// TestGroupCommitMemberRoundTrips: a member whose fn changes p and runs one
// statement through tx (a ledger insert) costs two round trips: its
// savepoint and its statement go in one pipeline with a read of the row
// after it, and once fn returned its row is written and read back in its
// savepoint, so that a write the server refuses is the member's alone. A
// member whose statement changes the row itself costs the same. Run with
// every default exec mode that pipelines, and the simple protocol, which
// sends the savepoint apart.
func TestGroupCommitMemberRoundTrips(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		mode pgx.QueryExecMode
		// perMember: round trips in a member's fn; between: from one
		// member's end to the next one's start.
		perMember, between int64
	}{
		{pgx.QueryExecModeCacheStatement, 1, 1},
		{pgx.QueryExecModeCacheDescribe, 1, 1},
		{pgx.QueryExecModeExec, 1, 1},
		{pgx.QueryExecModeSimpleProtocol, 2, 1},
	} {
		t.Run(c.mode.String(), func(t *testing.T) {
			t.Parallel()
			var writes, written atomic.Int64
			pool, ctx := itemsPool(t, func(cfg *pgxpool.Config) {
				cfg.ConnConfig.DefaultQueryExecMode = c.mode
				dial := cfg.ConnConfig.DialFunc
				cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
					conn, err := dial(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					return countConn{conn, &writes, &written}, nil
				}
			})
			if _, err := pool.Exec(ctx, "CREATE TABLE ledger (entry text PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			// IdleTimeout an hour: a busy machine may take seconds from one
			// member's turn to the next, and past a twentieth of IdleTimeout
			// the leader sends a keep-alive, a round trip more.
			repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16),
				entity.WithLockOptions(lock.Options{IdleTimeout: time.Hour}))
			key := itemKey{OwnerID: 1, Name: "li_gc_round_trips"}
			const members = 6
			type span struct{ start, end int64 }
			var spans [members]span
			run := func(round int, changeRow int) {
				fns := make([]itemFn, members)
				for i := range fns {
					fns[i] = func(ctx context.Context, tx pgx.Tx, p *item) error {
						spans[i].start = writes.Load()
						sql := "INSERT INTO ledger VALUES ($1)"
						arg := any(fmt.Sprintf("%d-%02d", round, i))
						if i == changeRow {
							// p unchanged: Save would write p's status over this
							sql, arg = "UPDATE items SET amount = amount + 1000 WHERE id = $1", p.ID
						} else {
							p.Amount++
						}
						_, err := tx.Exec(ctx, sql, arg)
						spans[i].end = writes.Load()
						return err
					}
				}
				for i, r := range grouped(t, ctx, repo, key, nil, fns...) {
					if r.err != nil || r.panicked != nil {
						t.Fatalf("round %d, call %d: %v, %v", round, i, r.err, r.panicked)
					}
				}
			}
			const changer = 3
			run(0, changer) // pgx prepares and describes the statements
			run(1, changer)
			for i := 1; i < members; i++ {
				if got := spans[i].end - spans[i].start; got != c.perMember {
					t.Errorf("member %d: %d round trips in fn, want %d", i, got, c.perMember)
				}
				want := c.between // the member before settles: its row written and read back
				if got := spans[i].start - spans[i-1].end; got != want {
					t.Errorf("member %d: %d round trips between it and the member before, want %d", i, got, want)
				}
			}
			if amount, _ := itemRow(t, ctx, pool, key); amount != 2*(members-1+1000) {
				t.Errorf("row: amount %d, want %d", amount, 2*(members-1+1000))
			}
		})
	}
}

// TestGroupCommitPipelinedRow: a member's QueryRow goes in the pipeline too
// (its savepoint before it, the read of the row after it), and the round
// trip ends when fn scans the Row: members that scan see their own results
// and the row as the member before left it; a member that leaves its Row
// unscanned gets ErrRowsOpen, and the members before it ErrGroupRolledBack,
// as with a Row sent on its own.
func TestGroupCommitPipelinedRow(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	repo := entity.New(pool, itemTable{}, entity.WithGroupCommit(16))
	insert := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		want := fmt.Sprint(p.Name, "/", p.Amount)
		var got string
		if err := tx.QueryRow(ctx, "INSERT INTO ledger VALUES ($1) RETURNING entry", want).Scan(&got); err != nil {
			return err
		}
		var inTx int64
		if err := tx.QueryRow(ctx, "SELECT amount FROM items WHERE id = $1", p.ID).Scan(&inTx); err != nil {
			return err
		}
		if got != want || inTx != p.Amount-1 {
			return fmt.Errorf("RETURNING %q, want %q; amount in tx %d, want %d", got, want, inTx, p.Amount-1)
		}
		return nil
	}
	t.Run("Scanned", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "scanned"}
		for i, r := range grouped(t, ctx, repo, key, nil, insert, insert, insert, insert) {
			if r.err != nil || r.panicked != nil {
				t.Fatalf("call %d: %v, %v", i, r.err, r.panicked)
			}
		}
		if amount, _ := itemRow(t, ctx, pool, key); amount != 4 {
			t.Errorf("amount %d, want 4", amount)
		}
	})
	t.Run("Unscanned", func(t *testing.T) {
		key := itemKey{OwnerID: 1, Name: "unscanned"}
		res := grouped(t, ctx, repo, key, nil, insert, insert, func(ctx context.Context, tx pgx.Tx, p *item) error {
			_ = tx.QueryRow(ctx, "SELECT amount FROM items WHERE id = $1", p.ID)
			return nil
		}, insert)
		// As one by one: the call that left its Row unscanned fails with
		// ErrRowsOpen, alone.
		for i, want := range []error{nil, nil, lock.ErrRowsOpen, nil} {
			if !errors.Is(res[i].err, want) || (want == nil && res[i].err != nil) {
				t.Errorf("call %d: %v, want %v", i, res[i].err, want)
			}
		}
		if got := ledger(t, ctx, pool); !slices.Equal(got[len(got)-3:], []string{"unscanned/1", "unscanned/2", "unscanned/3"}) {
			t.Errorf("ledger %v, want unscanned/1 to /3", got)
		}
	})
}

// readCounter is itemTable counting its reads: Find (which locks the
// row) and Read (which doesn't).
type readCounter struct {
	itemTable
	finds, reads *atomic.Int64
}

func (c readCounter) Find(k itemKey) (string, []any) { c.finds.Add(1); return c.itemTable.Find(k) }
func (c readCounter) Read(k itemKey) (string, []any) { c.reads.Add(1); return c.itemTable.Read(k) }

// TestGroupCommitReadsWithoutRowLock: the reads of the row a group member's
// statements go with use the Table's Read (entity.Reader), not Find, whose
// row lock the transaction holds already: only the leader's first round
// trip uses Find, and the read back after the leader's statements (the
// leader sends what a lone caller sends, so nothing tells whether its SQL
// changed the row), which may find another row to lock.
func TestGroupCommitReadsWithoutRowLock(t *testing.T) {
	t.Parallel()
	pool, ctx := groupSetup(t)
	var finds, reads atomic.Int64
	var _ entity.Reader[itemKey] = readCounter{}
	// On a busy machine the group may end at its time budget and the last
	// callers form a group of their own: count the groups (each call's
	// GroupSize) to know how many Finds that takes.
	var sizes sync.Map // call number -> its GroupSize
	var calls atomic.Int64
	hooks := entity.Hooks{Done: func(_ context.Context, ev entity.Event) {
		sizes.Store(calls.Add(1), ev.GroupSize)
	}}
	repo := entity.New[itemKey, item](pool, readCounter{finds: &finds, reads: &reads}, entity.WithGroupCommit(16), entity.WithHooks(hooks))
	add := func(ctx context.Context, tx pgx.Tx, p *item) error {
		p.Amount++
		_, err := tx.Exec(ctx, "INSERT INTO ledger VALUES ($1)", fmt.Sprint(p.Name, "/", p.Amount))
		return err
	}
	for round, key := range []string{"reads_warm", "reads"} {
		finds.Store(0)
		reads.Store(0)
		sizes.Clear()
		for i, r := range grouped(t, ctx, repo, itemKey{OwnerID: 1, Name: key}, nil, add, add, add, add) {
			if r.err != nil {
				t.Fatalf("round %d, call %d: %v", round, i, r.err)
			}
		}
	}
	// A group of n ≥ 2 takes 2 Finds (the leader's, the read back after
	// its write) and Reads for its n-1 members (2 each at least); a lone
	// caller, 1 Find.
	var wantFinds, members, groups int
	perSize := map[int]int{}
	sizes.Range(func(_, v any) bool { perSize[v.(int)]++; return true })
	for size, n := range perSize {
		g := n / max(size, 1)
		groups += g
		if size >= 2 {
			wantFinds += 2 * g
			members += (size - 1) * g
		} else {
			wantFinds += n
		}
	}
	if f, r := finds.Load(), reads.Load(); int(f) != wantFinds || r < int64(2*members) {
		t.Errorf("4 calls in %d groups (sizes %v): %d Finds and %d Reads, want %d Finds (per group: the leader's, the read back after its write; a lone call's one) and at least %d Reads",
			groups, perSize, f, r, wantFinds, 2*members)
	}
	if groups > 1 {
		t.Logf("the 4 calls ran in %d groups (sizes %v): the group ended at its time budget", groups, perSize)
	}
}

// countConn counts what a client writes to and reads from the server.
type countConn struct {
	net.Conn
	writes, written *atomic.Int64
}

func (c countConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	c.written.Add(int64(len(b)))
	return c.Conn.Write(b)
}

// TestGroupCommitManyMembersOneConn: 70 members, each inserting a ledger row,
// behind a leader, on a pool of one connection, max 100: more than
// MaxGroupSQL. Each must succeed, as one by one.
func TestGroupCommitManyMembersOneConn(t *testing.T) {
	t.Parallel()
	pool, ctx := oneConnGroupSetup(t)
	gc := entity.New(pool, itemTable{}, entity.WithGroupCommit(100))
	fns := []itemFn{itemNoop}
	for i := range 70 {
		fns = append(fns, func(ctx context.Context, tx pgx.Tx, p *item) error {
			p.Amount++
			_, err := tx.Exec(ctx, "INSERT INTO ledger (entry) VALUES ($1)", fmt.Sprint(i))
			return err
		})
	}
	res := groupedBounded(t, ctx, gc, itemKey{OwnerID: 1, Name: "li_r2_many"}, nil, fns...)
	for i, r := range res {
		if r.err != nil || r.panicked != nil {
			t.Errorf("call %d: %v %v", i, r.err, r.panicked)
		}
	}
	if amount, _ := itemRow(t, ctx, pool, itemKey{OwnerID: 1, Name: "li_r2_many"}); amount != 70 {
		t.Errorf("amount %d, want 70", amount)
	}
	if n := len(ledger(t, ctx, pool)); n != 70 {
		t.Errorf("ledger %d rows, want 70", n)
	}
}
