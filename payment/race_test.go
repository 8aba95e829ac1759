package payment_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
	"github.com/paylock/paylock/internal/tools/baseline"
	"github.com/paylock/paylock/payment"
)

const raceKeys = 5

func raceKey(k int) payment.Key {
	return payment.Key{ServiceID: 1, LineItemID: fmt.Sprintf("li_%d", k)}
}

// withDo is the race's operation through With: add 1, append the op id.
func withDo(repo *payment.Repository) racetest.Do {
	return func(ctx context.Context, k int, op string) (racetest.Call, error) {
		c := racetest.Call{Key: raceKey(k).String(), Op: op}
		err := repo.With(ctx, raceKey(k), func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			data, err := racetest.AppendOp(p.Data, op)
			c.Created, c.ID, c.Read = p.IsNew(), p.ID, p.AmountCents
			p.Data, p.AmountCents = data, p.AmountCents+1
			return err
		})
		return c, err
	}
}

// naiveDo is the code paylock replaces (baseline.Naive): find, else insert,
// then read-modify-write, with no lock, on a table without the unique index.
func naiveDo(pool *pgxpool.Pool) racetest.Do {
	return func(ctx context.Context, k int, op string) (racetest.Call, error) {
		key := raceKey(k)
		c := racetest.Call{Key: key.String(), Op: op}
		_, err := baseline.Naive(ctx, pool, key, func(r *baseline.Row) (bool, error) {
			c.ID, c.Created, c.Read = r.ID, r.Created, r.AmountCents
			data, err := racetest.AppendOp(r.Data, op)
			r.Data, r.AmountCents = data, r.AmountCents+1
			return true, err
		})
		return c, err
	}
}

// audit reads table and checks it against calls.
func audit(t *testing.T, ctx context.Context, pool *pgxpool.Pool, table string, calls []racetest.Call, creators bool) racetest.Report {
	t.Helper()
	got, err := racetest.Rows(ctx, pool, "SELECT service_id || '/' || line_item_id, amount_cents, data FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	return racetest.Audit(calls, got, creators)
}

// setupRace returns a migrated pool of 40 connections with service 1 and
// the naive baseline's table (baseline.Table), which has no unique index.
func setupRace(t *testing.T, ctx context.Context) *pgxpool.Pool {
	t.Helper()
	pool := paytest.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 40 })
	if err := baseline.CreateTable(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// TestRace: 32 goroutines x 50 calls on 5 keys, with the naive strategy as
// the proof that the race is strong enough to fail, then with each strategy
// under that same race. More calls per goroutine test nothing more: each
// key's history is checked call by call, and the load that breaks the naive
// code is the one each strategy must hold under (every call appends to its
// row's op list, so the cost grows with the square of the calls per key).
func TestRace(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 10*time.Minute) // only a hang takes that long, on a busy machine too
	pool := setupRace(t, ctx)
	const workers, calls = 32, 50

	naive, err := racetest.Hammer(ctx, "n", workers, calls, raceKeys, naiveDo(pool))
	if err != nil {
		t.Fatal(err)
	}
	report := audit(t, ctx, pool, baseline.Table, naive, false)
	if report.Duplicates == 0 && report.LostUpdates == 0 {
		t.Fatalf("the naive strategy showed neither duplicates nor lost updates (%v): the race is too weak to prove anything", report)
	}
	if ok, _ := racetest.Linearizable(naive); ok {
		t.Error("the history checker accepted the naive strategy's history, lost updates and all")
	}
	t.Logf("%s", readmeRaceLine(t, "naive", fmt.Sprintf("naive: %v", report)))

	for _, strategy := range []entity.Strategy{entity.Advisory, entity.RowLock, groupCommit} {
		name := strategy.String()
		if strategy == groupCommit {
			name = "group"
		}
		t.Run(name, func(t *testing.T) {
			if _, err := pool.Exec(ctx, "TRUNCATE payments"); err != nil {
				t.Fatal(err)
			}
			repo := payment.NewRepository(pool, entity.WithStrategy(strategy))
			var largest atomic.Int64 // the largest group seen
			if strategy == groupCommit {
				repo = payment.NewRepository(pool, entity.WithGroupCommit(32), entity.WithHooks(entity.Hooks{
					Done: func(_ context.Context, ev entity.Event) {
						for n := largest.Load(); int64(ev.GroupSize) > n && !largest.CompareAndSwap(n, int64(ev.GroupSize)); n = largest.Load() {
						}
					},
				}))
			}
			done, err := racetest.Hammer(ctx, "g", workers, calls, raceKeys, withDo(repo))
			if err != nil {
				t.Fatal(err)
			}
			report := audit(t, ctx, pool, "payments", done, true)
			for _, p := range report.Problems {
				t.Error(p)
			}
			if report.Calls != workers*calls {
				t.Errorf("%d calls succeeded, want %d", report.Calls, workers*calls)
			}
			if ok, why := racetest.Linearizable(done); !ok {
				t.Error("history:", why)
			}
			if strategy == groupCommit && largest.Load() < 2 {
				t.Errorf("no two calls ran in one transaction (largest group %d): the race tested no group", largest.Load())
			}
			line := fmt.Sprintf("%s: %v; history linearizable per key", name, report)
			if strategy == groupCommit {
				line += fmt.Sprintf("; largest group %d", largest.Load())
			}
			t.Logf("%s", readmeRaceLine(t, name, line))
		})
	}
}

// readmeRaceLine returns line, the figures a race test logs under label,
// after checking that README.md shows the same line in its `go test -v -run
// TestRace` block: the same words and the same figures, but those that vary
// from run to run (the naive strategy's outcome, the largest group).
func readmeRaceLine(t *testing.T, label, line string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "`go test -v -run TestRace ./payment/`")
	if ok {
		_, block, ok = strings.Cut(block, "```\n")
		block, _, _ = strings.Cut(block, "```")
	}
	if !ok {
		t.Fatal("README.md: no block after `go test -v -run TestRace ./payment/`")
	}
	vary := regexp.MustCompile(`^naive: (\d+ calls on \d+ keys: ).*|largest group \d+`)
	mask := func(s string) string {
		return vary.ReplaceAllStringFunc(s, func(m string) string {
			if strings.HasPrefix(m, "naive: ") {
				return vary.ReplaceAllString(m, "naive: ${1}N")
			}
			return "largest group N"
		})
	}
	for l := range strings.Lines(block) {
		if strings.HasPrefix(l, label+": ") {
			if mask(strings.TrimSpace(l)) != mask(line) {
				t.Errorf("README.md shows\n\t%s\nbut the test logs\n\t%s\n(only the naive outcome and the largest group may differ): update README.md", strings.TrimSpace(l), line)
			}
			return line
		}
	}
	t.Errorf("README.md's TestRace block has no %q line; the test logs\n\t%s", label+":", line)
	return line
}

// groupCommit stands for Advisory with entity.WithGroupCommit in TestRace.
const groupCommit entity.Strategy = -1

// TestRaceProcesses runs the race across 4 OS processes, each process's
// callers with and without group commit.
func TestRaceProcesses(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"single", "group"} {
		t.Run(mode, func(t *testing.T) { raceProcesses(t, mode) })
	}
}

func raceProcesses(t *testing.T, mode string) {
	t.Parallel()
	ctx := pgtest.Context(t, 3*time.Minute)
	pool := setupRace(t, ctx)
	const procs, workers, calls = 4, 8, 50
	dsn := pool.Config().ConnString()

	var mu sync.Mutex
	var done []racetest.Call
	var g errgroup.Group
	for p := range procs {
		g.Go(func() error {
			cmd := pgtest.Command(ctx, "race", dsn, fmt.Sprintf("p%d.", p), strconv.Itoa(workers), strconv.Itoa(calls), mode)
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("worker %d: %w", p, err)
			}
			for line := range strings.Lines(string(out)) {
				c, err := racetest.ParseCall(line)
				if err != nil {
					return fmt.Errorf("worker %d printed %q: %w", p, line, err)
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
	report := audit(t, ctx, pool, "payments", done, true)
	for _, p := range report.Problems {
		t.Error(p)
	}
	if report.Calls != procs*workers*calls {
		t.Errorf("%d calls succeeded, want %d", report.Calls, procs*workers*calls)
	}
	if ok, why := racetest.Linearizable(done); !ok {
		t.Error("history:", why)
	}
	label := fmt.Sprintf("%d processes, %s", procs, mode)
	t.Logf("%s", readmeRaceLine(t, label, fmt.Sprintf("%s: %v; history linearizable per key", label, report)))
}

// raceWorker is TestRaceProcesses' worker process: args are the database
// URL, an op prefix, the goroutine count, the calls per goroutine and
// "group" for group commit (anything else: without). It prints one line per
// successful call.
func raceWorker(ctx context.Context, args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("want 5 args, got %q", args)
	}
	var opts []entity.Option
	if args[4] == "group" {
		opts = append(opts, entity.WithGroupCommit(32))
	}
	workers, _ := strconv.Atoi(args[2])
	calls, _ := strconv.Atoi(args[3])
	pool, err := pgxpool.New(ctx, args[0])
	if err != nil {
		return err
	}
	defer pool.Close()
	done, err := racetest.Hammer(ctx, args[1], workers, calls, raceKeys, withDo(payment.NewRepository(pool, opts...)))
	for _, c := range done {
		fmt.Fprintln(os.Stdout, c)
	}
	return err
}
