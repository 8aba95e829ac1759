package payment_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/schema"
	"github.com/paylock/paylock/internal/testing/citustest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
	"github.com/paylock/paylock/payment"
)

// TestCitusMigrate: on a coordinator, concurrent Migrates make services a
// reference table and payments a table distributed by service_id, with the
// unique index valid on every shard; Migrate again changes nothing; on a
// worker Migrate refuses, naming the coordinator; a local payments table on
// the coordinator is refused.
func TestCitusMigrate(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)

	var g errgroup.Group
	for range 3 {
		g.Go(func() error { return payment.Migrate(ctx, coord) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := payment.Migrate(ctx, coord); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	rows, err := coord.Query(ctx, `SELECT logicalrelid::text, partmethod::text,
		coalesce(column_to_column_name(logicalrelid, partkey), ''),
		(SELECT count(*) FROM pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid)
		FROM pg_dist_partition p ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	type dist struct {
		Table, Method, Column string
		Shards                int
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[dist])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Table != "payments" || got[0].Method != "h" || got[0].Column != "service_id" ||
		got[1].Table != "services" || got[1].Method != "n" || got[0].Shards < 2 {
		t.Fatalf("distributed tables %+v, want payments hash-distributed by service_id and services a reference table", got)
	}
	st, err := schema.UniqueIndexState(ctx, coord)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Valid {
		t.Fatalf("unique index %+v, want valid on every shard", st)
	}
	var placements, valid int
	if err := coord.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE result = '1')
		FROM run_command_on_placements('payments', $$SELECT count(*) FROM pg_index
			WHERE indrelid = '%s'::regclass AND indisunique AND indisvalid AND indnkeyatts = 2
			AND indexrelid::regclass::text LIKE '`+payment.UniqueIndex+`%%'$$)`).Scan(&placements, &valid); err != nil {
		t.Fatal(err)
	}
	if placements != got[0].Shards || valid != placements {
		t.Fatalf("%d of %d placements have the unique index valid; want every one of %d shards", valid, placements, got[0].Shards)
	}

	t.Run("Worker", func(t *testing.T) {
		worker := citustest.Pool(t, db.WorkerURL(0), nil)
		err := payment.Migrate(ctx, worker)
		if !errors.Is(err, payment.ErrCitusWorker) {
			t.Fatalf("Migrate on a worker = %v, want ErrCitusWorker", err)
		}
		if want := "127.0.0.1:" + strconv.Itoa(db.Cluster.Coordinator.Port); !strings.Contains(err.Error(), want) {
			t.Errorf("Migrate on a worker = %q, want it to name the coordinator %s", err, want)
		}
		if err := worker.Ping(ctx); err != nil {
			t.Errorf("the pool after the refusal: %v", err)
		}
	})

	t.Run("UniqueOnEveryShard", func(t *testing.T) {
		// Rows of many services land on every shard; a second row for a key
		// fails whichever node it is written through.
		if _, err := coord.Exec(ctx, `INSERT INTO services SELECT g, 's' || g FROM generate_series(1, 64) g;
			INSERT INTO payments (service_id, line_item_id) SELECT g, 'li_1' FROM generate_series(1, 64) g`); err != nil {
			t.Fatal(err)
		}
		for _, url := range db.URLs() {
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			for s := 1; s <= 64; s += 7 {
				_, err := c.Exec(ctx, "INSERT INTO payments (service_id, line_item_id) VALUES ($1, 'li_1')", s)
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
					t.Errorf("%s: a second row for (%d, li_1): %v, want a unique violation", url, s, err)
				}
			}
			c.Close(ctx)
		}
	})

	t.Run("RepairsShardIndex", func(t *testing.T) {
		// One shard's copy of the unique index marked invalid, as a failed
		// concurrent build leaves it: Migrate drops the index everywhere
		// and builds it again, concurrently.
		w, err := pgx.Connect(ctx, db.WorkerURL(0))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close(ctx)
		// Citus hides the shards from other applications' catalog queries.
		if _, err := w.Exec(ctx, "SET citus.show_shards_for_app_name_prefixes = '*'"); err != nil {
			t.Fatal(err)
		}
		tag, err := w.Exec(ctx, `UPDATE pg_index SET indisvalid = false WHERE indexrelid = (
			SELECT indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
			WHERE c.relname LIKE '`+payment.UniqueIndex+`\_%' ORDER BY c.relname LIMIT 1)`)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("invalidate a shard's index: %v (%d rows)", err, tag.RowsAffected())
		}
		if st, err := schema.UniqueIndexState(ctx, coord); err != nil || st.Valid {
			t.Fatalf("UniqueIndexState with a shard's index invalid = %+v, %v; want not valid", st, err)
		}
		if err := payment.Migrate(ctx, coord); err != nil {
			t.Fatal(err)
		}
		if st, err := schema.UniqueIndexState(ctx, coord); err != nil || !st.Valid {
			t.Fatalf("UniqueIndexState after Migrate = %+v, %v; want valid on every shard", st, err)
		}
	})

	t.Run("LocalTable", func(t *testing.T) {
		// A payments table of the single-server schema on the coordinator:
		// in a schema of its own, first on the pool's search_path.
		if _, err := coord.Exec(ctx, "CREATE SCHEMA old; SET search_path = old; "+payment.Schema()+"; RESET search_path"); err != nil {
			t.Fatal(err)
		}
		old := citustest.Pool(t, db.CoordinatorURL(), func(c *pgxpool.Config) {
			c.ConnConfig.RuntimeParams["search_path"] = "old, public"
		})
		if err := payment.Migrate(ctx, old); !errors.Is(err, payment.ErrNotDistributed) {
			t.Fatalf("Migrate with a local payments table = %v, want ErrNotDistributed", err)
		}
	})
}

// TestCitusMigrateHostileSchema: payments in a schema whose name needs
// quoting (a quote, a space, upper case) on the pool's search_path: Migrate
// distributes it with the unique index valid on every shard, and a second
// Migrate leaves that index alone (the same index, never dropped and built
// again, which would leave the shards without their safety net meanwhile).
func TestCitusMigrateHostileSchema(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	const name = `Pay's "ments"`
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)
	if _, err := coord.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	pool := citustest.Pool(t, db.CoordinatorURL(), func(c *pgxpool.Config) {
		c.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{name}.Sanitize()
	})
	index := func() (oid uint32) {
		t.Helper()
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1)::oid", pgx.Identifier{name, payment.UniqueIndex}.Sanitize()).Scan(&oid); err != nil {
			t.Fatal(err)
		}
		return oid
	}
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	first := index()
	if st, err := schema.UniqueIndexState(ctx, pool); err != nil || !st.Valid {
		t.Fatalf("UniqueIndexState after Migrate = %+v, %v; want valid on every shard", st, err)
	}
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if again := index(); again != first {
		t.Fatalf("Migrate again replaced the unique index (oid %d, then %d)", first, again)
	}
	if d, err := payment.Distributed(ctx, pool); err != nil || !d {
		t.Fatalf("Distributed = %t, %v; want true", d, err)
	}
}

// TestCitusMigrateNoWorkers: a database with the citus extension and no
// worker added (its group is 0, as on a coordinator) is a one-node
// cluster to Migrate: payments is distributed there, its shards on that
// node, and Migrate again changes nothing.
func TestCitusMigrateNoWorkers(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	admin := citustest.Pool(t, db.Cluster.Coordinator.ConnString("postgres"), nil)
	name := db.Name + "_alone"
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)") })
	pool := citustest.Pool(t, db.Cluster.Coordinator.ConnString(name), nil)
	if _, err := pool.Exec(ctx, "CREATE EXTENSION citus"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := payment.Migrate(ctx, pool); err != nil {
			t.Fatalf("Migrate %d: %v", i+1, err)
		}
	}
	if d, err := payment.Distributed(ctx, pool); err != nil || !d {
		t.Fatalf("Distributed = %t, %v; want true", d, err)
	}
	var elsewhere int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_shard s USING (shardid)
		WHERE s.logicalrelid = 'payments'::regclass AND p.groupid <> 0`).Scan(&elsewhere); err != nil || elsewhere != 0 {
		t.Fatalf("%d shard placements off the coordinator (%v), want none", elsewhere, err)
	}
}

// TestCitusMoveLocalPayments runs docs/SCALING.md's move of a local
// payments table (the single-server schema, with rows, made before the
// extension) into the table Migrate distributes: Migrate refuses it with
// ErrNotDistributed and changes nothing; renamed with its unique index,
// the old table makes way, Migrate distributes a new one, the rows move
// with their ids, and the sequence moved past them lets With create new
// payments beside the old ones, which it finds and updates.
func TestCitusMoveLocalPayments(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	pool := citustest.Pool(t, db.CoordinatorURL(), nil)
	exec := func(sqls ...string) {
		t.Helper()
		for _, sql := range sqls {
			if _, err := pool.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	exec(payment.Schema(), "CREATE UNIQUE INDEX "+payment.UniqueIndex+" ON payments (service_id, line_item_id)",
		"INSERT INTO services VALUES (1, 'api')",
		"INSERT INTO payments (service_id, line_item_id, amount_cents) SELECT 1, 'li_' || g, g FROM generate_series(1, 100) g")
	if err := payment.Migrate(ctx, pool); !errors.Is(err, payment.ErrNotDistributed) {
		t.Fatalf("Migrate with a local payments table = %v, want ErrNotDistributed", err)
	}
	if d, err := payment.Distributed(ctx, pool); err != nil || d {
		t.Fatalf("Distributed after the refusal = %t, %v; want false, nothing changed", d, err)
	}
	// The procedure, as docs/SCALING.md gives it.
	exec("ALTER TABLE payments RENAME TO old_payments",
		"ALTER INDEX "+payment.UniqueIndex+" RENAME TO old_payments_key")
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	exec("INSERT INTO payments SELECT * FROM old_payments",
		"SELECT setval(pg_get_serial_sequence('payments', 'id'), (SELECT max(id) FROM payments))",
		"DROP TABLE old_payments")

	if d, err := payment.Distributed(ctx, pool); err != nil || !d {
		t.Fatalf("Distributed = %t, %v; want true", d, err)
	}
	repo := payment.NewDistributedRepository(pool)
	for _, k := range []payment.Key{{ServiceID: 1, LineItemID: "li_7"}, {ServiceID: 1, LineItemID: "li_new"}} {
		err := repo.With(ctx, k, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			if old := k.LineItemID == "li_7"; p.IsNew() == old || (old && (p.ID != 7 || p.AmountCents != 7)) || (!old && p.ID <= 100) {
				t.Errorf("%s: id %d, amount %d, new %t; want the moved row (id 7, amount 7) or a new one past id 100", k, p.ID, p.AmountCents, p.IsNew())
			}
			p.AmountCents++
			return nil
		})
		if err != nil {
			t.Fatalf("With %s: %v", k, err)
		}
	}
	var rows, sum int
	if err := pool.QueryRow(ctx, "SELECT count(*), sum(amount_cents) FROM payments").Scan(&rows, &sum); err != nil || rows != 101 || sum != 5050+2 {
		t.Fatalf("%d rows, amounts %d (%v); want 101 and 5052", rows, sum, err)
	}
}

// TestCitusHostileKeys: the hostile line item ids of TestWithHostileKeys,
// each written through a different node (Citus deparses a router
// statement, its values included, into the text it sends a worker), make
// exactly their own rows, verbatim, read back the same from every node.
func TestCitusHostileKeys(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)
	if err := payment.Migrate(ctx, coord); err != nil {
		t.Fatal(err)
	}
	if _, err := coord.Exec(ctx, "INSERT INTO services SELECT g, 's' FROM generate_series(1, 8) g"); err != nil {
		t.Fatal(err)
	}
	var repos []*payment.Repository
	for i, url := range db.URLs() {
		strategy := entity.Advisory
		if i > 0 {
			strategy = entity.RowLock
		}
		repos = append(repos, payment.NewDistributedRepository(citustest.Pool(t, url, nil), entity.WithStrategy(strategy)))
	}
	var keys []payment.Key
	for i, li := range hostile {
		k := payment.Key{ServiceID: int64(1 + i%8), LineItemID: li} // on several shards
		keys = append(keys, k)
		for n := range repos { // created through one node, updated through the others
			err := repos[(i+n)%len(repos)].With(ctx, k, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
				p.Status, p.AmountCents = li, p.AmountCents+1
				return nil
			})
			if err != nil {
				t.Fatalf("With(%q) on node %d: %v", li, (i+n)%len(repos), err)
			}
		}
	}
	for n, repo := range repos {
		for _, k := range keys {
			p, err := repo.Get(ctx, k)
			if err != nil || p.Key() != k || p.Status != k.LineItemID || p.AmountCents != int64(len(repos)) {
				t.Fatalf("Get(%q) on node %d = %+v, %v", k.LineItemID, n, p, err)
			}
		}
	}
	var rows int
	if err := coord.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&rows); err != nil || rows != len(hostile) {
		t.Fatalf("%d rows (%v), want %d", rows, err, len(hostile))
	}
}

// TestCitusWithOnEveryNode: payment.Distributed reports the table
// distributed on every node; With on a NewDistributedRepository works
// through the coordinator (advisory strategy) and through each worker
// (RowLock, as entity.CheckEngine decides there), on the same payment.
func TestCitusWithOnEveryNode(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)
	if err := payment.Migrate(ctx, coord); err != nil {
		t.Fatal(err)
	}
	if _, err := coord.Exec(ctx, "INSERT INTO services VALUES (1, 'api')"); err != nil {
		t.Fatal(err)
	}
	key := payment.Key{ServiceID: 1, LineItemID: "li_1"}
	for i, url := range db.URLs() {
		pool := citustest.Pool(t, url, nil)
		strategy := entity.Advisory
		if err := entity.CheckEngine(ctx, pool, entity.Advisory); err != nil {
			if i == 0 || !errors.Is(err, entity.ErrAdvisoryUnsupported) {
				t.Fatalf("CheckEngine on node %d: %v", i, err)
			}
			strategy = entity.RowLock
		} else if i > 0 {
			t.Fatalf("CheckEngine accepted the advisory strategy on worker %d", i)
		}
		if d, err := payment.Distributed(ctx, pool); err != nil || !d {
			t.Fatalf("Distributed on node %d = %t, %v; want true", i, d, err)
		}
		repo := payment.NewDistributedRepository(pool, entity.WithStrategy(strategy))
		err := repo.With(ctx, key, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			if p.IsNew() != (i == 0) {
				t.Errorf("node %d: IsNew = %t", i, p.IsNew())
			}
			p.AmountCents++
			return nil
		})
		if err != nil {
			t.Fatalf("With on node %d (%v): %v", i, strategy, err)
		}
	}
	p, err := payment.NewRepository(coord).Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if p.AmountCents != 3 {
		t.Fatalf("amount %d after one With per node, want 3", p.AmountCents)
	}
}

// TestCitusUnknownService: a key whose service_id has no services row
// fails with ErrUnknownService on every node, with either repository and
// strategy, although Citus names the shard's foreign key
// (payments_service_id_fkey_<shard id>) on a worker and passes no
// constraint name at all through the coordinator; nothing is written.
func TestCitusUnknownService(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 2*time.Minute)
	db := citustest.NewDB(t)
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)
	if err := payment.Migrate(ctx, coord); err != nil {
		t.Fatal(err)
	}
	for i, url := range db.URLs() {
		pool := citustest.Pool(t, url, nil)
		strategy := entity.Advisory
		if i > 0 {
			strategy = entity.RowLock
		}
		for name, repo := range map[string]*payment.Repository{
			"NewRepository":            payment.NewRepository(pool, entity.WithStrategy(strategy)),
			"NewDistributedRepository": payment.NewDistributedRepository(pool, entity.WithStrategy(strategy)),
		} {
			err := repo.With(ctx, payment.Key{ServiceID: 99, LineItemID: "li_1"}, func(context.Context, pgx.Tx, *payment.Payment) error {
				t.Errorf("node %d, %s: fn called for an unknown service", i, name)
				return nil
			})
			var pgErr *pgconn.PgError
			if !errors.Is(err, payment.ErrUnknownService) || !errors.As(err, &pgErr) || pgErr.Code != "23503" {
				t.Errorf("node %d, %s: With on an unknown service = %v; want ErrUnknownService and the 23503", i, name, err)
			}
		}
	}
	var n int
	if err := coord.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d payments after the refused calls (%v), want 0", n, err)
	}
}

// TestCitusRaceAcrossNodes: one process per node (the coordinator and each
// worker), its strategy chosen by entity.CheckEngine (advisory on the
// coordinator, RowLock on a worker), a NewDistributedRepository each,
// races on the same keys: one row per
// key, every acknowledged op applied exactly once, the history
// linearizable per key.
func TestCitusRaceAcrossNodes(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 3*time.Minute)
	db := citustest.NewDB(t)
	coord := citustest.Pool(t, db.CoordinatorURL(), nil)
	if err := payment.Migrate(ctx, coord); err != nil {
		t.Fatal(err)
	}
	if _, err := coord.Exec(ctx, "INSERT INTO services VALUES (1, 'api')"); err != nil {
		t.Fatal(err)
	}
	const workers, calls = 6, 25
	var mu sync.Mutex
	var done []racetest.Call
	strategies := make([]string, len(db.URLs()))
	var g errgroup.Group
	for n, url := range db.URLs() {
		g.Go(func() error {
			cmd := pgtest.Command(ctx, "citusrace", url, fmt.Sprintf("n%d.", n), strconv.Itoa(workers), strconv.Itoa(calls))
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("node %d: %w", n, err)
			}
			for line := range strings.Lines(string(out)) {
				if s, ok := strings.CutPrefix(line, "strategy "); ok {
					strategies[n] = strings.TrimSpace(s)
					continue
				}
				c, err := racetest.ParseCall(line)
				if err != nil {
					return fmt.Errorf("node %d printed %q: %w", n, line, err)
				}
				mu.Lock()
				done = append(done, c)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"advisory", "rowlock", "rowlock"}; !slices.Equal(strategies, want) {
		t.Errorf("strategies per node %q, want %q", strategies, want)
	}
	report := audit(t, ctx, coord, "payments", done, true)
	for _, p := range report.Problems {
		t.Error(p)
	}
	if want := len(strategies) * workers * calls; report.Calls != want {
		t.Errorf("%d calls succeeded, want %d", report.Calls, want)
	}
	if ok, why := racetest.Linearizable(done); !ok {
		t.Error("history:", why)
	}
	t.Logf("coordinator and %d workers: %v; history linearizable per key", citustest.Workers, report)
}

// citusRaceWorker is TestCitusRaceAcrossNodes' process: args are the
// node's database URL, an op prefix, the goroutine count and the calls per
// goroutine. It prints "strategy NAME", then one line per successful call.
func citusRaceWorker(ctx context.Context, args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("want 4 args, got %q", args)
	}
	workers, _ := strconv.Atoi(args[2])
	calls, _ := strconv.Atoi(args[3])
	pool, err := pgxpool.New(ctx, args[0])
	if err != nil {
		return err
	}
	defer pool.Close()
	distributed, err := payment.Distributed(ctx, pool)
	if err != nil {
		return err
	}
	if !distributed {
		return errors.New("payments is not distributed")
	}
	strategy, err := citustest.Strategy(ctx, pool)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "strategy %v\n", strategy)
	done, err := racetest.Hammer(ctx, args[1], workers, calls, raceKeys, withDo(payment.NewDistributedRepository(pool, entity.WithStrategy(strategy))))
	for _, c := range done {
		fmt.Fprintln(os.Stdout, c)
	}
	return err
}
