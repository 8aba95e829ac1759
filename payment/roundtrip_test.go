package payment_test

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/payment"
)

// roundTrips counts client–server round trips on the connections it dials: a
// write that follows a read (or is the first write) starts a new one.
type roundTrips struct {
	mu       sync.Mutex
	n        int
	lastRead map[net.Conn]bool
	// parses counts the Parse messages of unnamed statements written
	// (statements the server parses and plans for one use; a named one is
	// prepared once per connection), all but the first write of a
	// connection (its startup message, which has no type byte) being whole
	// messages.
	parses int
}

func (r *roundTrips) parseCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.parses
}

func (r *roundTrips) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// configure makes the pool dial through r, on a single connection that is
// never pinged (a ping would be a round trip With did not make).
func (r *roundTrips) configure(cfg *pgxpool.Config) {
	cfg.MaxConns, cfg.MinConns = 1, 0
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, r: r}, nil
	}
}

type countingConn struct {
	net.Conn
	r *roundTrips
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.r.mu.Lock()
		c.r.lastRead[c] = true
		c.r.mu.Unlock()
	}
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.r.mu.Lock()
	read, seen := c.r.lastRead[c]
	if read || !seen {
		c.r.n++
	}
	for m := b; seen && len(m) >= 5; {
		if m[0] == 'P' && len(m) > 5 && m[5] == 0 { // an empty name
			c.r.parses++
		}
		m = m[min(1+int(binary.BigEndian.Uint32(m[1:5])), len(m)):]
	}
	c.r.lastRead[c] = false
	c.r.mu.Unlock()
	return c.Conn.Write(b)
}

// TestWithRoundTrips counts the round trips of With when fn does no I/O: at
// most 2 in all and at most 1 that starts after the lock is granted, whether
// the row is new or exists and whether fn changes it or not — with prepared
// statements (pgx's default statement cache), once a connection has prepared
// them, and with unnamed statements (exec mode, as behind pgbouncer). A
// connection's first calls prepare the statements, before the lock is taken,
// never with it held. The same steps written one statement at a time (the
// rowlock way) count 5, proof that the counter counts.
func TestWithRoundTrips(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			testRoundTrips(t, mode)
		})
	}
}

func testRoundTrips(t *testing.T, mode pgx.QueryExecMode) {
	rt := &roundTrips{lastRead: map[net.Conn]bool{}}
	repo, pool := newRepo(t, func(cfg *pgxpool.Config) {
		rt.configure(cfg)
		cfg.ConnConfig.DefaultQueryExecMode = mode
	})
	ctx := pgtest.Context(t, time.Minute)

	// measure runs one With and returns its round trips in all and those
	// that started once fn was running, so with the lock held.
	measure := func(t *testing.T, key payment.Key, change bool, wantNew bool) (total, underLock int) {
		t.Helper()
		before := rt.count()
		var atFn int
		err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			atFn = rt.count()
			if p.IsNew() != wantNew {
				t.Errorf("IsNew = %v, want %v", p.IsNew(), wantNew)
			}
			if change {
				p.AmountCents++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		after := rt.count()
		return after - before, after - atFn
	}

	// The pool dials its connection (and counts its startup) here.
	if _, err := pool.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// A new connection's first two calls prepare With's statements; the
	// lock is never held across a prepare.
	for i := range 2 {
		total, underLock := measure(t, payment.Key{ServiceID: 1, LineItemID: "li_rt_warm"}, true, i == 0)
		t.Logf("warm-up call %d: %d round trips, %d with the lock held", i+1, total, underLock)
		if underLock > 1 {
			t.Errorf("warm-up call %d made %d round trips with the lock held, want at most 1", i+1, underLock)
		}
	}

	for _, tt := range []struct {
		name    string
		key     string
		change  bool
		wantNew bool
	}{
		{"NewRowChanged", "li_rt_1", true, true},
		{"NewRowUnchanged", "li_rt_2", false, true},
		{"ExistingRowChanged", "li_rt_1", true, false},
		{"ExistingRowUnchanged", "li_rt_1", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			total, underLock := measure(t, payment.Key{ServiceID: 1, LineItemID: tt.key}, tt.change, tt.wantNew)
			t.Logf("%d round trips, %d with the lock held", total, underLock)
			if total > 2 || underLock > 1 {
				t.Errorf("With made %d round trips, %d with the lock held; want at most 2 and 1", total, underLock)
			}
			if total == 0 {
				t.Error("counted no round trip at all: the counter is broken")
			}
		})
	}

	t.Run("RowLockBaselineCountsFive", func(t *testing.T) {
		before := rt.count()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO payments (service_id, line_item_id) VALUES (1, 'li_rt_3')
				ON CONFLICT DO NOTHING`, pgx.QueryExecModeExec); err != nil {
				return err
			}
			var id, amount int64
			if err := tx.QueryRow(ctx, `SELECT id, amount_cents FROM payments
				WHERE service_id = 1 AND line_item_id = 'li_rt_3' FOR UPDATE`, pgx.QueryExecModeExec).Scan(&id, &amount); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "UPDATE payments SET amount_cents = $2 WHERE id = $1", pgx.QueryExecModeExec, id, amount+1)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		// BEGIN, INSERT, SELECT, UPDATE, COMMIT.
		if got := rt.count() - before; got != 5 {
			t.Errorf("the rowlock transaction counted %d round trips, want 5", got)
		}
	})
}

// TestWithParsesOnlyTheLockStatement: with pgx's statement cache, once a
// connection has prepared With's statements, a call whose key no other
// caller in its process has sends nothing for the server to parse and plan:
// it tries the lock with a prepared statement. A call that must wait sends
// one, the lock statement whose comment names the key for `paylock locks`
// (unnamed): at once when another caller in its process has the key, after
// the try (one more round trip) when another session has it. The rowlock
// transaction's statements, sent unnamed, count 3, proof that the counter
// counts.
func TestWithParsesOnlyTheLockStatement(t *testing.T) {
	t.Parallel()
	rt := &roundTrips{lastRead: map[net.Conn]bool{}}
	repo, pool := newRepo(t, func(cfg *pgxpool.Config) {
		rt.configure(cfg)
		cfg.MaxConns = 2 // two calls at once
	})
	ctx := pgtest.Context(t, time.Minute)
	if _, err := pool.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// Another session, and the queries of pg_locks, uncounted.
	cfg := pool.Config().Copy()
	cfg.ConnConfig.DialFunc = (&net.Dialer{}).DialContext
	admin, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	waiting := func() { _ = pgtest.AwaitLockWaiters(ctx, admin, 1) } // from a goroutine: a timeout shows as the test's own
	bump := func(_ context.Context, _ pgx.Tx, p *payment.Payment) error { p.AmountCents++; return nil }
	other, err := admin.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	// heldByAnotherSession runs With on key while another session holds
	// its lock, until With waits for it.
	heldByAnotherSession := func(key payment.Key) error {
		if _, err := other.Exec(ctx, "SELECT pg_advisory_lock($1)", key.LockKey().ID()); err != nil {
			t.Fatal(err)
		}
		unlocked := make(chan struct{})
		go func() {
			defer close(unlocked)
			waiting()
			_, _ = other.Exec(ctx, "SELECT pg_advisory_unlock($1)", key.LockKey().ID())
		}()
		defer func() { <-unlocked }()
		return repo.With(ctx, key, bump)
	}
	for i := range 2 { // warm-up: prepares, also the busy path's ROLLBACK
		if err := repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: "li_parse_warm"}, bump); err != nil {
			t.Fatalf("warm-up call %d: %v", i+1, err)
		}
		if err := heldByAnotherSession(payment.Key{ServiceID: 1, LineItemID: "li_parse_warm"}); err != nil {
			t.Fatalf("warm-up call %d: %v", i+1, err)
		}
	}
	for _, key := range []string{"li_parse_1", "li_parse_1"} { // new row, then existing
		before, rts := rt.parseCount(), rt.count()
		if err := repo.With(ctx, payment.Key{ServiceID: 1, LineItemID: key}, bump); err != nil {
			t.Fatal(err)
		}
		if got := rt.parseCount() - before; got != 0 {
			t.Errorf("With on %s, a key no other caller has, sent %d statements to parse, want 0", key, got)
		}
		if got := rt.count() - rts; got != 2 {
			t.Errorf("With on %s, a key no other caller has, made %d round trips, want 2", key, got)
		}
	}
	t.Run("AnotherCallerInProcess", func(t *testing.T) {
		key := payment.Key{ServiceID: 1, LineItemID: "li_parse_in_process"}
		before := rt.parseCount()
		held, release := make(chan struct{}), make(chan struct{})
		first := make(chan error, 1)
		go func() {
			first <- repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
				close(held)
				<-release
				return nil
			})
		}()
		<-held
		go func() {
			waiting()
			close(release)
		}()
		if err := repo.With(ctx, key, bump); err != nil {
			t.Fatal(err)
		}
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if got := rt.parseCount() - before; got != 1 {
			t.Errorf("two calls on one key sent %d statements to parse, want 1 (the second's lock)", got)
		}
	})
	t.Run("AnotherSession", func(t *testing.T) {
		before, rts := rt.parseCount(), rt.count()
		if err := heldByAnotherSession(payment.Key{ServiceID: 1, LineItemID: "li_parse_1"}); err != nil {
			t.Fatal(err)
		}
		if got := rt.parseCount() - before; got != 1 {
			t.Errorf("With on a key another session holds sent %d statements to parse, want 1 (the lock, after the try)", got)
		}
		if got := rt.count() - rts; got != 3 {
			t.Errorf("With on a key another session holds made %d round trips, want 3 (the try, the lock, the commit)", got)
		}
	})
	before := rt.parseCount()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO payments (service_id, line_item_id) VALUES (1, $1)
			ON CONFLICT DO NOTHING`, pgx.QueryExecModeExec, "li_parse_2"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE payments SET amount_cents = 1 WHERE line_item_id = $1", pgx.QueryExecModeExec, "li_parse_2")
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "SELECT $1::int", pgx.QueryExecModeExec, 1)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := rt.parseCount() - before; got != 3 {
		t.Errorf("three unnamed statements counted %d parses, want 3", got)
	}
}
