package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/paylock/paylock/cmd/paylock/internal/dedupe"
	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/internal/english"
	"github.com/paylock/paylock/payment"
)

var cmdDedupe = &command{
	name:    "dedupe",
	summary: "merge duplicate payments into payment_duplicates while pollers write, then build the unique index",
	help: `
Reports the duplicate (service_id, line_item_id) groups — how many, the worst
keys, a sample — then, unless --dry-run, merges them while pollers keep
writing: for each duplicated key, in a transaction holding the key's advisory
lock (the same lock payment.Repository.With takes), it keeps the row with the
LOWEST id — the one With reads and updates (ORDER BY id LIMIT 1) — and moves
every other row into the quarantine table payment_duplicates, with the whole
original row (jsonb), the id it was merged into and when. Nothing is summed
or lost; reconcile amounts from the quarantine if you need to.

Keys are merged --batch at a time, one transaction per batch; each batch
commits on its own, so after Ctrl-C or a crash run it again and it carries on.
Then the unique index is built with CREATE UNIQUE INDEX CONCURRENTLY (writers
are not blocked); an INVALID index left by an earlier failed build is dropped
and rebuilt, and the result is verified valid. If writers that bypass paylock
add duplicates meanwhile, the merge runs again before the index is retried.

Progress is a bar on a terminal and plain lines otherwise. Exit 0 when the
table has no duplicates and the index is valid.`,
	flags: func(fs *flag.FlagSet) any {
		f := new(dedupeFlags)
		fs.BoolVar(&f.dryRun, "dry-run", false, "report the duplicates and the plan; change nothing")
		fs.IntVar(&f.batch, "batch", 100, "keys merged per transaction")
		fs.IntVar(&f.sample, "sample", 5, "worst keys and sample keys to show")
		fs.DurationVar(&f.lockTimeout, "lock-timeout", 30*time.Second, "how long a batch waits for its keys' locks")
		return f
	},
	validate: validateDedupe,
	run:      runDedupe,
}

// dedupeFlags are paylock dedupe's flags.
type dedupeFlags struct {
	dryRun        bool
	batch, sample int
	lockTimeout   time.Duration
}

func validateDedupe(c *call) error {
	f := c.flags.(*dedupeFlags)
	batch, sample := f.batch, f.sample
	switch {
	case len(c.args) > 0:
		return noArgs(c)
	case batch < 1:
		return usagef("--batch %d: must be at least 1", batch)
	case sample < 0:
		return usagef("--sample %d: must not be negative", sample)
	case f.lockTimeout < time.Millisecond:
		// 0 is no limit to PostgreSQL's lock_timeout but 30s to dedupe.Options:
		// refuse it rather than pick one.
		return usagef("--lock-timeout %s: must be at least 1ms", f.lockTimeout)
	}
	return nil
}

func runDedupe(ctx context.Context, c *call) error {
	f := c.flags.(*dedupeFlags)
	batch, sample := f.batch, f.sample
	pool, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()

	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('payments') IS NOT NULL").Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return errors.New("no payments table in this database (on its search_path): nothing to merge; 'paylock migrate' creates the schema")
	}
	r, err := dedupe.Inspect(ctx, pool, sample)
	if err != nil {
		return err
	}
	w := c.stdout
	writeDedupeReport(w, r)
	batches := (r.Groups + batch - 1) / batch
	if f.dryRun {
		fmt.Fprintln(w)
		if r.Groups == 0 && r.IndexValid {
			fmt.Fprintln(w, "dry run: nothing to do; the table has no duplicates and the index is valid.")
			return nil
		}
		fmt.Fprintf(w, "dry run: nothing changed. 'paylock dedupe' would move %s of %s into %s in %s of up to %s,\n",
			plural(r.Extra, "row", "rows"), plural(r.Groups, "key", "keys"), dedupe.Table, plural(batches, "batch", "batches"), plural(batch, "key", "keys"))
		fmt.Fprintf(w, "keeping the lowest id of each key under its advisory lock, then %s.\n", indexPlan(r))
		return nil
	}
	if r.Groups == 0 && r.IndexValid {
		fmt.Fprintln(w, "\nnothing to do.")
		return nil
	}

	fmt.Fprintln(w)
	bar := newProgressBar(w, term.IsTerminal(w))
	res, err := dedupe.Run(ctx, pool, dedupe.Options{Batch: batch, LockTimeout: f.lockTimeout, Progress: bar.update})
	bar.done()
	fmt.Fprintf(w, "merged %s: %s moved into %s in %s (%s), %s\n",
		plural(res.Keys, "key", "keys"), plural(int(res.RowsMoved), "row", "rows"), dedupe.Table, plural(res.Batches, "batch", "batches"), plural(res.Passes, "pass", "passes"), res.Elapsed.Round(time.Millisecond))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted after %s; every finished batch is committed: run 'paylock dedupe' again to continue", plural(res.Batches, "batch", "batches"))
		}
		return err
	}
	ix := res.Index
	switch {
	case ix.AlreadyValid:
		fmt.Fprintf(w, "unique index %s: already valid\n", payment.UniqueIndex)
	default:
		fmt.Fprintf(w, "unique index %s: built concurrently in %s (%s, %d invalid dropped), valid\n",
			payment.UniqueIndex, ix.BuildDuration.Round(time.Millisecond), plural(ix.Builds, "build", "builds"), ix.DroppedInvalid)
	}
	fmt.Fprintf(w, "payments now has one row per key; 'paylock migrate' will report the schema up to date.\n")
	return nil
}

func indexPlan(r *dedupe.Report) string {
	switch {
	case r.IndexValid:
		return "keep the valid unique index " + payment.UniqueIndex
	case r.IndexExists:
		return "drop the INVALID index " + payment.UniqueIndex + " left by a failed build and rebuild it with CREATE UNIQUE INDEX CONCURRENTLY"
	}
	return "build the unique index " + payment.UniqueIndex + " with CREATE UNIQUE INDEX CONCURRENTLY"
}

func writeDedupeReport(w io.Writer, r *dedupe.Report) {
	fmt.Fprintf(w, "payments: %s; %s %s duplicates, %s beyond the first of their key\n",
		plural(r.Rows, "row", "rows"), plural(r.Groups, "key", "keys"), english.Has(r.Groups), plural(r.Extra, "row", "rows"))
	copies := make([]int, 0, len(r.ByCopies))
	for c := range r.ByCopies {
		copies = append(copies, c)
	}
	slices.Sort(copies)
	for _, c := range copies {
		fmt.Fprintf(w, "  %6d %s with %d rows\n", r.ByCopies[c], english.Noun(r.ByCopies[c], "key", "keys"), c)
	}
	for _, part := range []struct {
		title  string
		groups []dedupe.Group
	}{{"worst keys", r.Worst}, {"sample", r.Sample}} {
		if len(part.groups) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s (ids ascending, the first is kept; amount_cents in brackets):\n", part.title)
		for _, g := range part.groups {
			var b strings.Builder
			for i, id := range g.IDs {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "%d [%d]", id, g.Amounts[i])
			}
			fmt.Fprintf(w, "  service_id=%d line_item_id=%q  %d rows: %s\n", g.Key.ServiceID, g.Key.LineItemID, len(g.IDs), b.String())
		}
	}
	fmt.Fprintf(w, "quarantine %s: %d rows\n", dedupe.Table, r.Quarantined)
	state := "missing"
	switch {
	case r.IndexValid:
		state = "valid"
	case r.IndexExists:
		state = "INVALID (left by a failed build; it will be replaced)"
	}
	fmt.Fprintf(w, "unique index %s: %s\n", payment.UniqueIndex, state)
}

// progressBar draws dedupe's progress: a bar redrawn in place on a
// terminal, otherwise a plain line at most once a second and at the end of
// each pass.
type progressBar struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgressBar(w io.Writer, tty bool) *progressBar { return &progressBar{w: w, tty: tty} }

func (b *progressBar) update(p dedupe.Progress) {
	complete := p.KeysDone == p.KeysTotal
	if !b.tty {
		if complete || time.Since(b.last) >= time.Second {
			b.last = time.Now()
			fmt.Fprintf(b.w, "pass %d: %d/%s merged, %s moved, %s, %s\n",
				p.Pass, p.KeysDone, plural(p.KeysTotal, "key", "keys"), plural(int(p.RowsMoved), "row", "rows"), plural(p.Batches, "batch", "batches"), p.Elapsed.Round(time.Millisecond))
		}
		return
	}
	const width = 30
	filled := width * p.KeysDone / max(p.KeysTotal, 1)
	fmt.Fprintf(b.w, "\r\x1b[2Kpass %d [%s%s] %3d%%  %d/%s  %s moved  %s",
		p.Pass, strings.Repeat("#", filled), strings.Repeat(".", width-filled), 100*p.KeysDone/max(p.KeysTotal, 1),
		p.KeysDone, plural(p.KeysTotal, "key", "keys"), plural(int(p.RowsMoved), "row", "rows"), p.Elapsed.Round(100*time.Millisecond))
	b.drawn = true
	if complete {
		fmt.Fprintln(b.w)
		b.drawn = false
	}
}

// done ends a bar left mid-line (by an error or Ctrl-C).
func (b *progressBar) done() {
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}

// plural is n and the noun that agrees with it: "1 key", "2 keys".
func plural(n int, one, many string) string { return english.Count(n, one, many) }
