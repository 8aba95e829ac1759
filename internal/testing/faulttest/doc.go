// Package faulttest holds paylock's fault tests: they kill clients, cut and
// stall their network, terminate backends, restart PostgreSQL, fail over to
// a standby and run behind pgbouncer, and after each fault check the
// invariants (one row per key, every acknowledged call applied exactly once,
// no failed call applied) and that the recorded history is linearizable per
// key (internal/testing/history).
//
// It is a package of its own so its test binary owns its PostgreSQL cluster:
// restarting it disturbs no other package's tests. docs/RELIABILITY.md lists
// the faults and the figures these tests log (go test -v).
package faulttest
