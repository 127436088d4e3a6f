"""Servers in natural order at fleet size: the stored key ``servers.name_key`` vs the per-row
function ``natural_key()`` (issue 24 item 3; docs/performance.md "Natural order").

    .venv/bin/python -m bench natsort [--db PATH] [--runs 7]

On a grown fleet database (default: the one ``python -m bench fleet-pages`` keeps; it is
migrated first, which also times migration 29's backfill when the database is older), runs the
canned queries that list servers as shipped (``order by s.name_key``) and the same SQL ordered by
``natural_key(coalesce(s.display_name, s.hostname))`` (how they ordered before migration 29), on
one connection with the SQL functions every Datasette connection has; median wall time of
``--runs`` runs each, rows returned. ``admin_servers`` is timed for its first, a middle and its
last page of 50.
"""

import argparse
import re
import sqlite3
import statistics
import time

from server_monitor.core import natural, topology
from server_monitor.serving.queries import QUERIES
from server_monitor.storage import schema

PARAMS = {"_scope_all": 1, "_scope_servers": "[]", "_scope_processes": 1, "_actor_id": "admin", "group": "", "q": ""}
PER_ROW = "natural_key(coalesce(s.display_name, s.hostname))"


def timed(conn, sql, params, runs):
    """Median wall time in ms of ``runs`` executions and the row count."""
    times, rows = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = len(conn.execute(sql, params).fetchall())
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench natsort", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="/tmp/bench-fleet-pages/monitor.db")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    before = schema.migrate(args.db)
    print(f"migrate from version {before}: {(time.perf_counter() - t0) * 1000:.0f} ms")
    conn = sqlite3.connect(args.db)
    natural.register(conn)
    topology.register(conn)
    servers = conn.execute("SELECT count(*) FROM servers").fetchone()[0]
    print(f"{servers} servers, SQLite {sqlite3.sqlite_version}")
    cases = [("servers", {}), ("fleet_servers", {}), ("gpus", {}), ("processes", {}), ("disks", {})]
    cases += [("admin_servers", {"limit": 50, "offset": offset}) for offset in (0, servers // 2, max(0, servers - 50))]
    print(f"{'query':34} {'name_key':>12} {'natural_key()':>14}  rows")
    for name, extra in cases:
        sql = QUERIES[name]["sql"]
        params = {k: PARAMS.get(k, "") for k in re.findall(r"(?<!:):(\w+)", sql)}
        params.update(extra)
        per_row = re.sub(r"order by s\.name_key", "order by " + PER_ROW, sql)
        assert per_row != sql, name
        stored, rows = timed(conn, sql, params, args.runs)
        function, rows_f = timed(conn, per_row, params, args.runs)
        assert rows == rows_f
        label = name + (f" offset {extra['offset']}" if "offset" in extra else "")
        print(f"{label:34} {stored:9.1f} ms {function:11.1f} ms  {rows}")
    return 0
