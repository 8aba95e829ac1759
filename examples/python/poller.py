"""The Python side of the cross-language race in payment/interop_test.go.

Not an example to copy: it imports the snippet of docs/INTEROP.md, which the
test extracts into a module, and drives it.

  DATABASE_URL=... python3 poller.py SNIPPET_DIR golden KEYS_JSON
  DATABASE_URL=... python3 poller.py SNIPPET_DIR race OP_PREFIX THREADS CALLS KEYS

golden prints, per key of KEYS_JSON, "ID_IN_PYTHON ID_FROM_SQL KEY_STRING".
race prints "ready" once every thread holds a connection, waits for a line on
stdin, then runs THREADS x CALLS calls of with_payment, each adding 1 to
amount_cents and appending its op id to data, and prints one line per call:
"KEY OP CREATED ID READ CALL_NS RETURN_NS".
"""
import json
import os
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])
import psycopg  # noqa: E402
from paylock_interop import key_id, key_string, with_payment  # noqa: E402

url = os.environ["DATABASE_URL"]
mode = sys.argv[2]

if mode == "golden":
    with psycopg.connect(url, autocommit=True) as conn:
        for k in json.load(open(sys.argv[3], encoding="utf-8")):
            sql_id = conn.execute("SELECT paylock_key_id(%s, VARIADIC %s::text[])",
                                  (k["namespace"], k["parts"])).fetchone()[0]
            print(key_id(k["namespace"], *k["parts"]), sql_id, key_string(k["namespace"], *k["parts"]))
    sys.exit(0)

prefix, threads, calls, nkeys = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
out, mu = [], threading.Lock()
ready, go = threading.Barrier(threads + 1), threading.Event()
errors = []


def worker(w):
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            ready.wait()
            go.wait()
            for i in range(calls):
                li, op, at = f"li_{(w + i) % nkeys}", f"{prefix}{w}.{i}", time.time_ns()
                seen = {}

                def add(payment):
                    seen["read"] = payment["amount_cents"]
                    payment["amount_cents"] += 1
                    payment["data"] = (payment["data"] or []) + [op]

                payment, created = with_payment(conn, 1, li, add)
                with mu:
                    out.append(f"1/{li} {op} {str(created).lower()} {payment['id']} {seen['read']} {at} {time.time_ns()}")
    except BaseException as e:  # reported below, after the barrier is released
        errors.append(e)
        ready.abort()


ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
for t in ts:
    t.start()
try:
    ready.wait()
except threading.BrokenBarrierError:
    pass
print("ready", flush=True)
sys.stdin.readline()
go.set()
for t in ts:
    t.join()
if errors:
    raise errors[0]
print("\n".join(out))
