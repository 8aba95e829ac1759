// Package livetable fills a payments table the way a live table looks before
// paylock: many payments, a share of them with duplicate rows left by racing
// pollers. Tests and demos use it; it loads with COPY, so 100k rows take
// about a second.
package livetable

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Options shape the data. The zero value is 100,000 payments over 10
// services, 1% of them duplicated, with seed 1.
type Options struct {
	Payments      int     // distinct (service_id, line_item_id) keys
	Services      int     // services rows; payments spread over them
	DuplicateRate float64 // share of keys that get extra rows
	Seed          uint64
}

// Stats describes what Generate loaded.
type Stats struct {
	Rows          int         // rows in payments
	Keys          int         // distinct keys
	DuplicateKeys int         // keys with more than one row
	ExtraRows     int         // rows beyond the first of each key
	ByCopies      map[int]int // rows per key -> number of such keys, for duplicated keys
}

func (o Options) withDefaults() Options {
	if o.Payments == 0 {
		o.Payments = 100_000
	}
	if o.Services == 0 {
		o.Services = 10
	}
	if o.DuplicateRate == 0 {
		o.DuplicateRate = 0.01
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	return o
}

// LineItemID is the line_item_id of the i-th payment.
func LineItemID(i int) string { return fmt.Sprintf("li_%07d", i) }

// ServiceID is the service of the i-th payment: runs of three payments per
// service, round robin.
func ServiceID(i, services int) int64 { return int64(i/3%services + 1) }

// Copies returns how many rows the i-th duplicated key gets: mostly 2, every
// fifth 3, every twentieth 5.
func Copies(i int) int {
	switch {
	case i%20 == 0:
		return 5
	case i%5 == 0:
		return 3
	}
	return 2
}

// Generate inserts the services and payments into the tables of the
// current search_path (which must exist and be empty of these keys) and
// returns what it loaded. Rows are written in a shuffled order, so a key's
// copies have scattered ids, not always the lowest first.
func Generate(ctx context.Context, pool *pgxpool.Pool, o Options) (Stats, error) {
	o = o.withDefaults()
	rng := rand.New(rand.NewPCG(o.Seed, 0x9e3779b97f4a7c15))
	st := Stats{Keys: o.Payments, ByCopies: map[int]int{}}

	if _, err := pool.Exec(ctx, "INSERT INTO services SELECT g, 'service ' || g FROM generate_series(1, $1::int) g ON CONFLICT DO NOTHING",
		o.Services); err != nil {
		return st, fmt.Errorf("testdata: services: %w", err)
	}

	// Row i of the payments: key index and copy number.
	type row struct{ key, copy int }
	dupEvery := int(1 / o.DuplicateRate)
	rows := make([]row, 0, o.Payments+o.Payments/50)
	for k := range o.Payments {
		n := 1
		if dupEvery > 0 && k%dupEvery == dupEvery/2 {
			n = Copies(st.DuplicateKeys)
			st.DuplicateKeys++
			st.ExtraRows += n - 1
			st.ByCopies[n]++
		}
		for c := range n {
			rows = append(rows, row{k, c})
		}
	}
	rng.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
	st.Rows = len(rows)

	i := 0
	n, err := pool.CopyFrom(ctx, pgx.Identifier{"payments"},
		[]string{"service_id", "line_item_id", "amount_cents", "currency", "status"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == len(rows) {
				return nil, nil
			}
			r := rows[i]
			i++
			return []any{ServiceID(r.key, o.Services), LineItemID(r.key), int64(100 + r.key%1000 + r.copy), "EUR", "captured"}, nil
		}))
	if err != nil {
		return st, fmt.Errorf("testdata: copy payments: %w", err)
	}
	if int(n) != st.Rows {
		return st, fmt.Errorf("testdata: copied %d rows, want %d", n, st.Rows)
	}
	if _, err := pool.Exec(ctx, "ANALYZE payments"); err != nil {
		return st, fmt.Errorf("testdata: analyze: %w", err)
	}
	return st, nil
}
