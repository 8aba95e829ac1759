package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/payment"
)

// warmKeys is the number of payments the warm workload spreads over.
const warmKeys = 100

// workloads name how ops pick their payment.
var workloads = map[string]string{
	"hot":  "every op on the same payment",
	"warm": strconv.Itoa(warmKeys) + " payments, picked at random",
	"cold": "every op on a new payment",
}

// loadSpec is one process's share of a run. It travels to worker processes
// as JSON.
type loadSpec struct {
	ConnString string        `json:"conn"`
	Strategy   string        `json:"strategy"`
	Workload   string        `json:"workload"`
	Workers    int           `json:"workers"`
	Pool       int           `json:"pool"`
	Duration   time.Duration `json:"duration"`
	KeyPrefix  string        `json:"prefix"` // makes cold keys unique across processes and runs
}

// loadResult is what a process measured.
type loadResult struct {
	Ops      int64         `json:"ops"`
	Retries  int64         `json:"retries"`
	Errors   int64         `json:"errors"`
	FirstErr string        `json:"first_err,omitempty"`
	Elapsed  time.Duration `json:"elapsed"`
	Latency  hist          `json:"latency"`
}

func (r *loadResult) merge(o *loadResult) {
	r.Ops += o.Ops
	r.Retries += o.Retries
	r.Errors += o.Errors
	if r.FirstErr == "" {
		r.FirstErr = o.FirstErr
	}
	r.Elapsed = max(r.Elapsed, o.Elapsed)
	r.Latency.merge(&o.Latency)
}

// openLoad opens the pool of spec with all its connections made, so that
// dialling is not timed.
func openLoad(ctx context.Context, spec loadSpec) (*pgxpool.Pool, op, error) {
	cfg, err := pgxpool.ParseConfig(spec.ConnString)
	if err != nil {
		return nil, nil, err
	}
	size := spec.Pool
	if size <= 0 {
		size = spec.Workers
	}
	cfg.MaxConns, cfg.MinConns = int32(size), int32(size)
	cfg.ConnConfig.RuntimeParams["application_name"] = "paylock bench " + spec.Strategy
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	for pool.Stat().TotalConns() < int32(size) {
		if err := ctx.Err(); err != nil {
			pool.Close()
			return nil, nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, nil, err
	}
	distributed, err := payment.Distributed(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	o, err := newOp(spec.Strategy, pool, distributed)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, o, nil
}

// runLoad runs spec.Workers goroutines doing ops until spec.Duration has
// passed; ops in flight then finish and count.
func runLoad(ctx context.Context, spec loadSpec, do op) loadResult {
	var mu sync.Mutex
	var total loadResult
	start := time.Now()
	end := start.Add(spec.Duration)
	var wg sync.WaitGroup
	for w := range spec.Workers {
		wg.Go(func() {
			var r loadResult
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			prefix := spec.KeyPrefix + strconv.Itoa(w) + "-"
			for seq := 0; ctx.Err() == nil; seq++ {
				t := time.Now()
				if !t.Before(end) {
					break
				}
				key := payment.Key{ServiceID: 1}
				switch spec.Workload {
				case "hot":
					key.LineItemID = "hot"
				case "warm":
					key.LineItemID = "w" + strconv.Itoa(rng.IntN(warmKeys))
				default:
					key.LineItemID = prefix + strconv.Itoa(seq)
				}
				retries, err := do(ctx, key)
				r.Retries += int64(retries)
				if err != nil {
					r.Errors++
					if r.FirstErr == "" {
						r.FirstErr = fmt.Sprintf("%s: %v", key, err)
					}
					continue
				}
				r.Ops++
				r.Latency.add(time.Since(t))
			}
			r.Elapsed = time.Since(start)
			mu.Lock()
			total.merge(&r)
			mu.Unlock()
		})
	}
	wg.Wait()
	return total
}
