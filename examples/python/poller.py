"""with_payment for psycopg 3: the same lock, row and bounds as paylock's Go
payment.With, so Python and Go pollers can update the same payments at once,
and a poller built on it. Copy this file. Needs psycopg 3 and xxhash (Debian:
python3-psycopg python3-xxhash, for /usr/bin/python3 only) and the schema
of `paylock migrate` (or `paylock migrate --print-sql`). See docs/INTEROP.md.
"""
import contextvars
import copy
import re

import psycopg
import xxhash
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


def key_id(namespace, *parts):
    """lock.NewKey(namespace, *parts).ID() without the database: the xxhash64
    of each element as a uvarint length and its UTF-8 bytes, signed."""
    enc = bytearray()
    for b in (s.encode() for s in (namespace, *parts)):
        n = len(b)
        while n >= 0x80:
            enc.append(n & 0x7F | 0x80)
            n >>= 7
        enc += bytes([n]) + b
    h = xxhash.xxh64_intdigest(bytes(enc))
    return h - (1 << 64) if h >= 1 << 63 else h


def key_string(namespace, *parts):
    """lock.Key.String: what the /*paylock_key='...'*/ comment carries."""
    return "/".join(re.sub(rb"[^A-Za-z0-9_.~-]", lambda m: b"%%%02X" % m[0][0], s.encode()).decode()
                    for s in (namespace, *parts))


def service_id_text(service_id):
    """The service id as the key holds it: a positive bigint in canonical
    decimal, "07" as "7". Not int(): it also takes "1_000", " 7" and
    non-ASCII digits, which Go's key would not."""
    s = str(service_id) if isinstance(service_id, int) and not isinstance(service_id, bool) else service_id
    if not isinstance(s, str) or not re.fullmatch(r"[0-9]+", s) or not 0 < int(s) < 1 << 63:
        raise ValueError(f"service id {service_id!r} is not a positive bigint in decimal")
    return str(int(s))


class ReentrantError(psycopg.ProgrammingError):
    """with_payment was called, from inside fn, for the payment fn holds:
    the inner call would wait for the outer one forever (Go's ErrReentrant)."""


_held = contextvars.ContextVar("paylock_held", default=frozenset())

# Go's payment.Table.Ensure, with psycopg's placeholders.
ENSURE = """INSERT INTO payments (service_id, line_item_id)
SELECT %(s)s::bigint, %(l)s::text WHERE NOT EXISTS (SELECT FROM payments WHERE service_id = %(s)s::bigint AND line_item_id = %(l)s::text)
ON CONFLICT DO NOTHING"""


def with_payment(conn, service_id, line_item_id, fn, *,
                 lock_timeout_ms=0, idle_timeout_ms=60_000, statement_timeout_ms=None):
    """Runs fn(payment), a dict, on the payment (service_id, line_item_id),
    created if it is missing, and saves what fn changed. Returns the payment
    and whether this call created it. conn must not be in a transaction
    (autocommit mode). The bounds are Go's defaults: wait for the lock
    without limit (0), let the server end the transaction, and release the
    lock, once it sits idle for idle_timeout_ms, leave statement_timeout as
    the server has it (None). None for any bound leaves it as the server
    has it."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError("with_payment inside a transaction")
    service_id = service_id_text(service_id)
    lock_id = key_id("payments", service_id, line_item_id)
    if lock_id in _held.get():
        raise ReentrantError(f"with_payment for payments/{service_id}/{line_item_id} inside its own fn")
    key = key_string("payments", service_id, line_item_id).replace("%", "%%")
    bounds = {"lock_timeout": lock_timeout_ms, "idle_in_transaction_session_timeout": idle_timeout_ms,
              "statement_timeout": statement_timeout_ms}
    bounds = {k: str(int(v)) for k, v in bounds.items() if v is not None}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE")
        if bounds:  # None for all three: nothing to set
            cur.execute("SELECT " + ", ".join(f"set_config('{k}', %s, true)" for k in bounds), list(bounds.values()))
        cur.execute(f"SELECT pg_advisory_xact_lock(%s) /*paylock_key='{key}'*/", (lock_id,))
        created = cur.execute(ENSURE, {"s": service_id, "l": line_item_id}).rowcount == 1
        before = cur.execute("""SELECT * FROM payments WHERE service_id = %s AND line_item_id = %s
            ORDER BY id LIMIT 1 FOR NO KEY UPDATE""", (service_id, line_item_id)).fetchone()
        payment = copy.deepcopy(before)
        token = _held.set(_held.get() | {lock_id})
        try:
            fn(payment)
        finally:
            _held.reset(token)
        if any(payment[k] != before[k] for k in ("id", "service_id", "line_item_id", "created_at")):
            raise ValueError("fn changed the payment's identity")
        if payment != before:
            cur.execute("""UPDATE payments SET amount_cents = %s, currency = %s, status = %s, data = %s,
                updated_at = now() WHERE service_id = %s AND id = %s""", (payment["amount_cents"], payment["currency"],
                payment["status"], Jsonb(payment["data"]) if payment["data"] is not None else None,
                payment["service_id"], payment["id"]))
    return payment, created


# The poller: everything above is the library, docs/INTEROP.md shows it.
def main(argv):
    """Applies payment events to the payments table with WORKERS threads, each
    on its own connection. Where a real poller fetches events from the
    provider, this one reads them from stdin, one JSON object per line:
    {"event": "ev_1", "service_id": "7", "line_item_id": "li_123", "amount_cents": 1250}.
    Each adds amount_cents to the payment and its event id to the list in
    data, once: an event already in the list (a redelivery) is skipped. It
    prints "ready" once every worker has its connection, then one JSON line
    per event; a failed event stops it with exit status 1. WORKERS (default
    4) must be a positive whole number: otherwise it exits with status 2.
    Without DATABASE_URL (or with it empty) it connects as psql does: with
    the PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) and libpq's
    defaults.

      DATABASE_URL=postgres://... python3 poller.py [WORKERS]
      DATABASE_URL=postgres://... python3 poller.py --check-keys testdata/keys.json
    """
    import json
    import os
    import queue
    import sys
    import threading
    import time

    url = os.environ.get("DATABASE_URL", "")  # "": PG* and libpq's defaults
    if argv[1:2] == ["--check-keys"]:
        sys.exit(check_keys(url, argv[2]))
    arg = argv[1] if len(argv) > 1 else "4"
    if not re.fullmatch(r"[0-9]+", arg) or int(arg) < 1:
        # with no worker every event would be read and none applied
        print(f"poller: WORKERS {arg!r} is not a positive whole number", file=sys.stderr)
        sys.exit(2)
    workers = int(arg)
    conns = [psycopg.connect(url, autocommit=True) for _ in range(workers)]
    events, out, failed = queue.SimpleQueue(), threading.Lock(), []

    def work(conn):
        while (line := events.get()) is not None:
            if failed:
                continue
            ev = json.loads(line)
            log = {"event": ev["event"], "payment": f"{ev['service_id']}/{ev['line_item_id']}"}

            def apply(p):
                if ev["event"] in (p["data"] or []):
                    log["skipped"] = "already applied"
                    return
                log["amount_before"] = p["amount_cents"]
                p["amount_cents"] += ev["amount_cents"]
                p["data"] = (p["data"] or []) + [ev["event"]]

            start = time.time_ns()
            try:
                p, created = with_payment(conn, ev["service_id"], ev["line_item_id"], apply)
            except Exception as e:
                failed.append(e)
                print(f"poller: event {ev['event']}: {e!r}", file=sys.stderr, flush=True)
                continue
            log.update(payment_id=p["id"], created=created, amount_cents=p["amount_cents"],
                       started_ns=start, finished_ns=time.time_ns())
            with out:
                print(json.dumps(log), flush=True)
        conn.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            events.put(line)
    for _ in threads:
        events.put(None)
    for t in threads:
        t.join()
    sys.exit(1 if failed else 0)


def check_keys(url, path):
    """Compares this file's ids and key strings with the golden keys of
    testdata/keys.json, both computed here (key_id) and by the server
    (paylock_key_id); prints each mismatch and returns 1 if there is one."""
    import json

    bad = 0
    with open(path, encoding="utf-8") as f, psycopg.connect(url, autocommit=True) as conn:
        keys = json.load(f)
        for k in keys:
            want = int(k["id_str"])
            sql = conn.execute("SELECT paylock_key_id(%s, VARIADIC %s::text[])", (k["namespace"], k["parts"])).fetchone()[0]
            got = (key_id(k["namespace"], *k["parts"]), sql, key_string(k["namespace"], *k["parts"]))
            if got != (want, want, k["key"]):
                bad += 1
                print(f"key {k['key']}: key_id {got[0]}, paylock_key_id {got[1]}, key_string {got[2]!r};"
                      f" want {want} and {k['key']!r}")
    print(f"{len(keys) - bad} of {len(keys)} keys match")
    return 1 if bad else 0


if __name__ == "__main__":
    import sys

    main(sys.argv)
