package txn

import "strings"

// The lock statements. Every lock paylock takes is PostgreSQL's
// transaction-scoped advisory lock on one bigint, released by COMMIT or
// ROLLBACK: pg_advisory_xact_lock waits for it, pg_try_advisory_xact_lock
// takes it only if it is free. This file writes every statement that calls
// them; lock, entity and the CLI's bench send these texts and no others.
//
// id is the lock id as an SQL expression of type bigint: a parameter ("$1",
// or "$1::bigint" where the server must not infer another type), a literal
// (database/sql's statements, which take no parameters, so that the comment
// can name the key), a pgbench variable. A statement given keys ends with
// their comment (see LockSQL); given none, it has no comment.

func lockCall(id string) string    { return "pg_advisory_xact_lock(" + id + ")" }
func tryLockCall(id string) string { return "pg_try_advisory_xact_lock(" + id + ")" }

// AcquireSQL waits for the lock id.
func AcquireSQL(id string, keys ...string) string { return LockSQL(lockCall(id), keys...) }

// TryAcquireSQL takes the lock id if it is free and returns whether it did,
// a boolean. It never waits.
func TryAcquireSQL(id string, keys ...string) string { return LockSQL(tryLockCall(id), keys...) }

// TryAcquireRowSQL takes the lock id if it is free and returns one row if it
// did, none if not: a statement that drivers run through ExecContext, which
// reports the rows' count.
func TryAcquireRowSQL(id string, keys ...string) string {
	return LockSQL("1 WHERE "+tryLockCall(id), keys...)
}

// AcquireAllSQL waits for the locks whose ids are in the bigint[] parameter
// $1, one after another in the array's order: unnest yields the array in
// order and each row's lock is taken as the row is produced.
func AcquireAllSQL(keys ...string) string {
	return LockSQL(lockCall("k")+" FROM unnest($1::bigint[]) AS k", keys...)
}

// WaitSQL waits for the lock id and returns how long it waited, as the
// server measured it: statement_timestamp() is when the statement started
// and clock_timestamp(), evaluated after the lock, when it was granted.
func WaitSQL(id string, keys ...string) string {
	return LockSQL("clock_timestamp() - statement_timestamp() FROM "+lockCall(id), keys...)
}

// TryOrFailSQL takes the lock id if no other session holds it or waits for
// it, and otherwise fails with a division by zero (SQLSTATE 22012), so that
// the statements pipelined after it don't run. It never waits.
func TryOrFailSQL(id string) string { return "SELECT 1 / " + tryLockCall(id) + "::int" }

// TrySQL is TryOrFailSQL of the parameter $1. It has a constant text, so it
// is prepared once per connection, where WaitSQL's, which names the key, is
// parsed in every call.
var TrySQL = TryOrFailSQL("$1::bigint")

// LockSQL returns "SELECT expr" followed by a sqlcommenter-style comment that
// names keys (lock.Key.String values, which escape everything but
// [A-Za-z0-9_.~-], so no key can end the comment or the quoted value), or
// by nothing when there are no keys. pg_stat_activity shows it for a waiting
// backend; `paylock locks` reads it.
func LockSQL(expr string, keys ...string) string {
	if len(keys) == 0 {
		return "SELECT " + expr
	}
	return "SELECT " + expr + " /*paylock_key='" + strings.Join(keys, ",") + "'*/"
}
