// Package demo is the scenario behind `paylock demo`: pollers receive
// overlapping events from a simulated external API — the same payment's
// events delivered several times, to several pollers at once — and apply
// them first with the naive find-then-create the problem statement starts
// from, then through payment.Repository.With. Audit then counts rows,
// duplicates and balances against what the API sent.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/tools/baseline"
	"github.com/paylock/paylock/payment"
)

// Scenario fixes the simulated API's feed. Every process that builds the
// same Scenario gets the same deliveries, so pollers in separate processes
// share one feed.
type Scenario struct {
	Pollers       int           // pollers sharing the feed
	Payments      int           // distinct payments
	MaxEvents     int           // events per payment: 1 to MaxEvents
	MaxDeliveries int           // deliveries of each event: 1 to MaxDeliveries
	Services      int           // payments spread over this many services
	Work          time.Duration // time a handler spends on a payment (the "bulk of old code")
	Seed          uint64
}

// DefaultScenario finishes both runs in a few seconds on a laptop-class
// machine with a durable server.
var DefaultScenario = Scenario{Pollers: 8, Payments: 1000, MaxEvents: 6, MaxDeliveries: 3, Services: 3,
	Work: time.Millisecond, Seed: 1}

// Delivery is one event as the API hands it to a poller: an amount to add to
// a payment, with the event's id so a handler can tell a redelivery.
type Delivery struct {
	Key         payment.Key
	EventID     string
	AmountCents int64
}

// Deliveries returns the whole feed in delivery order. A payment's
// deliveries sit close together, so that consecutive deliveries, which go to
// different pollers, often name the same payment.
func (s Scenario) Deliveries() []Delivery {
	rng := rand.New(rand.NewPCG(s.Seed, 0x5eed))
	var all []Delivery
	for p := range s.Payments {
		key := payment.Key{ServiceID: int64(p%s.Services + 1), LineItemID: fmt.Sprintf("li_%05d", p)}
		var mine []Delivery
		for e := range 1 + rng.IntN(s.MaxEvents) {
			d := Delivery{Key: key, EventID: fmt.Sprintf("evt_%05d_%d", p, e), AmountCents: int64(100 + rng.IntN(9900))}
			for range 1 + rng.IntN(s.MaxDeliveries) {
				mine = append(mine, d)
			}
		}
		all = append(all, mine...)
	}
	// Shuffle within windows of a few payments' worth of deliveries.
	window := 4 * s.Pollers
	for i := 0; i < len(all); i += window {
		w := all[i:min(i+window, len(all))]
		rng.Shuffle(len(w), func(a, b int) { w[a], w[b] = w[b], w[a] })
	}
	return all
}

// Share returns the deliveries poller index (of s.Pollers) receives: every
// Pollers-th, so neighbours in the feed reach different pollers together.
func (s Scenario) Share(all []Delivery, index int) []Delivery {
	var mine []Delivery
	for i := index; i < len(all); i += s.Pollers {
		mine = append(mine, all[i])
	}
	return mine
}

// Expected returns what a correct handler leaves behind: the balance of
// every payment, each event counted once.
func Expected(all []Delivery) map[payment.Key]int64 {
	seen := map[string]bool{}
	want := map[payment.Key]int64{}
	for _, d := range all {
		if !seen[d.EventID] {
			seen[d.EventID] = true
			want[d.Key] += d.AmountCents
		}
	}
	return want
}

// Mode is a way of handling a delivery.
type Mode string

const (
	// Naive finds the payment, creates it if missing, then updates it, with
	// no lock, on baseline.Table: a copy of payments without the unique
	// index, as in production before paylock (baseline.Naive).
	Naive Mode = "naive"
	// Paylock handles the delivery in payment.Repository.With.
	Paylock Mode = "paylock"
)

// Table returns the table a mode writes.
func (m Mode) Table() string {
	if m == Naive {
		return baseline.Table
	}
	return "payments"
}

// Setup creates the schema — payments with its unique index (payment.Migrate),
// baseline.Table without it, the services — in the first schema of the
// pool's search_path.
func Setup(ctx context.Context, pool *pgxpool.Pool, s Scenario) error {
	if err := payment.Migrate(ctx, pool); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := baseline.CreateTable(ctx, pool); err != nil {
		return fmt.Errorf("demo: setup: %w", err)
	}
	_, err := pool.Exec(ctx, `
		TRUNCATE `+baseline.Table+`, payments;
		INSERT INTO services SELECT g, 'service ' || g FROM generate_series(1, `+fmt.Sprint(s.Services)+`) g
		ON CONFLICT DO NOTHING`)
	if err != nil {
		return fmt.Errorf("demo: setup: %w", err)
	}
	return nil
}

// events is what a handler keeps in Payment.Data: the ids of the events it
// applied, so a redelivery is recognised.
type events struct {
	Events []string `json:"events"`
}

// apply adds d to a payment whose data is raw, unless it was applied before.
func apply(d Delivery, amount int64, raw []byte) (newAmount int64, newData []byte, changed bool, err error) {
	var ev events
	if raw != nil {
		if err := json.Unmarshal(raw, &ev); err != nil {
			return 0, nil, false, err
		}
	}
	if slices.Contains(ev.Events, d.EventID) {
		return amount, raw, false, nil
	}
	ev.Events = append(ev.Events, d.EventID)
	newData, err = json.Marshal(ev)
	return amount + d.AmountCents, newData, true, err
}

// Poller handles deliveries in one mode.
type Poller struct {
	pool *pgxpool.Pool
	repo *payment.Repository
	mode Mode
	work time.Duration
}

// NewPoller returns a poller writing to pool in mode.
func NewPoller(pool *pgxpool.Pool, mode Mode, s Scenario) *Poller {
	return &Poller{pool: pool, repo: payment.NewRepository(pool), mode: mode, work: s.Work}
}

// Handle applies one delivery.
func (p *Poller) Handle(ctx context.Context, d Delivery) error {
	if p.mode == Paylock {
		return p.repo.With(ctx, d.Key, func(ctx context.Context, _ pgx.Tx, pay *payment.Payment) error {
			amount, data, changed, err := apply(d, pay.AmountCents, pay.Data)
			if err != nil || !changed {
				return err
			}
			time.Sleep(p.work)
			pay.AmountCents, pay.Data, pay.Currency, pay.Status = amount, data, "EUR", "captured"
			return nil
		})
	}
	return p.naive(ctx, d)
}

// naive is the code paylock replaces (baseline.Naive): find, else create,
// then write back.
func (p *Poller) naive(ctx context.Context, d Delivery) error {
	var applyErr error
	_, err := baseline.Naive(ctx, p.pool, d.Key, func(r *baseline.Row) (bool, error) {
		amount, data, changed, err := apply(d, r.AmountCents, r.Data)
		if err != nil || !changed {
			applyErr = err
			return false, err
		}
		time.Sleep(p.work)
		r.AmountCents, r.Data, r.Currency, r.Status = amount, data, "EUR", "captured"
		return true, nil
	})
	if err != nil && applyErr == nil {
		return fmt.Errorf("demo: naive %s: %w", d.Key, err)
	}
	return err
}

// Result is what Audit found in a mode's table.
type Result struct {
	Mode          Mode
	Handled       int           // deliveries handled
	Elapsed       time.Duration // wall time of the run
	Payments      int           // distinct payments the API sent
	Rows          int           // rows in the table
	DuplicateRows int           // rows beyond the first of their key
	WrongPayments int           // payments whose rows don't sum to their events
	Expected      int64         // the API's balance, each event once
	Found         int64         // sum of amount_cents in the table
}

// Exact reports whether the table matches the API: one row per payment,
// every payment's amount right.
func (r Result) Exact() bool {
	return r.Rows == r.Payments && r.DuplicateRows == 0 && r.WrongPayments == 0 && r.Found == r.Expected
}

// OpsPerSec is deliveries handled per second of wall time.
func (r Result) OpsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Handled) / r.Elapsed.Seconds()
}

// Audit compares mode's table with the feed.
func Audit(ctx context.Context, pool *pgxpool.Pool, mode Mode, all []Delivery) (Result, error) {
	want := Expected(all)
	r := Result{Mode: mode, Payments: len(want)}
	for _, v := range want {
		r.Expected += v
	}
	rows, err := pool.Query(ctx, "SELECT service_id, line_item_id, count(*), sum(amount_cents)::bigint FROM "+mode.Table()+
		" GROUP BY service_id, line_item_id")
	if err != nil {
		return r, fmt.Errorf("demo: audit: %w", err)
	}
	var k payment.Key
	var n int
	var sum int64
	got := map[payment.Key]int64{}
	_, err = pgx.ForEachRow(rows, []any{&k.ServiceID, &k.LineItemID, &n, &sum}, func() error {
		r.Rows += n
		r.DuplicateRows += n - 1
		r.Found += sum
		got[k] = sum
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("demo: audit: %w", err)
	}
	for k, v := range want {
		if got[k] != v {
			r.WrongPayments++
		}
	}
	return r, nil
}
