package txn

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

const (
	connCheckSetting = "client_connection_check_interval"
	connCheckMillis  = "1000"
	// connCheckKey is where a connection's answer is kept, in
	// pgconn.PgConn.CustomData.
	connCheckKey = "paylock.conn_check"
)

// connCheckSQL sets client_connection_check_interval for the statement's
// own transaction only: run outside a transaction block it changes nothing
// that outlives it.
const connCheckSQL = "SELECT set_config('" + connCheckSetting + "', '" + connCheckMillis + "', true)"

// Probe returns s with Standby set to whether conn's server is a hot
// standby, as it last reported, and ConnCheck set to whether it accepts
// client_connection_check_interval. PostgreSQL before 14 does not know it,
// PostgreSQL refuses a non-zero value on a platform that can't tell that a
// socket closed (Windows; before 15, anything but Linux), and other engines
// that speak the protocol may refuse it too; a transaction that set it there
// would fail at BEGIN, every time.
//
// The first call on a connection asks the server, with one statement outside
// any transaction (it changes nothing); the answer is kept on the connection
// (pgconn.PgConn.CustomData), so later calls cost nothing. An ERROR from the
// server means "not accepted"; any other failure (the connection broke, ctx
// ended) is returned. conn must be idle, as before BEGIN: on a connection
// already in a transaction Probe asks nothing and leaves ConnCheck false.
func (s Settings) Probe(ctx context.Context, conn *pgx.Conn) (Settings, error) {
	s.ConnCheck = false
	pc := conn.PgConn()
	// What the server last reported, at no cost (see Settings.Standby).
	s.Standby = pc.ParameterStatus("in_hot_standby") == "on"
	if ok, known := pc.CustomData()[connCheckKey].(bool); known {
		s.ConnCheck = ok
		return s, nil
	}
	if pc.TxStatus() != 'I' {
		return s, nil
	}
	_, err := conn.Exec(ctx, connCheckSQL, pgx.QueryExecModeSimpleProtocol)
	switch {
	case err == nil:
		s.ConnCheck = true
	case !serverError(err):
		return s, fmt.Errorf("probe %s: %w", connCheckSetting, err)
	}
	pc.CustomData()[connCheckKey] = s.ConnCheck
	return s, nil
}
