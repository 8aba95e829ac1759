// Package bench implements `paylock bench`: the ways to find-or-create-then-
// update a payment under contention, side by side on one server, in one run.
//
// Each strategy (see strategies) runs each workload (see workloads) for
// --duration, in --rounds rounds whose strategy order rotates, so drift in a
// shared machine hits all alike. Every op adds 1 to its payment's amount;
// after each run a check counts duplicate rows (rows beyond one per key) and
// lost updates (successful ops minus the sum of the amounts). When pgbench is
// found, paylock's statements run by pgbench in pipeline mode make a row of
// their own: the server-side limit.
package bench
