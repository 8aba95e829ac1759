package entity

import (
	"context"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Settings an fn makes for its transaction alone (SET LOCAL, set_config(...,
// true)). A call of its own ends them with its transaction; in a group they
// would survive the member's RELEASE SAVEPOINT and reach every member after
// it. So, before the first statement of fn's that may change a setting,
// the member reads the settings as they are (one round trip, only then);
// once fn returned, the settings it changed are set back, in a round trip
// before the member's write (see settle), before the next member's turn.
// A setting changed from
// inside a function or a DO block, with nothing in fn's SQL text that says
// so, is not seen.

// settingsSnap holds the transaction's settings before an fn changed them:
// the settable ones, and the custom ones (a dot in the name, which
// pg_settings does not list) that fn's statements name, nil where one was
// not defined.
type settingsSnap struct {
	names, values []string
	custom        map[string]*string
}

// settable are the settings a user's SET may change and a restore may set
// back; transaction_* are set by SET TRANSACTION, which must come first.
const settable = `FROM pg_settings WHERE context IN ('user', 'superuser') AND name NOT LIKE 'transaction\_%'`

// snapshotSQL reads the settable settings as they are, and the custom
// settings $1 names.
const snapshotSQL = `SELECT coalesce(array_agg(name), '{}'), coalesce(array_agg(current_setting(name)), '{}'),
(SELECT coalesce(array_agg(current_setting(n, true) ORDER BY i), '{}') FROM unnest($1::text[]) WITH ORDINALITY AS c(n, i)) ` + settable

// customSQL reads the custom settings $1 names.
const customSQL = `SELECT coalesce(array_agg(current_setting(n, true) ORDER BY i), '{}') FROM unnest($1::text[]) WITH ORDINALITY AS c(n, i)`

// restoreSQL sets back, for the rest of the transaction, the settable
// settings that differ from the snapshot ($1 names, $2 values), and the
// custom ones ($3 names, $4 values; one that was not defined becomes
// empty, as a later transaction of the session finds it). It returns how
// many it set, and whether the transaction is read-only.
const restoreSQL = `SELECT count(*), current_setting('transaction_read_only')::bool FROM (
SELECT set_config(name, v.value, true) FROM pg_settings s
JOIN unnest($1::text[], $2::text[]) AS v(name, value) USING (name)
WHERE s.context IN ('user', 'superuser') AND current_setting(name) IS DISTINCT FROM v.value
UNION ALL
SELECT set_config(c.name, coalesce(c.value, ''), true) FROM unnest($3::text[], $4::text[]) AS c(name, value)
WHERE current_setting(c.name, true) IS DISTINCT FROM coalesce(c.value, '')
) AS restored`

// setsConfig reports whether sql may change a setting: a statement in it
// begins with SET or RESET (SET TRANSACTION and SET SESSION too), or it
// calls set_config. A false positive costs a round trip; a false negative
// (a setting changed in a function fn calls) leaves the setting to the
// members after it.
func setsConfig(sql string) bool {
	lower := strings.ToLower(sql)
	if strings.Contains(lower, "set_config") {
		return true
	}
	for stmt := range strings.SplitSeq(lower, ";") {
		stmt = strings.TrimLeft(stmt, " \t\r\n(")
		if strings.HasPrefix(stmt, "set") || strings.HasPrefix(stmt, "reset") {
			rest := strings.TrimPrefix(strings.TrimPrefix(stmt, "re"), "set")
			if rest == "" || strings.ContainsAny(rest[:1], " \t\r\n") {
				return true
			}
		}
	}
	return false
}

// customName matches what may be a custom setting's name.
var customName = regexp.MustCompile(`[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$.]*`)

// customNames returns the names of custom settings that sqls and the
// strings among args may set, lower-cased, with what a statement that
// names a table's column adds (harmless: such a setting is not defined).
func customNames(sqls []string, args []any) []string {
	var names []string
	add := func(s string) {
		for _, n := range customName.FindAllString(strings.ToLower(s), -1) {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	for _, s := range sqls {
		add(s)
	}
	for _, a := range args {
		if s, ok := a.(string); ok {
			add(s)
		}
	}
	return names
}

// noteSettings reads the settings before fn's statements sqls (with args)
// if they may change one: all of them on the first such statement, and
// the custom settings a later one names that were not read yet.
func (t *memberTx[K, V]) noteSettings(ctx context.Context, sqls []string, args []any) error {
	sets := false
	for _, sql := range sqls {
		sets = sets || setsConfig(sql)
	}
	if !sets {
		return nil
	}
	t.mu.Lock()
	snap, closed := t.snap, t.closed
	t.mu.Unlock()
	if closed {
		return nil
	}
	names := customNames(sqls, args)
	if snap != nil {
		names = slices.DeleteFunc(names, func(n string) bool { _, ok := snap.custom[n]; return ok })
		if len(names) == 0 {
			return nil
		}
	}
	var values []*string
	if snap == nil {
		snap = &settingsSnap{custom: map[string]*string{}}
		if err := t.g.conn.QueryRow(ctx, snapshotSQL, pgx.QueryExecModeSimpleProtocol, names).Scan(&snap.names, &snap.values, &values); err != nil {
			return err
		}
	} else if err := t.g.conn.QueryRow(ctx, customSQL, pgx.QueryExecModeSimpleProtocol, names).Scan(&values); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, n := range names {
		snap.custom[n] = values[i]
	}
	t.snap = snap
	return nil
}

// queueRestore queues on b what sets back the settings snap holds, if any.
func queueRestore(b *pgx.Batch, snap *settingsSnap) bool {
	if snap == nil {
		return false
	}
	names := make([]string, 0, len(snap.custom))
	values := make([]*string, 0, len(snap.custom))
	for n, v := range snap.custom {
		names, values = append(names, n), append(values, v)
	}
	b.Queue(restoreSQL, snap.names, snap.values, names, values)
	return true
}
