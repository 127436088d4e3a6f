"""The per-user page and the disk/temperature history at fleet size (issue 26 items 6, 7).

    .venv/bin/python -m bench user-page [--servers 1000] [--processes 10000] [--users 40] [--days 30]
        [--db PATH] [--port 8300] [--runs 7]

Grows ``--servers`` × 8 GPUs through ``bench/fleet_fixture.py`` (contract-validated reports written
by ``store_report``) into ``--db`` (kept when it exists), then writes ``--days`` of hourly
accounting (``gpu_usage_1h``) in the shape maintenance writes it: every GPU held all that time by
the holders it has now (a GPU shared by k owners gives each 1/k; a GPU at 0 % counts as idle) —
the worst case for a user's page, every hour of every GPU they hold is a row — and sums it per
user and UTC day with maintenance's own code (``gpu_usage_user_1d``), timing one full day. Server 1 gets
``--days`` of disk roll-ups (4 mount points) and temperature roll-ups (3 chips) in the 5-minute
and hourly tiers. Then it starts the hub (``server-monitor serve``) on ``--port``, logs in as the
admin and prints the median wall time (urllib3) of ``--runs`` requests of the user page and its
three queries for the heaviest user, and of the history page's disk/temperature queries for 24 h,
7 d and 30 d.
"""

import argparse
import json
import os
import signal
import statistics
import sqlite3
import time
from urllib.parse import quote

from bench import fleet_fixture
from bench.fleet_pages import HTTP, admin_cookie, serve
from server_monitor.storage import schema
from server_monitor.storage.rollup import Maintenance


def synthesize(db_path, days):
    """Write ``days`` of gpu_usage_1h for the current holders and server 1's disk/temperature roll-ups;
    returns the number of gpu_usage_1h rows."""
    conn = schema.connect(db_path)
    now = int(time.time())
    hours = [h for h in range((now - days * 86400) // 3600 * 3600, now, 3600)]
    holders = conn.execute(
        "SELECT p.server_id, p.gpu_id, coalesce(p.user, ''), coalesce(p.container, ''),"
        " sum(coalesce(p.used_gpu_memory_mib, 0)), g.utilization_gpu"
        " FROM servers s JOIN gpu_processes p ON p.server_id = s.id AND p.ts = s.last_ts"
        " JOIN gpus g ON g.id = p.gpu_id GROUP BY p.server_id, p.gpu_id, 3, 4").fetchall()
    shares = {}
    for row in holders:
        shares[row[1]] = shares.get(row[1], 0) + 1
    conn.execute("BEGIN")
    for hour in hours:
        rows = []
        for server_id, gpu_id, user, container, mib, util in holders:
            gpu_s = 3600.0 / shares[gpu_id]
            known = 3600.0 if util is not None else 0.0
            rows.append((hour, server_id, gpu_id, user, container, gpu_s, mib * 3600.0, (util or 0) * 3600.0, known,
                         3600.0, gpu_s if util is not None and util < 5 else 0.0))
        conn.executemany("INSERT OR REPLACE INTO gpu_usage_1h (hour, server_id, gpu_id, user, container, gpu_seconds,"
                         " vram_mib_seconds, util_seconds, util_known_seconds, held_seconds, idle_seconds)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    for tier, step in (("5m", 300), ("1h", 3600)):
        start = (now - days * 86400) // step * step
        conn.executemany(f"INSERT OR REPLACE INTO disk_samples_{tier} (server_id, mountpoint, ts, samples, used_bytes_avg,"
                         " used_bytes_max, total_bytes_max) VALUES (1, ?, ?, 1, ?, ?, ?)",
                         [(m, ts, 2**40 * (1 + i) * (ts - start) / (days * 86400), 2**40 * (1 + i), 2**42)
                          for i, m in enumerate(("/", "/data1", "/data2", "/scratch")) for ts in range(start, now, step)])
        conn.executemany(f"INSERT OR REPLACE INTO temperature_samples_{tier} (server_id, sensor, ts, samples,"
                         " temperature_c_avg, temperature_c_max) VALUES (1, ?, ?, 1, ?, ?)",
                         [(c, ts, 40.0 + i, 45.0 + i) for i, c in enumerate(("coretemp", "coretemp#2", "nvme"))
                          for ts in range(start, now, step)])
    conn.execute("INSERT OR REPLACE INTO maintenance_state (name, value) VALUES ('rolled_until', ?)", (now // 3600 * 3600,))
    conn.execute("COMMIT")
    count = conn.execute("SELECT count(*) FROM gpu_usage_1h").fetchone()[0]
    # The per-user days through maintenance's own code; one full day's recompute is what every
    # maintenance pass does for today (its worst case, at the end of the day).
    maintenance = Maintenance(db_path, pause=0)
    writer, reader = maintenance._connect()
    day = now // 86400 * 86400
    maintenance._roll_user_days(writer, reader, list(range(day - days * 86400, day + 1, 86400)))
    t = time.perf_counter()
    cpu = time.process_time()
    rows = maintenance._roll_user_days(writer, reader, [day - 86400])
    print(f"one full day of gpu_usage_user_1d recomputed (a pass at the end of a day): "
          f"{(time.perf_counter() - t) * 1000:.0f} ms wall, {(time.process_time() - cpu) * 1000:.0f} ms CPU, {rows:,} rows")
    writer.close()
    reader.close()
    conn.execute("ANALYZE")
    conn.close()
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench user-page", description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=10000)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--db", default="/tmp/bench-user-page/monitor.db")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--ahead", type=float, default=900)
    args = parser.parse_args(argv)

    directory = os.path.dirname(os.path.abspath(args.db))
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(args.db):
        t0 = time.time()
        fleet_fixture.grow(args.db, args.servers, args.processes, args.users, now=time.time() + args.ahead)
        count = synthesize(args.db, args.days)
        print(f"grew {args.servers} servers and {count:,} gpu_usage_1h rows in {time.time() - t0:.0f} s")
    conn = sqlite3.connect(args.db)
    user, rows = conn.execute("SELECT user, count(*) FROM gpu_usage_1h WHERE user <> '' GROUP BY user"
                              " ORDER BY 2 DESC LIMIT 1").fetchone()
    conn.close()
    print(f"heaviest user {user!r}: {rows:,} hourly accounting rows over {args.days} days")
    proc, base, cfg, password = serve(args.db, args.port)
    try:
        cookie = admin_cookie(base, cfg, password)
        u = quote(user, safe="")
        paths = [f"/users/{u}", f"/monitor/user_gpus.json?_shape=array&user={u}",
                 f"/monitor/user_gpu_hours_daily.json?_shape=array&user={u}&days={args.days}",
                 f"/monitor/user_jobs.json?_shape=array&user={u}&days={args.days}"]
        for hours in (24, 168, 24 * args.days):
            paths += [f"/monitor/disk_history.json?_shape=array&server_id=1&hours={hours}",
                      f"/monitor/temperature_history.json?_shape=array&server_id=1&hours={hours}"]
        print(f"{'path':78} median (min–max), rows/bytes")
        for path in paths:
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                response = HTTP.request("GET", base + path, headers={"Cookie": cookie})
                times.append(time.perf_counter() - t)
                assert response.status == 200, (path, response.status, response.data[:300])
            rows = len(json.loads(response.data)) if path.startswith("/monitor/") else "-"
            print(f"{path:78} {statistics.median(times) * 1000:6.1f} ms ({min(times) * 1000:.1f}–{max(times) * 1000:.1f})"
                  f"  {rows} / {len(response.data):,}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return 0
