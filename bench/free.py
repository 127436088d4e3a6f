"""/free's SQL at fleet size, old and new side by side (issue 24 item 4; docs/performance.md).

    .venv/bin/python -m bench free --db PATH [--old REV] [--runs 5] [--counts 1,2,4,8]

On a grown fleet database (``python -m bench fixture PATH --servers 10000 --groups 20 --interval
14400`` — the reports' interval keeps the hosts online for the measurement — after a hub started on
it once, so that its statistics are the hub's own: ``server-monitor serve`` gathers them at start),
runs the ``free_gpus`` canned query of this tree and the one of git revision ``--old`` (default
``HEAD``: compare the working tree with the last commit) on one read-only connection with the SQL
functions every Datasette connection has (``natural_key()``, ``gpu_set()``), as an admin (every
server in scope) with the default ``max_util`` (10 %).

For each ``count`` of ``--counts`` and each filter (none; ``group`` = the largest ``cluster-*`` host
group when the fleet has groups; ``model=H100``; both): the first page of 20 timed, old and new
alternating, median of ``--runs`` each; then the first, second and last page of 20 and a page of 500
compared row by row. Exits 1, naming the case, when any row differs.
"""

import argparse
import os
import sqlite3
import statistics
import subprocess
import time

from bench.common import ROOT
from server_monitor.core import natural, topology
from server_monitor.serving.queries import QUERIES, named_parameters

QUERY = "canned_queries/free_gpus.sql"


def old_sql(rev):
    """``free_gpus.sql`` as of git revision ``rev`` of this repository (text)."""
    return subprocess.run(["git", "show", f"{rev}:{QUERY}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def params_for(sql, **given):
    """Every named parameter of ``sql``: the admin's scope, the default max_util, ``given``, else ''."""
    params = {k: "" for k in named_parameters(sql)}
    params.update({"_scope_all": 1, "_scope_servers": "[]", "_config_free_max_util": 10})
    params.update({k: str(v) for k, v in given.items() if k in params})
    return params


def run(conn, sql, **given):
    """Rows of ``sql`` with ``given`` parameters and the wall time in ms."""
    t0 = time.perf_counter()
    rows = conn.execute(sql, params_for(sql, **given)).fetchall()
    return rows, (time.perf_counter() - t0) * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench free", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="/tmp/bench-free/monitor.db")
    parser.add_argument("--old", default="HEAD", help="git revision whose free_gpus.sql is the 'old' one")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--counts", default="1,2,4,8")
    args = parser.parse_args(argv)
    old, new = old_sql(args.old), QUERIES["free_gpus"]["sql"]
    conn = sqlite3.connect(f"file:{os.path.abspath(args.db)}?mode=ro", uri=True)
    natural.register(conn)
    topology.register(conn)
    servers, gpus = conn.execute("SELECT (SELECT count(*) FROM servers), (SELECT count(*) FROM gpus)").fetchone()
    group = conn.execute("SELECT grp FROM server_groups WHERE grp LIKE 'cluster-%' GROUP BY grp"
                         " ORDER BY count(*) DESC, grp LIMIT 1").fetchone()
    filters = [{}, {"model": "H100"}]
    if group:
        filters[1:1] = [{"group": group[0]}]
        filters.append({"group": group[0], "model": "H100"})
    print(f"{servers} servers, {gpus} GPUs, SQLite {sqlite3.sqlite_version}, old = {args.old}")
    print(f"{'case':40} {'old ms':>8} {'new ms':>8} {'x':>6}  total")
    different = []
    for count in args.counts.split(","):
        for extra in filters:
            case = dict(count=count, **extra)
            label = " ".join(f"{k}={v}" for k, v in case.items())
            times = {"old": [], "new": []}
            for i in range(args.runs):
                for name, sql in ((("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))):
                    rows, ms = run(conn, sql, **case)
                    times[name].append(ms)
            total = rows[0][-1] if rows else 0
            pages = [dict(limit=20, offset=0), dict(limit=20, offset=20), dict(limit=500, offset=0),
                     dict(limit=20, offset=max(0, total - 20))]
            for page in pages:
                before, _ = run(conn, old, **case, **page)
                after, _ = run(conn, new, **case, **page)
                if before != after:
                    different.append(f"{label} limit={page['limit']} offset={page['offset']}")
            o, n = statistics.median(times["old"]), statistics.median(times["new"])
            print(f"{label:40} {o:8.0f} {n:8.0f} {o / n:6.1f}  {total}")
    if different:
        print("DIFFERENT ROWS:", *different, sep="\n  ")
        return 1
    print("identical rows in every case (first, second, last page of 20; a page of 500)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
