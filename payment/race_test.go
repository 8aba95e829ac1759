package payment_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/pgtest"
	"github.com/paylock/paylock/payment"
)

// raceKeys are the payments every racer updates.
var raceKeys = func() []payment.Key {
	keys := make([]payment.Key, 5)
	for i := range keys {
		keys[i] = payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("li_%d", i)}
	}
	return keys
}()

// increment is the fn of the race: add 1 to the amount and append the
// operation's id to the JSON array in Data. A lost update shows as a missing
// id and a short sum; a duplicate row as two rows.
func increment(op string, sawNew *bool) func(context.Context, pgx.Tx, *payment.Payment) error {
	return func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
		var ops []string
		if p.Data != nil {
			if err := json.Unmarshal(p.Data, &ops); err != nil {
				return err
			}
		}
		b, err := json.Marshal(append(ops, op))
		if err != nil {
			return err
		}
		p.Data, p.AmountCents = b, p.AmountCents+1
		*sawNew = p.IsNew()
		return nil
	}
}

// outcome is what one successful call reports.
type outcome struct {
	key    payment.Key
	op     string
	isNew  bool
	idSeen int64
}

// hammer runs workers x calls With calls spread over raceKeys, all starting
// at once, and returns the successful ones.
func hammer(ctx context.Context, repo *payment.Repository, prefix string, workers, calls int) ([]outcome, error) {
	var mu sync.Mutex
	var out []outcome
	start := make(chan struct{})
	g, ctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			<-start
			for i := range calls {
				key := raceKeys[(w+i)%len(raceKeys)]
				op := fmt.Sprintf("%s%d.%d", prefix, w, i)
				var isNew bool
				var id int64
				fn := increment(op, &isNew)
				err := repo.With(ctx, key, func(ctx context.Context, tx pgx.Tx, p *payment.Payment) error {
					id = p.ID
					return fn(ctx, tx, p)
				})
				if err != nil {
					return fmt.Errorf("op %s: %w", op, err)
				}
				mu.Lock()
				out = append(out, outcome{key, op, isNew, id})
				mu.Unlock()
			}
			return nil
		})
	}
	close(start)
	return out, g.Wait()
}

// naiveIncrement is the code paylock replaces: find, else insert, then
// read-modify-write, with no lock, on a table without the unique index.
func naiveIncrement(ctx context.Context, pool *pgxpool.Pool, key payment.Key, op string) error {
	var id, amount int64
	var data []byte
	err := pool.QueryRow(ctx, `SELECT id, amount_cents, data FROM naive_payments
		WHERE service_id = $1 AND line_item_id = $2 ORDER BY id LIMIT 1`, key.ServiceID, key.LineItemID).Scan(&id, &amount, &data)
	if errors.Is(err, pgx.ErrNoRows) {
		err = pool.QueryRow(ctx, `INSERT INTO naive_payments (service_id, line_item_id) VALUES ($1, $2)
			RETURNING id, amount_cents, data`, key.ServiceID, key.LineItemID).Scan(&id, &amount, &data)
	}
	if err != nil {
		return err
	}
	var ops []string
	if data != nil {
		json.Unmarshal(data, &ops)
	}
	b, _ := json.Marshal(append(ops, op))
	_, err = pool.Exec(ctx, "UPDATE naive_payments SET amount_cents = $2, data = $3 WHERE id = $1", id, amount+1, b)
	return err
}

// audit checks the payments table against the successful calls: one row per
// key, the sum equal to the number of calls, every op id exactly once, one
// creator per key and one id seen by all. It returns what it found wrong.
func audit(ctx context.Context, pool *pgxpool.Pool, table string, done []outcome) (problems []string, err error) {
	type row struct {
		rows   int
		amount int64
		ops    map[string]int
	}
	found := map[payment.Key]*row{}
	rows, err := pool.Query(ctx, "SELECT service_id, line_item_id, amount_cents, data FROM "+table)
	if err != nil {
		return nil, err
	}
	var k payment.Key
	var amount int64
	var data []byte
	_, err = pgx.ForEachRow(rows, []any{&k.ServiceID, &k.LineItemID, &amount, &data}, func() error {
		r := found[k]
		if r == nil {
			r = &row{ops: map[string]int{}}
			found[k] = r
		}
		r.rows++
		r.amount += amount
		var ops []string
		json.Unmarshal(data, &ops)
		for _, op := range ops {
			r.ops[op]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	calls, creators, ids := map[payment.Key]int{}, map[payment.Key]int{}, map[payment.Key]map[int64]bool{}
	for _, o := range done {
		calls[o.key]++
		if o.isNew {
			creators[o.key]++
		}
		if ids[o.key] == nil {
			ids[o.key] = map[int64]bool{}
		}
		ids[o.key][o.idSeen] = true
		if n := found[o.key].ops[o.op]; n != 1 {
			problems = append(problems, fmt.Sprintf("op %s appears %d times", o.op, n))
		}
	}
	for key, r := range found {
		if r.rows != 1 {
			problems = append(problems, fmt.Sprintf("%s: %d rows", key, r.rows))
		}
		if r.amount != int64(calls[key]) {
			problems = append(problems, fmt.Sprintf("%s: amount %d after %d calls", key, r.amount, calls[key]))
		}
	}
	for key := range calls {
		if table == "payments" && (creators[key] != 1 || len(ids[key]) != 1) {
			problems = append(problems, fmt.Sprintf("%s: %d creators, %d ids seen", key, creators[key], len(ids[key])))
		}
	}
	return problems, nil
}

func setupRace(t *testing.T, ctx context.Context) *pgxpool.Pool {
	pool := pgtest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 40 })
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Exec(ctx, `INSERT INTO services VALUES (1, 'api');
		CREATE TABLE naive_payments (LIKE payments INCLUDING DEFAULTS INCLUDING IDENTITY);`)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestRace(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 3)
	pool := setupRace(t, ctx)
	const workers, calls = 32, 200

	t.Run("Goroutines", func(t *testing.T) {
		// The naive strategy, same workload: proof that the audit can fail.
		var naive []outcome
		var mu sync.Mutex
		var g errgroup.Group
		start := make(chan struct{})
		for w := range workers {
			g.Go(func() error {
				<-start
				for i := range calls / 4 {
					key, op := raceKeys[(w+i)%len(raceKeys)], fmt.Sprintf("n%d.%d", w, i)
					if err := naiveIncrement(ctx, pool, key, op); err != nil {
						return err
					}
					mu.Lock()
					naive = append(naive, outcome{key: key, op: op})
					mu.Unlock()
				}
				return nil
			})
		}
		close(start)
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		naiveProblems, err := audit(ctx, pool, "naive_payments", naive)
		if err != nil {
			t.Fatal(err)
		}
		if len(naiveProblems) == 0 {
			t.Fatal("the naive strategy showed neither duplicates nor lost updates: the race is too weak to prove anything")
		}
		t.Logf("naive: %d calls, %s", len(naive), summarize(ctx, t, pool, "naive_payments"))

		done, err := hammer(ctx, payment.NewRepository(pool), "g", workers, calls)
		if err != nil {
			t.Fatal(err)
		}
		if len(done) != workers*calls {
			t.Fatalf("%d calls succeeded, want %d", len(done), workers*calls)
		}
		problems, err := audit(ctx, pool, "payments", done)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Error(p)
		}
		t.Logf("paylock: %d calls, %s", len(done), summarize(ctx, t, pool, "payments"))
	})
}

// TestRaceProcesses runs the race across separate OS processes.
func TestRaceProcesses(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 3)
	pool := setupRace(t, ctx)
	const procs, workers, calls = 4, 8, 50
	dsn := pool.Config().ConnString()

	var mu sync.Mutex
	var done []outcome
	var g errgroup.Group
	for p := range procs {
		g.Go(func() error {
			cmd := pgtest.Command(ctx, "race", dsn, fmt.Sprintf("p%d.", p), strconv.Itoa(workers), strconv.Itoa(calls))
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("worker %d: %w", p, err)
			}
			for line := range strings.Lines(string(out)) {
				var o outcome
				var isNew int
				if _, err := fmt.Sscanf(line, "%d %s %s %d %d", &o.key.ServiceID, &o.key.LineItemID, &o.op, &isNew, &o.idSeen); err != nil {
					return fmt.Errorf("worker %d printed %q: %w", p, line, err)
				}
				o.isNew = isNew == 1
				mu.Lock()
				done = append(done, o)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(done) != procs*workers*calls {
		t.Fatalf("%d calls succeeded, want %d", len(done), procs*workers*calls)
	}
	problems, err := audit(ctx, pool, "payments", done)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	t.Logf("paylock, %d processes: %d calls, %s", procs, len(done), summarize(ctx, t, pool, "payments"))
}

// raceWorker is TestRaceProcesses' worker process: args are the database
// URL, an op prefix, the goroutine count and the calls per goroutine. It
// prints one line per successful call.
func raceWorker(ctx context.Context, args []string) error {
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
	done, err := hammer(ctx, payment.NewRepository(pool), args[1], workers, calls)
	for _, o := range done {
		isNew := 0
		if o.isNew {
			isNew = 1
		}
		fmt.Fprintf(os.Stdout, "%d %s %s %d %d\n", o.key.ServiceID, o.key.LineItemID, o.op, isNew, o.idSeen)
	}
	return err
}

// summarize returns rows, keys and amounts of a table, for the log.
func summarize(ctx context.Context, t *testing.T, pool *pgxpool.Pool, table string) string {
	var rows, keys, sum int64
	err := pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT (service_id, line_item_id)), coalesce(sum(amount_cents), 0) FROM "+table).
		Scan(&rows, &keys, &sum)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d rows for %d keys, amounts sum to %d", rows, keys, sum)
}
