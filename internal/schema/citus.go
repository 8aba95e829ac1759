package schema

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/txn"
)

// ErrCitusWorker is payment.ErrCitusWorker.
var ErrCitusWorker = errors.New("payment: migrate: server is a Citus worker: run Migrate on the coordinator")

// ErrNotDistributed is payment.ErrNotDistributed.
var ErrNotDistributed = errors.New("payment: migrate: payments is a local table on the Citus coordinator")

// Node is the kind of server a session reaches, as Migrate sees it.
type Node int

const (
	// Plain is PostgreSQL without the citus extension in this database.
	Plain Node = iota
	// CitusCoordinator is the Citus node that owns the metadata (group 0).
	CitusCoordinator
	// CitusWorker is any other Citus node.
	CitusWorker
)

// DetectNode tells which kind of node q reaches and, on a worker, the
// coordinator's host:port as the worker's metadata records it ("" if it
// records none).
func DetectNode(ctx context.Context, q Querier) (node Node, coordinator string, err error) {
	var citus bool
	if err := queryRow(ctx, q, "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')", &citus); err != nil {
		return Plain, "", fmt.Errorf("payment: detect citus: %w", txn.Classify(ctx, err))
	}
	if !citus {
		return Plain, "", nil
	}
	var group int
	if err := queryRow(ctx, q, "SELECT groupid FROM pg_dist_local_group", &group); err != nil {
		return Plain, "", fmt.Errorf("payment: detect citus: %w", txn.Classify(ctx, err))
	}
	if group == 0 {
		return CitusCoordinator, "", nil
	}
	err = queryRow(ctx, q, `SELECT coalesce((SELECT nodename || ':' || nodeport FROM pg_dist_node
		WHERE groupid = 0 AND noderole = 'primary' LIMIT 1), '')`, &coordinator)
	if err != nil {
		return CitusWorker, "", fmt.Errorf("payment: detect citus: %w", txn.Classify(ctx, err))
	}
	return CitusWorker, coordinator, nil
}

// refuseWorker returns an error matching ErrCitusWorker, naming the
// coordinator, when q reaches a Citus worker; else the node.
func refuseWorker(ctx context.Context, q Querier) (Node, error) {
	node, coordinator, err := DetectNode(ctx, q)
	if err != nil || node != CitusWorker {
		return node, err
	}
	if coordinator == "" {
		coordinator = "not recorded on this worker (SELECT * FROM pg_dist_node WHERE groupid = 0 on the coordinator)"
	}
	return node, fmt.Errorf("%w: the coordinator is %s", ErrCitusWorker, coordinator)
}

func queryRow(ctx context.Context, q Querier, sql string, dst ...any) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := rows.Scan(dst...); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// distribute makes services a reference table and payments a table
// distributed by service_id, unless they are already, in tx. It refuses a
// payments table that existed before this transaction as a local table
// (ErrNotDistributed): the single-server schema (an identity column, a
// primary key on id alone) is not one Citus can distribute.
func distribute(ctx context.Context, tx pgx.Tx, existed bool) error {
	var distributed bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'payments'::regclass)").Scan(&distributed); err != nil {
		return err
	}
	if distributed {
		return nil
	}
	if existed {
		return fmt.Errorf("%w: it was created before Citus, with the single-server schema; "+
			"move its rows to a payments table Migrate creates on the coordinator (docs/SCALING.md)", ErrNotDistributed)
	}
	_, err := tx.Exec(ctx, `
		SELECT create_reference_table('services')
		WHERE NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'services'::regclass);
		SELECT create_distributed_table('payments', 'service_id')`)
	return err
}

// shardsValid is the part of UniqueIndexState a distributed payments table
// adds: on every shard placement, a valid unique index on (service_id,
// line_item_id). It returns true when payments is not distributed.
func shardsValid(ctx context.Context, q Querier) (bool, error) {
	var citus bool
	if err := queryRow(ctx, q, "SELECT to_regclass('pg_dist_partition') IS NOT NULL", &citus); err != nil || !citus {
		return true, err
	}
	var distributed bool
	if err := queryRow(ctx, q, "SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'payments'::regclass)", &distributed); err != nil || !distributed {
		return true, err
	}
	// run_command_on_placements puts each shard's name, quoted as an
	// identifier, in the command with format(): %L makes it a literal, so a
	// schema name holding a quote can't break the command (a failed
	// command would read as an invalid index, dropped and built again by
	// every Migrate).
	var valid bool
	err := queryRow(ctx, q, `SELECT coalesce(bool_and(success AND result = 't'), false)
		FROM run_command_on_placements('payments', $$SELECT EXISTS (SELECT FROM pg_index i
			WHERE i.indrelid = %L::regclass AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
			AND (SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
			     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
			    = ARRAY['service_id', 'line_item_id']::name[])$$)`, &valid)
	return valid, err
}

// Distributed is payment.Distributed.
func Distributed(ctx context.Context, q Querier) (bool, error) {
	var citus bool
	if err := queryRow(ctx, q, "SELECT to_regclass('pg_dist_partition') IS NOT NULL", &citus); err != nil || !citus {
		return false, err
	}
	var distributed bool
	err := queryRow(ctx, q, "SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = to_regclass('payments') AND partmethod = 'h')", &distributed)
	return distributed, err
}
