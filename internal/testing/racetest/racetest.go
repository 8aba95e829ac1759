// Package racetest is the concurrent race the repositories are proven with:
// many workers, all released at once, each adding 1 to a counter on one of a
// few keys and appending its own operation id to a list kept with it. Audit
// then checks the table against the calls that succeeded: one row per key,
// each sum equal to its number of calls, every op id exactly once (a lost
// update shows as a missing id), one creator per key and one row id seen by
// all its callers.
package racetest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/paylock/paylock/internal/testing/history"
)

// Call is one successful operation.
type Call struct {
	Key     string // the logical key, printed
	Op      string // unique per call
	Created bool   // the call reported creating the row
	ID      int64  // the row id the call saw
	Read    int64  // the amount the call read (and wrote plus 1)
	// CallAt and ReturnAt are when do was called and returned, in Unix
	// nanoseconds; Hammer sets them.
	CallAt, ReturnAt int64
}

// String is c as one line of text, the form a worker process (in Go, Ruby
// or Python) prints a call in and ParseCall reads: key, op, created, id,
// read, call and return times, separated by spaces.
func (c Call) String() string {
	return fmt.Sprintf("%s %s %t %d %d %d %d", c.Key, c.Op, c.Created, c.ID, c.Read, c.CallAt, c.ReturnAt)
}

// ParseCall reads a call from its line (see Call.String).
func ParseCall(line string) (Call, error) {
	var c Call
	_, err := fmt.Sscanf(line, "%s %s %t %d %d %d %d", &c.Key, &c.Op, &c.Created, &c.ID, &c.Read, &c.CallAt, &c.ReturnAt)
	return c, err
}

// Do performs operation op on key k: add 1 and append op. It returns what it
// saw.
type Do func(ctx context.Context, k int, op string) (Call, error)

// Hammer runs workers x calls operations spread over nkeys keys, every
// worker starting at the same moment, and returns the successful calls and
// the first error.
func Hammer(ctx context.Context, prefix string, workers, calls, nkeys int, do Do) ([]Call, error) {
	var mu sync.Mutex
	var out []Call
	start := make(chan struct{})
	g, ctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			<-start
			for i := range calls {
				op := fmt.Sprintf("%s%d.%d", prefix, w, i)
				at := time.Now().UnixNano()
				c, err := do(ctx, (w+i)%nkeys, op)
				if err != nil {
					return fmt.Errorf("op %s: %w", op, err)
				}
				c.CallAt, c.ReturnAt = at, time.Now().UnixNano()
				mu.Lock()
				out = append(out, c)
				mu.Unlock()
			}
			return nil
		})
	}
	close(start)
	return out, g.Wait()
}

// AppendOp returns data (a JSON array of op ids, or nil) with op appended.
func AppendOp(data []byte, op string) ([]byte, error) {
	var ops []string
	if data != nil {
		if err := json.Unmarshal(data, &ops); err != nil {
			return nil, err
		}
	}
	return json.Marshal(append(ops, op))
}

// Row is what the table holds: one entry per row, several for a duplicated
// key.
type Row struct {
	Key    string
	Amount int64
	Ops    []byte // the JSON array of op ids
}

// Report is what Audit found.
type Report struct {
	Calls, Keys, Rows int
	Sum               int64 // of all amounts
	Duplicates        int   // rows beyond one per key
	LostUpdates       int   // calls whose op id is missing
	Problems          []string
}

func (r Report) String() string {
	return fmt.Sprintf("%d calls on %d keys: %d rows (%d duplicates), amounts sum to %d, %d lost updates",
		r.Calls, r.Keys, r.Rows, r.Duplicates, r.Sum, r.LostUpdates)
}

// Audit checks rows against calls. With creators set, it also checks that
// each key had exactly one creator and that all its callers saw one id.
func Audit(calls []Call, rows []Row, creators bool) Report {
	r := Report{Calls: len(calls), Rows: len(rows)}
	rowsPer, sum, seen := map[string]int{}, map[string]int64{}, map[string]int{}
	for _, row := range rows {
		rowsPer[row.Key]++
		sum[row.Key] += row.Amount
		r.Sum += row.Amount
		var ops []string
		json.Unmarshal(row.Ops, &ops)
		for _, op := range ops {
			seen[op]++
		}
	}
	callsPer, created, ids := map[string]int{}, map[string]int{}, map[string]map[int64]bool{}
	for _, c := range calls {
		callsPer[c.Key]++
		if c.Created {
			created[c.Key]++
		}
		if ids[c.Key] == nil {
			ids[c.Key] = map[int64]bool{}
		}
		ids[c.Key][c.ID] = true
		switch n := seen[c.Op]; {
		case n == 0:
			r.LostUpdates++
			r.Problems = append(r.Problems, fmt.Sprintf("op %s is missing", c.Op))
		case n > 1:
			r.Problems = append(r.Problems, fmt.Sprintf("op %s applied %d times", c.Op, n))
		}
	}
	r.Keys = len(rowsPer)
	keys := make([]string, 0, len(rowsPer))
	for k := range rowsPer {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if n := rowsPer[k]; n != 1 {
			r.Duplicates += n - 1
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d rows", k, n))
		}
		if sum[k] != int64(callsPer[k]) {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: amount %d after %d calls", k, sum[k], callsPer[k]))
		}
		if creators && (created[k] != 1 || len(ids[k]) != 1) {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d creators, %d row ids seen", k, created[k], len(ids[k])))
		}
	}
	return r
}

// Linearizable checks with internal/testing/history (porcupine) that the calls,
// each of which read its key's amount and wrote it plus 1, have an order per
// key consistent with their real-time order that explains every value read.
// A lost update has none.
func Linearizable(calls []Call) (bool, string) {
	ops := make([]history.Op, len(calls))
	for i, c := range calls {
		ops[i] = history.Op{Key: c.Key, Call: c.CallAt, Return: c.ReturnAt, Ran: true, Read: c.Read, Outcome: history.OK}
	}
	return history.Check(ops, time.Minute)
}

// Querier runs a query: a pool, a connection, a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Rows reads a table's rows with sql, which must select the key (as text),
// the amount and the JSON array of op ids.
func Rows(ctx context.Context, q Querier, sql string) ([]Row, error) {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) {
		var row Row
		return row, r.Scan(&row.Key, &row.Amount, &row.Ops)
	})
}
