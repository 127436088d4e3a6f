"""gpu_history before and after the GPU-depth columns (issue 15), side by side on one database.

    .venv/bin/python -m bench gpu-history [--workdir /tmp/smh] [--days 3]

The database is grown through the product's paths: ``store_report`` (1 server, 8 GPUs, ``--days``
of reports at 60 s with the H100 capture's values) and one pass of the hub's own ``Maintenance``
(roll-ups, statistics); an existing database in ``--workdir`` is reused. The "before" SQL is
``canned_queries/gpu_history.sql`` at commit ecc44d8 (``git show``), the "after" SQL the current
file. Prints CPU ms (``time.process_time``, min of 7 runs) per range, and the ratio.
"""

import argparse
import json
import os
import sqlite3
import subprocess
import time

from bench.common import ROOT, fresh_report, sample_report, store
from server_monitor.storage import schema
from server_monitor.storage.rollup import Maintenance

BEFORE = "ecc44d8"  # main just before the GPU-depth roll-ups


def grow(path, days):
    schema.migrate(path)
    conn = schema.connect(path)
    now = int(time.time())
    template = json.dumps(sample_report("hist-01", gpus=8, processes=1, disks=2))
    for i, ts in enumerate(range(now - days * 86400, now, 60)):
        report = fresh_report(json.loads(template), ts, interval=60)
        for gpu in report["gpus"]:
            gpu["clocks_event_reasons_counters.sw_power_cap"] = i * 1000
        store(conn, report, ts)
    conn.close()
    return Maintenance(path, pause=0).run_once()["hours_rolled"]


def best_cpu_ms(conn, sql, params, runs=7):
    best = None
    for _ in range(runs):
        t0 = time.process_time()
        rows = conn.execute(sql, params).fetchall()
        spent = (time.process_time() - t0) * 1000
        best = spent if best is None else min(best, spent)
    return best, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/smh")
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "monitor.db")
    if not os.path.exists(path):
        print(f"grown: {grow(path, args.days)} hours rolled up")
    before = subprocess.run(["git", "-C", ROOT, "show", f"{BEFORE}:canned_queries/gpu_history.sql"],
                            capture_output=True, text=True, check=True).stdout
    after = open(os.path.join(ROOT, "canned_queries", "gpu_history.sql")).read()
    conn = sqlite3.connect(path)
    for hours in ("24", "72", "720"):
        params = {"server_id": "1", "hours": hours, "_scope_all": 1, "_scope_servers": "[]"}
        old_ms, _ = best_cpu_ms(conn, before, params)
        new_ms, rows = best_cpu_ms(conn, after, params)
        tier = rows[0][4] if rows else None
        print(f"gpu_history {hours:>3} h: before {old_ms:.1f} ms, after {new_ms:.1f} ms CPU (min of 7), "
              f"after/before {new_ms / old_ms:.2f}; {len(rows)} rows, tier {tier}")


if __name__ == "__main__":
    main()
