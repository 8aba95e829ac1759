package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/english"
	"github.com/paylock/paylock/payment"
)

var cmdMigrate = &command{
	name:    "migrate",
	summary: "create the services and payments tables and the unique index, idempotently",
	help: `
Safe to run again, from several processes at once (it holds the advisory
lock paylock.migrate) and while pollers write: on an existing payments table
it builds the unique index with CREATE UNIQUE INDEX CONCURRENTLY, replacing an
INVALID one left by a failed build, and it waits for a build another session
(such as 'paylock dedupe') still runs instead of dropping it. On a payments
table that already holds duplicate (service_id, line_item_id) rows it
touches no row and no index: it creates only what else is missing (such as
the function paylock_key_id, saying so), lists the worst groups and exits 1:
run 'paylock dedupe' to merge them, then migrate again. Needs a direct connection, not pgbouncer in
transaction pooling mode. On a Citus coordinator it makes services a
reference table and payments a table distributed by service_id, the unique
index on every shard; on a Citus worker it changes nothing and exits 1,
naming the coordinator.

--print-sql prints the same schema as one SQL script, for psql -v
ON_ERROR_STOP=1 -f, and connects to nothing.`,
	flags: func(fs *flag.FlagSet) any {
		return fs.Bool("print-sql", false, "print the schema as SQL for psql instead of applying it; needs no database")
	},
	validate: noArgs,
	run:      runMigrate,
}

func runMigrate(ctx context.Context, c *call) error {
	if *c.flags.(*bool) {
		_, err := io.WriteString(c.stdout, payment.SchemaScript())
		return err
	}
	pool, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	before, err := readSchemaState(ctx, pool)
	if err != nil {
		return err
	}
	err = payment.Migrate(ctx, pool)
	var dup *payment.DuplicatesError
	if errors.As(err, &dup) {
		// Migrate has installed what was missing but the index
		// (paylock_key_id, on a table older code made): say so.
		after, err := readSchemaState(ctx, pool)
		if err != nil {
			return err
		}
		for _, what := range before.created(after) {
			fmt.Fprintf(c.stdout, "created %s\n", what)
		}
		fmt.Fprintf(c.stdout, "payments holds duplicates: %s %s %s; the unique index %s was not created.\n",
			plural(dup.Groups, "key", "keys"), english.Has(dup.Groups), plural(dup.Extra, "extra row", "extra rows"), payment.UniqueIndex)
		fmt.Fprintln(c.stdout, "worst keys:")
		for i, k := range dup.Worst {
			fmt.Fprintf(c.stdout, "  service_id=%d line_item_id=%q  %s\n", k.ServiceID, k.LineItemID, plural(dup.Counts[i], "row", "rows"))
		}
		fmt.Fprintln(c.stdout, "run 'paylock dedupe --dry-run' to see the plan, then 'paylock dedupe' and migrate again.")
		return fmt.Errorf("%d duplicate groups; run 'paylock dedupe' first", dup.Groups)
	}
	if err != nil {
		return publicSchemaHint(err)
	}
	after, err := readSchemaState(ctx, pool)
	if err != nil {
		return err
	}
	for _, what := range before.created(after) {
		fmt.Fprintf(c.stdout, "created %s\n", what)
	}
	distributed, err := payment.Distributed(ctx, pool)
	if err != nil {
		return err
	}
	if distributed {
		fmt.Fprintf(c.stdout, "schema is up to date: services (a reference table), payments (distributed by service_id), unique index %s valid on every shard\n", payment.UniqueIndex)
		return nil
	}
	fmt.Fprintf(c.stdout, "schema is up to date: services, payments, unique index %s valid\n", payment.UniqueIndex)
	return nil
}

// schemaState is what of the schema a database has, as migrate reports it.
type schemaState struct {
	services, payments, keyID, index bool // index: UniqueIndex exists and is valid
}

// readSchemaState reads which of the objects Migrate makes exist, where
// Migrate makes them (the first schema of search_path; paylock_key_id in
// public).
func readSchemaState(ctx context.Context, pool *pgxpool.Pool) (schemaState, error) {
	var st schemaState
	err := pool.QueryRow(ctx, `SELECT to_regclass('services') IS NOT NULL, to_regclass('payments') IS NOT NULL,
		to_regprocedure('public.paylock_key_id(text, text[])') IS NOT NULL,
		EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass($1) AND indisvalid)`,
		payment.UniqueIndex).Scan(&st.services, &st.payments, &st.keyID, &st.index)
	if err != nil {
		return st, fmt.Errorf("read the schema: %w", err)
	}
	return st, nil
}

// created lists what after has and st has not, as migrate prints it.
func (st schemaState) created(after schemaState) []string {
	var out []string
	for _, o := range []struct {
		before, after bool
		what          string
	}{
		{st.services, after.services, "table services (id bigint primary key, name text)"},
		{st.payments, after.payments, "table payments (service_id references services, line_item_id, amount_cents, currency, status, data, ...)"},
		{st.keyID, after.keyID, "function paylock_key_id(namespace text, VARIADIC parts text[]): a key's lock id in SQL"},
		{st.index, after.index, "unique index " + payment.UniqueIndex + " on payments (service_id, line_item_id)"},
	} {
		if !o.before && o.after {
			out = append(out, o.what)
		}
	}
	return out
}

// publicSchemaHint adds to a refusal to create in schema public what to do:
// Migrate installs paylock_key_id there whatever search_path says, and since
// PostgreSQL 15 only the database owner may create in public by default.
func publicSchemaHint(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" && strings.Contains(pgErr.Message, "schema public") {
		return fmt.Errorf("%w; migrate installs the function paylock_key_id in schema public, whatever search_path says: "+
			"run it as a role that may CREATE there (by default, since PostgreSQL 15, the database owner) "+
			"or GRANT CREATE ON SCHEMA public to this one", err)
	}
	return err
}
