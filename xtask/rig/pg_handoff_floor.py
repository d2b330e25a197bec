"""The PostgreSQL hand-off floor of a release-then-acquire design, from plain libpq clients.

Answers two questions about docs/benchmarks.md's PostgreSQL hand-off row without the library:

1. What does a commit that calls pg_notify cost, with and without a session listening? (Samples
   of a bare UPDATE, UPDATE + pg_notify on an unheard channel and on a heard one, interleaved in
   random order, 1 ms apart.)
2. How long does a hand-off take between two processes that do only this: the holder releases
   with UPDATE + pg_notify, the waiter blocks on LISTEN and on the notification sends an
   UPDATE ... WHERE holder IS NULL? With the holder idle PAUSE seconds before each release (the
   bench pauses 0.3 s so the waiter is surely waiting), and with a short pause.

Usage: pip install psycopg2-binary; python3 xtask/rig/pg_handoff_floor.py [DSN]
(default DSN: host=127.0.0.1 user=postgres dbname=test). Creates and drops two tables.
"""
import multiprocessing as mp
import random
import select
import statistics
import sys
import time

import psycopg2

DSN = sys.argv[1] if len(sys.argv) > 1 else "host=127.0.0.1 user=postgres dbname=test"


def ms(xs):
    return statistics.median(xs) * 1000


def listener(ready, q):
    c = psycopg2.connect(DSN)
    c.autocommit = True
    c.cursor().execute("LISTEN probe_heard")
    ready.set()
    got = {}
    while select.select([c], [], [], 5) != ([], [], []):
        c.poll()
        now = time.monotonic()
        while c.notifies:
            n = c.notifies.pop(0)
            if n.payload == "stop":
                q.put(got)
                return
            got[n.payload] = now
    q.put(got)


def commit_cost(n=1000):
    c = psycopg2.connect(DSN)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("CREATE TABLE notify_probe (name text primary key, holder text)")
    cur.execute("INSERT INTO notify_probe VALUES ('k', 'a')")
    ready, q = mp.Event(), mp.Queue()
    p = mp.Process(target=listener, args=(ready, q))
    p.start()
    ready.wait()
    update = "UPDATE notify_probe SET holder = %s WHERE name = 'k'"
    notify = ("WITH u AS (UPDATE notify_probe SET holder = %s WHERE name = 'k' RETURNING name) "
              "SELECT count(pg_notify({}, {})) FROM u")
    kinds = {
        "UPDATE": update,
        "UPDATE + pg_notify, nobody listens": notify.format("'probe_unheard'", "name"),
        "UPDATE + pg_notify, a session listens": notify.format("'probe_heard'", "%s"),
    }
    times, sent = {k: [] for k in kinds}, {}
    order = list(kinds) * n
    random.shuffle(order)
    for i, kind in enumerate(order):
        heard = kind.endswith("a session listens")
        args = ("h%d" % i, "p%d" % i) if heard else ("h%d" % i,)
        t0 = time.monotonic()
        cur.execute(kinds[kind], args)
        if cur.description:
            cur.fetchall()
        times[kind].append(time.monotonic() - t0)
        if heard:
            sent["p%d" % i] = t0
        time.sleep(0.001)
    cur.execute("SELECT pg_notify('probe_heard', 'stop')")
    got = q.get()
    p.join()
    for kind, xs in times.items():
        print(f"  {kind:40} p50 {ms(xs):.3f} ms")
    print(f"  {'sent -> the listening process has it':40} p50 "
          f"{ms([got[k] - t for k, t in sent.items() if k in got]):.3f} ms")
    cur.execute("DROP TABLE notify_probe")


def waiter(n, ready, go, q):
    listen = psycopg2.connect(DSN)
    listen.autocommit = True
    listen.cursor().execute("LISTEN handoff_probe")
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    cur = conn.cursor()
    out = []
    ready.set()
    for _ in range(n):
        while True:
            select.select([listen], [], [])
            listen.poll()
            if listen.notifies:
                listen.notifies.clear()
                break
        woke = time.monotonic()
        cur.execute("UPDATE handoff_probe SET holder = 'w' WHERE name = 'k' AND holder IS NULL "
                    "RETURNING name")
        granted = cur.fetchone() is not None
        out.append((woke, time.monotonic(), granted))
        go.set()
    q.put(out)


def handoff(n, pause):
    c = psycopg2.connect(DSN)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("CREATE TABLE handoff_probe (name text primary key, holder text)")
    cur.execute("INSERT INTO handoff_probe VALUES ('k', 'h')")
    ready, go, q = mp.Event(), mp.Event(), mp.Queue()
    p = mp.Process(target=waiter, args=(n, ready, go, q))
    p.start()
    ready.wait()
    sent, confirmed = [], []
    for _ in range(n):
        cur.execute("UPDATE handoff_probe SET holder = 'h' WHERE name = 'k'")
        time.sleep(pause)
        go.clear()
        t0 = time.monotonic()
        cur.execute("WITH r AS (UPDATE handoff_probe SET holder = NULL WHERE name = 'k' AND "
                    "holder = 'h' RETURNING name) SELECT count(pg_notify('handoff_probe', name)) "
                    "FROM r")
        cur.fetchall()
        sent.append(t0)
        confirmed.append(time.monotonic())
        go.wait()
    out = q.get()
    p.join()
    cur.execute("DROP TABLE handoff_probe")
    assert all(g for *_, g in out), "a waiter's acquire was refused"
    print(f"  pause {pause * 1000:.0f} ms before each release, {n} hand-offs (p50):")
    print(f"    release sent -> confirmed     {ms([c - s for s, c in zip(sent, confirmed)]):.3f} ms")
    print(f"    release sent -> waiter wakes  {ms([w - s for s, (w, _, _) in zip(sent, out)]):.3f} ms")
    print(f"    acquire sent -> confirmed     {ms([d - w for w, d, _ in out]):.3f} ms")
    print(f"    total                         {ms([d - s for s, (_, d, _) in zip(sent, out)]):.3f} ms")


if __name__ == "__main__":
    print("commit cost (interleaved):")
    commit_cost()
    print("hand-off between two processes:")
    handoff(100, 0.3)
    handoff(300, 0.005)
