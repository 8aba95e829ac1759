// Package pgversion holds the oldest PostgreSQL paylock supports and the
// check that refuses an older server: every paylock command makes it once
// connected, and so does the test harness (internal/testing/pgtest), so an
// older server gets one sentence naming the minimum instead of the first SQL
// error it happens to raise (pg_locks.waitstart, initdb --no-instructions,
// client_connection_check_interval are all 14's).
package pgversion

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// Minimum is the oldest PostgreSQL major version paylock supports.
const Minimum = 14

// ErrTooOld is what Check returns, wrapped with the server's version, for a
// server older than Minimum. Its text is the sentence a user reads.
var ErrTooOld = errors.New("paylock needs PostgreSQL " + strconv.Itoa(Minimum) + " or newer")

// Querier is what Check reads the version through: a *pgx.Conn, a
// *pgxpool.Pool or a pgx.Tx.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Check returns an error matching ErrTooOld with [errors.Is] when q's server
// is older than Minimum, reading "paylock needs PostgreSQL 14 or newer; this
// server is PostgreSQL 13.23". It runs one query, which ctx bounds; when that
// query fails, Check returns its error wrapped.
func Check(ctx context.Context, q Querier) error {
	var num, version string
	if err := q.QueryRow(ctx, "SELECT current_setting('server_version_num'), current_setting('server_version')").
		Scan(&num, &version); err != nil {
		return fmt.Errorf("read the server's version: %w", err)
	}
	return check(num, version)
}

// check judges a server by its server_version_num (130023 for 13.23; 90624
// for 9.6.24) and names it by its server_version.
func check(num, version string) error {
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return fmt.Errorf("read the server's version: server_version_num %q is not a version number", num)
	}
	if n < Minimum*10000 {
		return fmt.Errorf("%w; this server is PostgreSQL %s", ErrTooOld, version)
	}
	return nil
}
