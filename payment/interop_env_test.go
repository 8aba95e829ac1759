package payment_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
)

// TestInteropPollerPGEnv: with DATABASE_URL unset, or empty, each example
// poller connects as psql does, with the PG* variables (here PGHOST, PGPORT,
// PGUSER, PGPASSWORD, PGDATABASE, the test server's), and applies its
// event, instead of failing on the missing variable.
func TestInteropPollerPGEnv(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	if _, err := pool.Exec(ctx, "INSERT INTO services VALUES (1, 'acme') ON CONFLICT DO NOTHING"); err != nil {
		t.Fatal(err)
	}
	cc := pool.Config().ConnConfig
	pg := []string{"PGHOST=" + cc.Host, fmt.Sprint("PGPORT=", cc.Port), "PGUSER=" + cc.User,
		"PGPASSWORD=" + cc.Password, "PGDATABASE=" + cc.Database, "PGAPPNAME=pgenv", "PYTHONDONTWRITEBYTECODE=1"}
	var env []string // the test's environment without DATABASE_URL or any PG* variable
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	k, applied := 0, 0 // applied: events of the languages this machine has
	for _, l := range languages {
		for _, how := range []string{"unset", "empty"} {
			t.Run(l.name+"/"+how, func(t *testing.T) {
				cmd := script(ctx, "", "", l.interp(t), example(t, l.poller...), "1")
				cmd.Env = append(slices.Clone(env), pg...)
				if how == "empty" {
					cmd.Env = append(cmd.Env, "DATABASE_URL=")
				}
				id := fmt.Sprintf("ev_pgenv_%s_%s", l.prefix, how)
				cmd.Stdin = strings.NewReader(event(id, k))
				k++
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				lines := strings.Split(strings.TrimSpace(string(out)), "\n")
				var e eventLog
				if err != nil || len(lines) != 2 || lines[0] != "ready" || json.Unmarshal([]byte(lines[1]), &e) != nil || e.Event != id || !e.Created {
					t.Fatalf("exit %v, stdout %q, stderr %q; want ready, then event %s creating its payment", err, out, stderr.String(), id)
				}
				applied++
			})
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM payments").Scan(&n); err != nil || n != applied {
		t.Errorf("%d payments (%v), want %d, one per event a poller applied", n, err, applied)
	}
}
