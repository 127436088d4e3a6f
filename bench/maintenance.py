"""Maintenance cost: does the roll-up pass keep up with real time at fleet size?

    .venv/bin/python -m bench maintenance [--servers 200] [--minutes 75] [--interval 30]

Grows a fresh database through the product's own ingest path (``validate_report`` +
``store_report``, 8 GPUs and 16 processes per report) on a simulated clock, and runs the
hub's own :class:`~server_monitor.storage.rollup.Maintenance` object every simulated minute, as
the hub's maintenance thread does. Reports the CPU time of every pass (incremental passes
and the pass that rolls a complete hour up), per stored report, and extrapolates to
1,000 servers at 200 reports/s (720,000 reports an hour) as a share of one core. Side by
side, the former GPU-hours query (``--old``) on the same hour of data, stopped after 60 s.
"""

import argparse
import json
import os
import sqlite3
import tempfile
import time

from bench.common import fresh_report, sample_report, store
from server_monitor.storage import schema
from server_monitor.storage.rollup import Maintenance


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=75, help="simulated minutes (> 70 rolls one hour up)")
    parser.add_argument("--interval", type=int, default=30, help="seconds between one server's reports")
    parser.add_argument("--old", action="store_true", help="also time the former GPU-hours query on one hour")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sm-maint-")
    path = os.path.join(work, "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    t0 = (int(time.time()) - 2 * 86400) // 3600 * 3600
    clock = [t0]
    maintenance = Maintenance(path, now=lambda: clock[0], pause=0)
    templates = []
    for s in range(args.servers):
        r = sample_report(f"maint-{s:04d}", gpus=8, processes=2, disks=4)
        r["interval"] = args.interval
        templates.append(json.dumps(r))
    offsets = [(s * args.interval) // args.servers for s in range(args.servers)]
    passes, ingest_s, reports = [], 0.0, 0
    for minute in range(1, args.minutes + 1):
        end = t0 + minute * 60
        started = time.process_time()
        for s, template in enumerate(templates):
            ts = t0 + offsets[s] + ((end - 60 - t0 - offsets[s] + args.interval - 1) // args.interval) * args.interval
            while ts < end:
                store(conn, fresh_report(json.loads(template), ts), ts)
                reports += 1
                ts += args.interval
        ingest_s += time.process_time() - started
        clock[0] = end
        started = time.process_time()
        stats = maintenance.run_once()
        passes.append((minute, time.process_time() - started, stats["hours_rolled"], reports))
    conn.close()
    rolled = [p for p in passes if p[2]]
    steady = [p for p in passes[2:] if not p[2]]
    per_report_rate = args.servers / args.interval
    inc_cpu = sum(p[1] for p in steady) / len(steady)
    print(f"{args.servers} servers, one report each {args.interval} s ({per_report_rate:.1f} reports/s), "
          f"{args.minutes} simulated minutes, {reports} reports via store_report "
          f"({reports / ingest_s:.0f} reports/s of CPU); SQLite {sqlite3.sqlite_version}")
    print(f"  first pass (recompute of the current hours): {passes[0][1] * 1000:.0f} ms CPU")
    print(f"  incremental pass (every 60 s): mean {inc_cpu * 1000:.0f} ms CPU, "
          f"max {max(p[1] for p in steady) * 1000:.0f} ms; {inc_cpu / (per_report_rate * 60) * 1e6:.0f} µs per report")
    hour_cpu = 0.0
    for minute, cpu, hours, _ in rolled:
        hour_cpu = cpu
        print(f"  pass at minute {minute} rolling {hours} hour(s) up (tiers + GPU-hours): {cpu:.2f} s CPU, "
              f"{cpu / (per_report_rate * 3600) * 1e6:.0f} µs per report of the hour")
    share = (inc_cpu * 60 + hour_cpu) / 3600
    per_report = inc_cpu / (per_report_rate * 60) + (hour_cpu / (per_report_rate * 3600) if rolled else 0)
    print(f"  => {100 * share:.2f} % of a core at this size; at 1,000 servers x 200 reports/s: "
          f"~{100 * per_report * 200:.1f} % of a core (linear extrapolation per report)")
    if args.old:
        from test_usage_incremental import REFERENCE_SQL  # the former roll-up, kept as the tests' reference

        old = sqlite3.connect(path)
        deadline = time.monotonic() + 60
        old.set_progress_handler(lambda: time.monotonic() > deadline, 100000)
        started = time.process_time()
        try:
            n = len(old.execute(REFERENCE_SQL, (t0, t0 + 3600)).fetchall())
            print(f"  former GPU-hours query on the same hour: {time.process_time() - started:.1f} s CPU ({n} rows)")
        except sqlite3.OperationalError:
            print(f"  former GPU-hours query on the same hour: stopped after {time.process_time() - started:.0f} s"
                  " CPU, unfinished")
        old.set_progress_handler(None, 0)
        started = time.process_time()
        from server_monitor.storage.rollup import usage_for_range

        totals, _ = usage_for_range(old, t0, t0 + 3600)
        print(f"  its replacement (usage_for_range) on that hour: {time.process_time() - started:.2f} s CPU "
              f"({len(totals)} rows)")


if __name__ == "__main__":
    main()
