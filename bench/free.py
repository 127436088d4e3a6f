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

With ``--http``, end to end as well: the tree of ``--old`` (``git archive``) and this tree each serve
a copy of the database (``server-monitor serve`` on ``--port`` and ``--port`` + 1, each gathering its
own statistics at start), logged in as the admin; ``GET /monitor/free_gpus.json?_shape=array&…``
for count 1, 2, 4, 8, count 4 in the largest group and a late page, old and new alternating, median
of ``--runs``, and whether the two JSON answers are byte for byte the same.
"""

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import urllib3

from bench import common, fleet_pages
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


def http(db, rev, port, runs, group):
    """The ``--http`` comparison (module docstring); prints one line per request; returns the
    number of requests whose JSON differed."""
    from server_monitor.core import config as config_mod

    work = tempfile.mkdtemp(prefix="bench-free-")
    old_tree = os.path.join(work, "old-tree")
    os.makedirs(old_tree)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
    hubs = {}
    try:
        for offset, (name, tree) in enumerate((("old", old_tree), ("new", ROOT))):
            directory = os.path.join(work, name)
            os.makedirs(directory)
            copy = os.path.join(directory, "monitor.db")
            sqlite3.connect(f"file:{os.path.abspath(db)}?mode=ro", uri=True).backup(sqlite3.connect(copy))
            config_path = os.path.join(directory, "config.yaml")
            cfg, password = config_mod.create(config_path)
            text = open(config_path).read().replace("path: monitor.db", f"path: {copy}", 1)
            open(config_path, "w").write(text)
            proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", config_path,
                                     "--port", str(port + offset)], cwd=tree, env=dict(os.environ, PYTHONPATH=tree),
                                    stdout=open(os.path.join(directory, "hub.log"), "wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            base = f"http://127.0.0.1:{port + offset}"
            hubs[name] = [proc, base, None]
            for _ in range(300):
                try:
                    if fleet_pages.HTTP.request("GET", base + "/login", timeout=1).status == 200:
                        break
                except urllib3.exceptions.HTTPError:
                    pass
                time.sleep(0.2)
            hubs[name][2] = fleet_pages.admin_cookie(base, cfg, password)
        different = 0
        queries = ["count=1", "count=2", "count=4", "count=8", "count=2&offset=5000"]
        if group:
            queries.insert(4, f"count=4&group={group}")
        print(f"end to end, hubs of {rev} and this tree:")
        for query in queries:
            times, bodies = {"old": [], "new": []}, {}
            for i in range(runs):
                for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    _, base, cookie = hubs[name]
                    t0 = time.perf_counter()
                    response = fleet_pages.HTTP.request("GET", base + "/monitor/free_gpus.json?_shape=array&" + query,
                                                        headers={"Cookie": cookie})
                    times[name].append((time.perf_counter() - t0) * 1000)
                    assert response.status == 200, (name, query, response.status)
                    bodies[name] = response.data
            same = bodies["old"] == bodies["new"]
            different += not same
            print(f"  {query:32} old {statistics.median(times['old']):6.0f} ms  new {statistics.median(times['new']):6.0f} ms"
                  f"  same JSON: {same}  {len(bodies['new']):,} B")
        return different
    finally:
        for proc, _, _ in hubs.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench free", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="/tmp/bench-free/monitor.db")
    parser.add_argument("--old", default="HEAD", help="git revision whose free_gpus.sql is the 'old' one")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--http", action="store_true", help="also end to end through two hubs (old tree, this tree)")
    parser.add_argument("--port", type=int, default=8270)
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
    print(common.machine())
    if different:
        print("DIFFERENT ROWS:", *different, sep="\n  ")
        return 1
    print("identical rows in every case (first, second, last page of 20; a page of 500)")
    if args.http and http(args.db, args.old, args.port, args.runs, group[0] if group else None):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
