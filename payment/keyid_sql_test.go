package payment_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/schema"
	"github.com/paylock/paylock/internal/testing/goldenkeys"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

// sqlKeyIDs computes paylock_key_id for every key in one statement.
func sqlKeyIDs(t testing.TB, ctx context.Context, pool *pgxpool.Pool, keys []goldenkeys.Key) []int64 {
	t.Helper()
	type in struct {
		N string   `json:"n"`
		P []string `json:"p"`
	}
	ins := make([]in, len(keys))
	for i, k := range keys {
		ins[i] = in{k.Namespace, k.Parts}
		if ins[i].P == nil {
			ins[i].P = []string{}
		}
	}
	arg, err := json.Marshal(ins)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	err = pool.QueryRow(ctx, `
		SELECT array_agg(paylock_key_id(e->>'n', VARIADIC ARRAY(SELECT jsonb_array_elements_text(e->'p'))) ORDER BY i)
		FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, i)`, string(arg)).Scan(&ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(keys) {
		t.Fatalf("%d ids for %d keys", len(ids), len(keys))
	}
	return ids
}

// TestKeyIDSQLGolden: the SQL function that Migrate installs computes the
// golden ids, for parts given as an array and as separate arguments, and
// refuses NULL instead of returning a NULL id (which pg_advisory_xact_lock
// would take as "lock nothing").
func TestKeyIDSQLGolden(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	keys := goldenkeys.Read(t)
	for i, id := range sqlKeyIDs(t, ctx, pool, keys) {
		if id != keys[i].ID {
			t.Errorf("paylock_key_id(%s) = %d, want %d", shortKey(keys[i].Key), id, keys[i].ID)
		}
	}

	for _, tt := range []struct {
		sql string
		key lock.Key
	}{
		{"SELECT paylock_key_id('payments', '7', 'li_123')", lock.NewKey("payments", "7", "li_123")},
		{"SELECT paylock_key_id('payments', 7::text, 'li_123')", lock.NewKey("payments", "7", "li_123")},
		{"SELECT paylock_key_id('paylock.migrate')", schema.MigrateKey},
		{"SELECT public.paylock_key_id('payments', VARIADIC ARRAY['7', ''])", lock.NewKey("payments", "7", "")},
	} {
		var id int64
		if err := pool.QueryRow(ctx, tt.sql).Scan(&id); err != nil {
			t.Fatalf("%s: %v", tt.sql, err)
		}
		if id != tt.key.ID() {
			t.Errorf("%s = %d, want %d", tt.sql, id, tt.key.ID())
		}
	}

	for _, sql := range []string{
		"SELECT paylock_key_id(NULL, '7')",
		"SELECT paylock_key_id('payments', '7', NULL)",
		"SELECT paylock_key_id('payments', VARIADIC NULL::text[])",
	} {
		var id *int64
		err := pool.QueryRow(ctx, sql).Scan(&id)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22004" {
			t.Errorf("%s = %v, %v; want error 22004 (null_value_not_allowed)", sql, id, err)
		}
	}

	var volatility string
	var parallel string
	err := pool.QueryRow(ctx, `SELECT provolatile::text, proparallel::text FROM pg_proc
		WHERE oid = 'public.paylock_key_id(text, text[])'::regprocedure`).Scan(&volatility, &parallel)
	if err != nil {
		t.Fatal(err)
	}
	if volatility != "i" || parallel != "s" {
		t.Errorf("paylock_key_id is provolatile %q proparallel %q, want immutable (i) and parallel safe (s)", volatility, parallel)
	}
}

func shortKey(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// randomText returns valid UTF-8 without NUL of exactly n bytes, mixing
// 1- to 4-byte characters.
func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	chars := []string{"a", "Z", "0", "/", "%", "'", "*", " ", "é", "ß", "€", "日", "😀", "𝄞"}
	for b.Len() < n {
		c := chars[r.IntN(len(chars))]
		if b.Len()+len(c) > n {
			c = "x"
		}
		b.WriteString(c)
	}
	return b.String()
}

// randomLen favours the lengths where the encoding or the hash changes
// shape: the uvarint grows at 128 and 16384 bytes, xxhash64 reads 32-byte
// stripes, then 8- and 4-byte lanes, then single bytes.
func randomLen(r *rand.Rand) int {
	edges := []int{0, 1, 3, 4, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 127, 128, 129, 255, 256}
	switch x := r.IntN(100); {
	case x < 2:
		return []int{16383, 16384, 16385}[r.IntN(3)]
	case x < 6:
		return r.IntN(5000)
	case x < 60:
		return edges[r.IntN(len(edges))]
	default:
		return r.IntN(40)
	}
}

// TestKeyIDSQLMatchesGo: paylock_key_id equals Key.ID on random keys: no
// parts or many, empty parts, multi-byte UTF-8, and lengths around every
// boundary of the encoding and of xxhash64, up to 16 kB.
func TestKeyIDSQLMatchesGo(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	pool := paytest.Pool(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	const n = 1500
	keys := make([]goldenkeys.Key, n)
	for i := range keys {
		ns := randomText(r, 1+r.IntN(20))
		if r.IntN(20) == 0 {
			ns = randomText(r, []int{127, 128, 63}[r.IntN(3)])
		}
		parts := make([]string, r.IntN(6))
		for j := range parts {
			parts[j] = randomText(r, randomLen(r))
		}
		k := lock.NewKey(ns, parts...)
		keys[i] = goldenkeys.Key{Namespace: ns, Parts: parts, ID: k.ID(), Key: k.String()}
	}
	bad := 0
	for i, id := range sqlKeyIDs(t, ctx, pool, keys) {
		if id != keys[i].ID {
			bad++
			if bad <= 5 {
				t.Errorf("paylock_key_id(%s) = %d, Key.ID() = %d", shortKey(keys[i].Key), id, keys[i].ID)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d random keys differ (seed %d)", bad, n, seed)
	}
}

// BenchmarkKeyIDSQL reports what paylock_key_id costs the server per call,
// for a payment key, timed by EXPLAIN ANALYZE over generate_series.
// TestKeyIDSQLIgnoresSearchPath: a schema placed before pg_catalog on the
// caller's search_path can't replace a function paylock_key_id calls.
func TestKeyIDSQLIgnoresSearchPath(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, sql := range []string{
		"CREATE SCHEMA shadow",
		"CREATE FUNCTION shadow.convert_to(text, name) RETURNS bytea LANGUAGE sql AS $$ SELECT '\\x00'::bytea $$",
		"CREATE FUNCTION shadow.length(bytea) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
		"SET search_path = shadow, pg_catalog, public",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	var id int64
	if err := conn.QueryRow(ctx, "SELECT paylock_key_id('payments', '7', 'li_123')").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if want := lock.NewKey("payments", "7", "li_123").ID(); id != want {
		t.Errorf("with shadow first on search_path, paylock_key_id = %d, want %d", id, want)
	}
}

func BenchmarkKeyIDSQL(b *testing.B) {
	ctx := context.Background()
	pool := paytest.Pool(b)
	const calls = 20000
	var total time.Duration
	for b.Loop() {
		var plan []byte
		err := pool.QueryRow(ctx, `EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, FORMAT JSON)
			SELECT sum(paylock_key_id('payments', (g % 1000)::text, 'li_' || g)) FROM generate_series(1, $1) g`, calls).Scan(&plan)
		if err != nil {
			b.Fatal(err)
		}
		var p []struct {
			ExecutionTime float64 `json:"Execution Time"` // ms
		}
		if err := json.Unmarshal(plan, &p); err != nil || len(p) != 1 {
			b.Fatalf("plan %s: %v", plan, err)
		}
		total += time.Duration(p[0].ExecutionTime * float64(time.Millisecond))
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N*calls), "µs/call")
}
