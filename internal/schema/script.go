package schema

import "fmt"

// Script returns schemaSQL (payment.Schema()) followed by the statements that
// build UniqueIndex the way Migrate's last steps do, as one script for psql
// (payment.SchemaScript). The build is CONCURRENTLY, so it can't run inside
// a transaction block; the checks before and after it stop the script,
// under psql's ON_ERROR_STOP, where Migrate would stop: duplicates in the
// way, or an INVALID index left by a failed build.
func Script(schemaSQL string) string {
	return `-- The schema of paylock's payments, as 'paylock migrate' creates it on one
-- PostgreSQL server (not Citus). Every statement is idempotent. Run it with
--   psql -v ON_ERROR_STOP=1 -f paylock.sql
-- and not with --single-transaction: the unique index is built CONCURRENTLY,
-- which does not block writers on a live table and can't run in a transaction.

` + schemaSQL + `
-- The unique index ` + UniqueIndex + `, the safety net under
-- the advisory lock. Stop here if payments holds duplicates: merge them first
-- ('paylock dedupe', which keeps the lowest id of each key), then run this again.
DO $paylock$
BEGIN
    IF to_regclass('public.` + UniqueIndex + `') IS NULL
       AND EXISTS (SELECT FROM payments GROUP BY service_id, line_item_id HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'paylock: payments holds duplicate (service_id, line_item_id) rows: merge them (paylock dedupe), then run this again';
    END IF;
END
$paylock$;

` + fmt.Sprintf(createIndexSQL, "CONCURRENTLY IF NOT EXISTS ") + `;

-- A failed build (a duplicate inserted meanwhile, a cancel) leaves the index
-- INVALID, and IF NOT EXISTS keeps it: say so instead of succeeding.
DO $paylock$
BEGIN
    IF NOT (SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.` + UniqueIndex + `'::regclass) THEN
        RAISE EXCEPTION 'paylock: index ` + UniqueIndex + ` is INVALID (a failed build left it): DROP INDEX CONCURRENTLY ` + UniqueIndex + `, then run this again';
    END IF;
END
$paylock$;
`
}
