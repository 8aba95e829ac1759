package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/paylock/paylock/cmd/paylock/internal/term"
	"github.com/paylock/paylock/lock"
)

var cmdKey = &command{
	name:    "key",
	usage:   "NAMESPACE [PART...] | NAMESPACE/PART/...",
	summary: "print a key's lock id, its pg_locks columns and a psql query that finds it",
	help: `
The id is the one the library locks: xxhash64 of the key's length-prefixed
encoding, as a signed bigint. PostgreSQL shows a bigint advisory lock with its
high 32 bits in classid, its low 32 bits in objid and objsubid = 1.

Example:
  paylock key payments 7 li_123
  paylock key 'payments/7/li%20x'    # the escaped form 'paylock locks' prints

No database is needed.`,
	noDatabase: true,
	flags: func(fs *flag.FlagSet) any {
		f := new(keyFlags)
		fs.BoolVar(&f.json, "json", false, "print JSON")
		return f
	},
	validate: func(c *call) error { _, err := keyFromArgs(c.args); return err },
	run:      runKey,
}

// keyInfo is the JSON form of `paylock key`.
type keyInfo struct {
	Key       string            `json:"key"`
	Namespace string            `json:"namespace"`
	Parts     []string          `json:"parts"`
	Fields    map[string]string `json:"fields,omitempty"`
	ID        int64             `json:"id"`
	ClassID   uint32            `json:"classid"`
	ObjID     uint32            `json:"objid"`
	ObjSubID  int               `json:"objsubid"`
	Query     string            `json:"query"`
}

// keyFlags are paylock key's flags.
type keyFlags struct{ json bool }

func runKey(_ context.Context, c *call) error {
	k, err := keyFromArgs(c.args)
	if err != nil {
		return err
	}
	if note := paymentKeyNote(k); note != "" {
		fmt.Fprintln(c.stderr, term.Visible(note))
	}
	info := keyInfo{Key: k.String(), Namespace: k.Namespace(), Parts: k.Parts(), Fields: keyFields(k),
		ID: k.ID(), ClassID: k.ClassID(), ObjID: k.ObjID(), ObjSubID: 1, Query: keyQuery(k)}
	if c.flags.(*keyFlags).json {
		// The parts are the caller's, often pasted from a log: escape what
		// encoding/json leaves raw, as `paylock locks --json` does.
		var doc bytes.Buffer
		enc := json.NewEncoder(&doc)
		enc.SetIndent("", "  ")
		if err := enc.Encode(info); err != nil {
			return err
		}
		_, err := c.stdout.Write(term.EscapeJSON(doc.Bytes()))
		return err
	}
	fmt.Fprintf(c.stdout, "key       %s\n", info.Key)
	fmt.Fprintf(c.stdout, "entity    %s\n", humanKey(k))
	fmt.Fprintf(c.stdout, "id        %d\n", info.ID)
	fmt.Fprintf(c.stdout, "classid   %d\n", info.ClassID)
	fmt.Fprintf(c.stdout, "objid     %d\n", info.ObjID)
	fmt.Fprintf(c.stdout, "objsubid  1\n\n")
	fmt.Fprintf(c.stdout, "psql:\n%s\n", info.Query)
	return nil
}

// keyQuery is a psql query that lists who holds and who waits for k.
func keyQuery(k lock.Key) string {
	return strings.TrimSpace(fmt.Sprintf(`
SELECT l.pid, l.granted, l.mode, l.waitstart, a.application_name, a.client_addr,
       a.state, now() - a.xact_start AS xact_age, pg_blocking_pids(l.pid) AS blocked_by, a.query
FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.classid = %d AND l.objid = %d AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY l.granted DESC, l.waitstart;`, k.ClassID(), k.ObjID()))
}
