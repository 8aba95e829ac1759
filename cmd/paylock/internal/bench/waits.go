package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// waits samples what the run's busy backends are doing, from
// pg_stat_activity: "state/wait_event", with CPU for an active backend that
// waits for nothing. Busy means in a transaction and not queued for a lock:
// on a hot key, the lock's holder. It shows where the holder's time goes:
// running, on the WAL, or waiting for its client (idle in transaction/
// ClientRead: a round trip under the lock). "none" counts the samples where
// no backend was busy: on a hot key, the lock free with nobody taking it.
type waits struct {
	mu      sync.Mutex
	samples map[string]int
	total   int
}

// sampleWaits samples every 10 ms until ctx is done.
func sampleWaits(ctx context.Context, pool *pgxpool.Pool, into *waits) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rows, err := pool.Query(ctx, `SELECT state || '/' || coalesce(wait_event, 'CPU'), count(*)
			FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'paylock bench%' AND pid <> pg_backend_pid()
			  AND state <> 'idle' AND coalesce(wait_event_type, '') <> 'Lock'
			GROUP BY 1`)
		if err != nil {
			return
		}
		into.mu.Lock()
		busy := 0
		for rows.Next() {
			var k string
			var n int
			if rows.Scan(&k, &n) == nil {
				if into.samples == nil {
					into.samples = map[string]int{}
				}
				into.samples[k] += n
				into.total += n
				busy += n
			}
		}
		if busy == 0 && rows.Err() == nil {
			if into.samples == nil {
				into.samples = map[string]int{}
			}
			into.samples["none"]++
			into.total++
		}
		into.mu.Unlock()
		rows.Close()
	}
}

// top returns the n most frequent states with their share of all samples.
func (w *waits) top(n int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range w.samples {
		all = append(all, kv{k, v})
	}
	slices.SortFunc(all, func(a, b kv) int { return b.v - a.v })
	var parts []string
	for _, e := range all[:min(n, len(all))] {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", e.k, 100*float64(e.v)/float64(w.total)))
	}
	return strings.Join(parts, ", ")
}
