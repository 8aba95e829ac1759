package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/lock"
)

var cmdLocks = &command{
	name:    "locks",
	usage:   "[--key NAMESPACE PART...]",
	summary: "show advisory locks held and awaited in the database, with their keys, holders and waiters",
	help: `
For each advisory lock in the current database: its id as the library builds
it and as pg_locks shows it (classid, objid, objsubid), the entity and key
when they can be known, every holder (pid, application_name, client address,
state, transaction age, current query) and the queue of waiters with how long
each has waited. A holder that itself waits for another lock is followed to
the end of its blocking chain.

How the key is known: every lock statement the library waits in carries a
comment, /*paylock_key='payments/7/li_1'*/, escaped so no input can leave it.
A waiting backend's current query is that statement, so the key of every lock
someone waits for is read from the waiter and verified by recomputing its id.
A holder that has moved on to other statements no longer shows it: its lock is
listed with origin "unknown" until someone waits for it, which is exactly when
the key matters. Clients in other languages lock with the SQL function
paylock_key_id or with an id they compute themselves, and send the same
comment (docs/INTEROP.md); without it, the key is read from the function's
literal arguments, or the lock is "unknown".
Locks taken with two int4 keys, or waited for by statements with neither the
comment nor the function, are marked origin "other" (not taken by paylock).

--watch refreshes every interval (default 2s) until Ctrl-C; --watch 5s,
--watch=500ms or --watch 0.5 (seconds) sets it, from 100ms to 24h. Seeing
other sessions' queries needs the
pg_read_all_stats role (or superuser); without it PostgreSQL shows
"<insufficient privilege>", so the key of a lock those sessions wait for
can't be read: the lock is "unknown" (never "other"), and their client and
transaction age are shown as "?".

Other sessions choose their queries, application names and keys: in the
text output their control characters, bidi controls and invalid UTF-8 are
printed as Go escapes (\x1b, \r, \u202e, \xff), and the JSON output
escapes them as \uXXXX (invalid UTF-8 becomes U+FFFD), so none can act
on the terminal.

JSON (--json) fields: database, taken_at, citus (coordinator|worker, on a
Citus node only), locks[]: id, classid, objid, objsubid, origin
(paylock|other|unknown), key, key_from (waiter|holder|argument), namespace,
parts, fields, holders[], waiters[]; each holder or waiter: pid, mode,
application_name, client_addr, state, xact_age_s, waiting_s, blocked_by,
wait_event, query, and for holders waits_for[] (the chain), each: pid,
blocked_by, application_name, state, wait_event, query.`,
	flags: func(fs *flag.FlagSet) any {
		f := new(locksFlags)
		fs.BoolVar(&f.json, "json", false, "print JSON (one compact document per refresh with --watch)")
		fs.BoolVar(&f.key, "key", false, "show only the lock of the key given as arguments: NAMESPACE PART...")
		fs.Var(&f.watch, "watch", "refresh every `interval` (default 2s) until Ctrl-C")
		return f
	},
	rewrite:  joinWatchInterval,
	validate: validateLocks,
	run:      runLocks,
}

// locksFlags are paylock locks' flags.
type locksFlags struct {
	json, key bool
	watch     watchFlag
}

// watchFlag is --watch with an optional interval.
type watchFlag struct {
	on       bool
	interval time.Duration
}

func (w *watchFlag) IsBoolFlag() bool { return true }
func (w *watchFlag) String() string {
	if w == nil || !w.on {
		return ""
	}
	return w.interval.String()
}
func (w *watchFlag) Set(s string) error {
	switch s {
	case "true":
		w.on, w.interval = true, 2*time.Second
		return nil
	case "false":
		w.on = false
		return nil
	}
	d, err := parseInterval(s)
	if err != nil {
		return err
	}
	w.on, w.interval = true, d
	return nil
}

// minWatchInterval and maxWatchInterval bound --watch's interval: each
// refresh reads pg_locks and pg_stat_activity, which take the server's lock
// manager locks; a day between refreshes is no longer watching.
const (
	minWatchInterval = 100 * time.Millisecond
	maxWatchInterval = 24 * time.Hour
)

// watchRange names the intervals --watch takes, for its errors.
var watchRange = fmt.Sprintf("from %s to %s", minWatchInterval, strings.TrimSuffix(maxWatchInterval.String(), "0m0s"))

// parseInterval reads --watch's interval: a duration (500ms, 2s) or a number
// of seconds (0.5, 2), from minWatchInterval to maxWatchInterval.
func parseInterval(s string) (time.Duration, error) {
	d, ok := interval(s)
	switch {
	case !ok:
		return 0, fmt.Errorf("not a duration: want an interval such as 2s, 500ms or 0.5 (seconds), %s", watchRange)
	case d < minWatchInterval || d > maxWatchInterval:
		return 0, fmt.Errorf("out of range: the interval must be %s", watchRange)
	}
	return d, nil
}

// durationSyntax is what time.ParseDuration reads, whatever the value: a
// duration it refuses only for its size ("9999999h") is out of range, not
// unparsable.
var durationSyntax = regexp.MustCompile(`^[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+$`)

// interval reads s as a duration or a number of seconds, whatever its value;
// one too long for a time.Duration reads as the longest, so that it is out
// of range rather than wrapped around (1e10 seconds was negative).
func interval(s string) (time.Duration, bool) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, true
	}
	if durationSyntax.MatchString(s) {
		if strings.HasPrefix(s, "-") {
			return math.MinInt64, true
		}
		return math.MaxInt64, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) || math.IsNaN(f) {
		return 0, false
	}
	switch secs := f * float64(time.Second); {
	case secs >= math.MaxInt64:
		return math.MaxInt64, true
	case secs <= math.MinInt64:
		return math.MinInt64, true
	default:
		return time.Duration(secs), true
	}
}

// joinWatchInterval turns "--watch 5s" into "--watch=5s" so that the optional
// interval is not taken for a key part. A word that reads as an interval is
// joined even when out of range ("--watch 0s"), so that its error is about
// the interval; without --key no key part can follow, so any word that is
// not a flag is joined ("--watch abc"), and its error too is about the
// interval, not an argument.
func joinWatchInterval(args []string) []string {
	key := slices.ContainsFunc(args, func(a string) bool {
		return a == "--key" || a == "-key" || strings.HasPrefix(a, "--key=") || strings.HasPrefix(a, "-key=")
	})
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if (a == "--watch" || a == "-watch") && i+1 < len(args) {
			next := args[i+1]
			if _, ok := interval(next); ok || !key && next != "" && !strings.HasPrefix(next, "-") {
				out = append(out, a+"="+next)
				i++
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// locksReport is the JSON form of `paylock locks`. Field names are stable.
type locksReport struct {
	Database string    `json:"database"`
	TakenAt  time.Time `json:"taken_at"`
	// Citus is "coordinator" or "worker" on a Citus node: the report then
	// shows this node's advisory locks only (see citusNote).
	Citus string     `json:"citus,omitempty"`
	Locks []lockInfo `json:"locks"`
}

// citusNote is what writeLocks says on a Citus node about what it can't
// see: the RowLock strategy (a worker's) takes no advisory lock, and every
// caller's row lock and its waits are in the shards, on the workers.
var citusNote = map[string]string{
	"coordinator": "Citus coordinator: these are the advisory locks of callers connected here. Callers on workers (RowLock) take none;\n" +
		"every caller's row lock and wait is in a shard on a worker, not listed here: SELECT * FROM citus_lock_waits lists those waits.",
	"worker": "Citus worker: advisory locks of this node only, and callers here (RowLock) take none. Their waits are row locks\n" +
		"in the shards: SELECT * FROM citus_lock_waits on the coordinator lists them; paylock locks there shows the coordinator's callers.",
}

type lockInfo struct {
	ID        int64             `json:"id"`
	ClassID   uint32            `json:"classid"`
	ObjID     uint32            `json:"objid"`
	ObjSubID  int               `json:"objsubid"`
	Origin    string            `json:"origin"` // paylock, other or unknown
	Key       string            `json:"key,omitempty"`
	KeyFrom   string            `json:"key_from,omitempty"` // waiter, holder or argument
	Namespace string            `json:"namespace,omitempty"`
	Parts     []string          `json:"parts,omitempty"`
	Fields    map[string]string `json:"fields,omitempty"`
	Holders   []backend         `json:"holders"`
	Waiters   []backend         `json:"waiters"`
}

type backend struct {
	PID             int         `json:"pid"`
	Mode            string      `json:"mode"`
	ApplicationName string      `json:"application_name"`
	ClientAddr      string      `json:"client_addr"`
	State           string      `json:"state"`
	XactAgeS        float64     `json:"xact_age_s"`
	WaitingS        float64     `json:"waiting_s"` // 0 for a holder
	BlockedBy       []int       `json:"blocked_by"`
	WaitEvent       string      `json:"wait_event,omitempty"`
	Query           string      `json:"query"`
	WaitsFor        []chainLink `json:"waits_for,omitempty"` // holders: what this holder itself waits for
}

// chainLink is one backend a holder waits for, directly or through others.
type chainLink struct {
	PID             int    `json:"pid"`
	BlockedBy       []int  `json:"blocked_by"`
	ApplicationName string `json:"application_name"`
	State           string `json:"state"`
	WaitEvent       string `json:"wait_event,omitempty"`
	Query           string `json:"query"`
}

const sqlLocks = `
SELECT coalesce(l.pid, 0), l.granted, l.mode, l.classid::bigint, l.objid::bigint, l.objsubid::int,
       coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''), coalesce(a.state, ''),
       coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8,
       CASE WHEN l.granted THEN 0
            ELSE coalesce(extract(epoch FROM now() - coalesce(l.waitstart, a.query_start)), 0) END::float8,
       coalesce(a.wait_event_type || ':' || a.wait_event, ''), coalesce(a.query, ''),
       CASE WHEN l.granted THEN '{}'::int[] ELSE pg_blocking_pids(l.pid) END
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY l.classid, l.objid, l.objsubid, l.granted DESC, l.waitstart NULLS FIRST, l.pid`

// sqlBackends lists the client backends of the cluster, with who blocks
// those that wait for a lock, to follow a holder's own blocking chain.
const sqlBackends = `
SELECT a.pid, CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) ELSE '{}'::int[] END,
       coalesce(a.application_name, ''), coalesce(a.state, ''),
       coalesce(a.wait_event_type || ':' || a.wait_event, ''), coalesce(a.query, '')
FROM pg_stat_activity a WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()`

func validateLocks(c *call) error {
	if c.flags.(*locksFlags).key {
		_, err := keyFromArgs(c.args)
		return err
	}
	if len(c.args) > 0 {
		return usagef("unexpected argument %q (did you mean --key %s?)", c.args[0], strings.Join(c.args, " "))
	}
	return nil
}

func runLocks(ctx context.Context, c *call) error {
	f := c.flags.(*locksFlags)
	var only *lock.Key
	if f.key {
		k, err := keyFromArgs(c.args)
		if err != nil {
			return err
		}
		only = &k
		if note := paymentKeyNote(k); note != "" {
			fmt.Fprintln(c.stderr, term.Visible(note))
		}
	}
	watch := &f.watch
	asJSON := f.json

	pool, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()

	// Every string in a report comes from the server, and many from other
	// sessions: the text form escapes their control characters
	// (writeLocks), the JSON form those encoding/json leaves raw.
	render := func(w *bytes.Buffer) error {
		r, err := readLocks(ctx, pool, only)
		if err != nil {
			return err
		}
		if asJSON {
			var doc bytes.Buffer
			enc := json.NewEncoder(&doc)
			if !watch.on {
				enc.SetIndent("", "  ")
			}
			if err := enc.Encode(r); err != nil {
				return err
			}
			w.Write(term.EscapeJSON(doc.Bytes()))
			return nil
		}
		writeLocks(w, r, only)
		return nil
	}
	if !watch.on {
		var buf bytes.Buffer
		if err := render(&buf); err != nil {
			return err
		}
		_, err := c.stdout.Write(buf.Bytes())
		return err
	}
	tty := term.IsTerminal(c.stdout)
	t := time.NewTicker(watch.interval)
	defer t.Stop()
	for {
		var buf bytes.Buffer
		if err := render(&buf); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if tty {
			io.WriteString(c.stdout, "\x1b[H\x1b[2J") // home, clear: refresh in place like top
		}
		if !asJSON {
			fmt.Fprintf(&buf, "\n(refreshing every %s; Ctrl-C to stop)\n", watch.interval)
		}
		c.stdout.Write(buf.Bytes())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// commentKey finds the keys in a lock statement's sqlcommenter comment. The
// closing "'*/" may be missing: pg_stat_activity cuts a query at
// track_activity_query_size (1kB by default), which a long AcquireAll
// comment exceeds.
var commentKey = regexp.MustCompile(`/\*paylock_key='([A-Za-z0-9_.~%/,-]*)('\*/)?`)

// keysInQuery returns the keys named by query's paylock comment and by its
// calls of paylock_key_id with literal arguments (a non-Go client's), and
// whether it has either. A key cut short by the truncation, or a comment
// that names another key than the statement locks, parses to another id,
// which the caller's id check rejects.
func keysInQuery(query string) (keys []lock.Key, tagged bool) {
	keys, tagged = keysInCall(query)
	if m := commentKey.FindStringSubmatch(query); m != nil {
		tagged = true
		for _, s := range strings.Split(m[1], ",") {
			if k, err := lock.ParseKey(s); err == nil {
				keys = append(keys, k)
			}
		}
	}
	return keys, tagged
}

// readLocks reads the advisory locks of the current database, grouped per
// lock, and resolves their keys.
func readLocks(ctx context.Context, pool *pgxpool.Pool, only *lock.Key) (*locksReport, error) {
	r := &locksReport{Locks: []lockInfo{}}
	err := pool.QueryRow(ctx, "SELECT current_database(), now()").Scan(&r.Database, &r.TakenAt)
	if err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	r.TakenAt = r.TakenAt.UTC()
	var citus bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('pg_dist_local_group') IS NOT NULL").Scan(&citus); err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	if citus {
		err := pool.QueryRow(ctx, "SELECT CASE WHEN groupid = 0 THEN 'coordinator' ELSE 'worker' END FROM pg_dist_local_group").Scan(&r.Citus)
		if err != nil {
			return nil, fmt.Errorf("read locks: %w", err)
		}
	}
	rows, err := pool.Query(ctx, sqlLocks)
	if err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	var (
		b              backend
		granted        bool
		classID, objID int64
		sub            int
	)
	_, err = pgx.ForEachRow(rows, []any{&b.PID, &granted, &b.Mode, &classID, &objID, &sub,
		&b.ApplicationName, &b.ClientAddr, &b.State, &b.XactAgeS, &b.WaitingS, &b.WaitEvent, &b.Query, &b.BlockedBy},
		func() error {
			id := int64(uint64(classID)<<32 | uint64(objID))
			if n := len(r.Locks); n == 0 || r.Locks[n-1].ID != id || r.Locks[n-1].ObjSubID != sub {
				r.Locks = append(r.Locks, lockInfo{ID: id, ClassID: uint32(classID), ObjID: uint32(objID),
					ObjSubID: sub, Holders: []backend{}, Waiters: []backend{}})
			}
			l := &r.Locks[len(r.Locks)-1]
			b.XactAgeS, b.WaitingS = round(b.XactAgeS), round(b.WaitingS)
			if b.BlockedBy == nil {
				b.BlockedBy = []int{}
			}
			if granted {
				l.Holders = append(l.Holders, b)
			} else {
				l.Waiters = append(l.Waiters, b)
			}
			b = backend{}
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	if only != nil {
		r.Locks = slices.DeleteFunc(r.Locks, func(l lockInfo) bool { return l.ObjSubID != 1 || l.ID != only.ID() })
	}
	for i := range r.Locks {
		resolveKey(&r.Locks[i], only)
	}
	if err := addChains(ctx, pool, r); err != nil {
		return nil, err
	}
	return r, nil
}

func round(s float64) float64 { return float64(int64(s*1000)) / 1000 }

// hiddenQuery is what pg_stat_activity shows of another role's session to
// a role without pg_read_all_stats: the query, and with it the key, can't be
// read (nor the state, client address or transaction start).
const hiddenQuery = "<insufficient privilege>"

// hidden reports whether b's session is hidden from this role.
func (b backend) hidden() bool { return b.Query == hiddenQuery }

// resolveKey sets the lock's origin and key from the comments of its
// waiters' and holders' statements, each verified by its id. A waiter whose
// statement this role can't read proves nothing: its lock stays "unknown",
// never "other".
func resolveKey(l *lockInfo, only *lock.Key) {
	if l.ObjSubID != 1 { // two int4 keys: the library never takes those
		l.Origin = "other"
		return
	}
	l.Origin = "unknown"
	var found *lock.Key
	from := ""
	untagged := false
	for _, group := range []struct {
		name string
		bs   []backend
	}{{"waiter", l.Waiters}, {"holder", l.Holders}} {
		for _, b := range group.bs {
			keys, tagged := keysInQuery(b.Query)
			if group.name == "waiter" && !tagged && !b.hidden() {
				untagged = true
			}
			for _, k := range keys {
				if k.ID() == l.ID && found == nil {
					found, from = &k, group.name
				}
			}
		}
	}
	switch {
	case found != nil:
		l.Origin = "paylock"
	case untagged:
		l.Origin = "other" // someone waits for it with a statement paylock doesn't send
	}
	if found == nil && only != nil && only.ID() == l.ID {
		found, from = only, "argument"
	}
	if found != nil {
		l.Key, l.KeyFrom, l.Namespace, l.Parts, l.Fields = found.String(), from, found.Namespace(), found.Parts(), keyFields(*found)
	}
}

// addChains follows, for each holder that itself waits for a lock, who
// blocks it, and who blocks that one, to the end or a cycle.
func addChains(ctx context.Context, pool *pgxpool.Pool, r *locksReport) error {
	rows, err := pool.Query(ctx, sqlBackends)
	if err != nil {
		return fmt.Errorf("read backends: %w", err)
	}
	backends := map[int]chainLink{}
	var cl chainLink
	_, err = pgx.ForEachRow(rows, []any{&cl.PID, &cl.BlockedBy, &cl.ApplicationName, &cl.State, &cl.WaitEvent, &cl.Query},
		func() error {
			backends[cl.PID] = cl
			cl = chainLink{}
			return nil
		})
	if err != nil {
		return fmt.Errorf("read backends: %w", err)
	}
	for i := range r.Locks {
		for j := range r.Locks[i].Holders {
			h := &r.Locks[i].Holders[j]
			seen := map[int]bool{h.PID: true}
			for pid := h.PID; ; {
				link, ok := backends[pid]
				if !ok || len(link.BlockedBy) == 0 {
					break
				}
				next := link.BlockedBy[0]
				if pid == h.PID {
					h.BlockedBy = link.BlockedBy
					h.WaitEvent = link.WaitEvent
				}
				nl, ok := backends[next]
				if !ok { // not a client backend
					nl = chainLink{PID: next, BlockedBy: []int{}}
				}
				h.WaitsFor = append(h.WaitsFor, nl)
				if seen[next] { // a cycle: PostgreSQL's deadlock detector will break it
					break
				}
				seen[next] = true
				pid = next
			}
		}
	}
	return nil
}

// writeLocks renders r for people. Every string read from the server goes
// through visible or %q, so that no session can move the cursor, erase or
// forge lines, or reorder text on the reader's terminal.
func writeLocks(w io.Writer, r *locksReport, only *lock.Key) {
	counts := map[string]int{}
	for _, l := range r.Locks {
		counts[l.Origin]++
	}
	fmt.Fprintf(w, "database %s at %s: %s (%d paylock, %d other, %d unknown)\n",
		term.Visible(r.Database), r.TakenAt.Format("2006-01-02 15:04:05Z07:00"), plural(len(r.Locks), "advisory lock", "advisory locks"),
		counts["paylock"], counts["other"], counts["unknown"])
	if note := citusNote[r.Citus]; note != "" {
		fmt.Fprintln(w, note)
	}
	if len(r.Locks) == 0 {
		if only != nil {
			fmt.Fprintf(w, "nobody holds or waits for %s (id %d)\n", only, only.ID())
		}
		return
	}
	for _, l := range r.Locks {
		fmt.Fprintln(w)
		entity := "key unknown until someone waits for it"
		if slices.ContainsFunc(l.Waiters, backend.hidden) {
			entity = "key unknown: this role can't read the waiters' queries (pg_read_all_stats)"
		}
		if l.Key != "" {
			k, _ := lock.ParseKey(l.Key)
			entity = humanKey(k)
		} else if l.Origin == "other" {
			entity = "not taken by paylock"
		}
		fmt.Fprintf(w, "%s  [%s]\n", entity, l.Origin)
		if l.ObjSubID == 1 {
			fmt.Fprintf(w, "  id %d  classid %d  objid %d  objsubid 1", l.ID, l.ClassID, l.ObjID)
		} else {
			fmt.Fprintf(w, "  int4 keys (%d, %d)  classid %d  objid %d  objsubid %d", int32(l.ClassID), int32(l.ObjID), l.ClassID, l.ObjID, l.ObjSubID)
		}
		if l.Key != "" {
			fmt.Fprintf(w, "  key %s (from %s)", term.Visible(l.Key), l.KeyFrom)
		}
		fmt.Fprintln(w)
		for _, h := range l.Holders {
			xact := seconds(h.XactAgeS)
			if h.hidden() {
				xact = "?"
			}
			fmt.Fprintf(w, "  held by  %s  xact %s\n", describeBackend(h), xact)
			fmt.Fprintf(w, "           query: %s\n", shorten(h.Query, 100))
			if len(h.WaitsFor) > 0 {
				fmt.Fprintf(w, "           itself waits (%s):", term.Visible(h.WaitEvent))
				for _, cl := range h.WaitsFor {
					fmt.Fprintf(w, " -> pid %d (%q, %s: %s)", cl.PID, cl.ApplicationName, term.Visible(cl.State), shorten(cl.Query, 40))
				}
				fmt.Fprintln(w)
			}
		}
		if len(l.Holders) == 0 {
			fmt.Fprintln(w, "  held by  nobody (granted next)")
		}
		if len(l.Waiters) > 0 {
			fmt.Fprintf(w, "  waiting  %d\n", len(l.Waiters))
		}
		for i, wt := range l.Waiters {
			fmt.Fprintf(w, "    %d. %s  waiting %s  blocked by %v\n", i+1, describeBackend(wt), seconds(wt.WaitingS), wt.BlockedBy)
		}
	}
}

func describeBackend(b backend) string {
	client := term.Visible(b.ClientAddr)
	switch {
	case b.hidden():
		client = "?" // hidden, not a local socket
	case client == "":
		client = "local"
	}
	return fmt.Sprintf("pid %d  app %q  client %s  %s  %s", b.PID, b.ApplicationName, client, term.Visible(b.State), term.Visible(b.Mode))
}

func seconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Millisecond).String()
}

// shorten folds a query's line breaks, tabs and runs of spaces into single
// spaces, cuts it after n characters and escapes what is left with visible.
// A lone \r is not a line break: it is escaped, as the "\r" it is.
func shorten(s string, n int) string {
	var b strings.Builder
	space := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ' ' || c == '\t' || c == '\n' || (c == '\r' && i+1 < len(s) && s[i+1] == '\n') {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteByte(c)
	}
	s = b.String()
	cut := false
	for i := range s { // i steps over whole runes, and over each invalid byte
		if n == 0 {
			s, cut = s[:i], true
			break
		}
		n--
	}
	if cut {
		return term.Visible(s) + "..."
	}
	return term.Visible(s)
}
