"""Ingest transactions with the WAL checkpointed in the commit (SQLite's default) or by the hub's
checkpoint thread, side by side on the same disk.

    .venv/bin/python -m bench commit [--reports 6000] [--group 4]

Stores the same reports (8 GPUs, 16 processes, 4 disks; 200 hosts) through ``store_reports`` in
transactions of ``--group`` reports, twice per variant in alternation: ``in-commit`` sets
``wal_autocheckpoint=1000`` (SQLite's default: the commit that passes 1,000 WAL pages copies them
into the database and syncs it), ``thread`` keeps the hub's setting
(``schema.WAL_AUTOCHECKPOINT_PAGES``) with ``rollup.CheckpointThread`` running beside the writer.
Prints each run's transaction time p50 / p99 / max (ms) and how many took over 20 ms.
"""

import argparse
import os
import tempfile
import time

from bench.common import fresh_database, fresh_report, sample_report
from server_monitor.storage.contract import validate_report
from server_monitor.storage.rollup import CheckpointThread
from server_monitor.storage.store import store_reports


def run(path, reports, group, variant):
    """One run on a fresh database at ``path``: sorted transaction times (ms)."""
    conn = fresh_database(path)
    thread = None
    if variant == "in-commit":
        conn.execute("PRAGMA wal_autocheckpoint=1000")
    else:
        thread = CheckpointThread(path)
        thread.start()
    times = []
    try:
        for k in range(0, len(reports), group):
            started = time.perf_counter()
            store_reports(conn, [(r, r["sample_time"]) for r in reports[k:k + group]])
            times.append((time.perf_counter() - started) * 1000)
    finally:
        if thread is not None:
            thread.stopped.set()
            thread.join()
        conn.close()
    return sorted(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=6000)
    parser.add_argument("--group", type=int, default=4, help="reports per transaction")
    args = parser.parse_args()
    templates = [sample_report(f"node-{h}", gpus=8, processes=2, disks=4) for h in range(200)]
    t0 = int(time.time()) - 86400
    reports = []
    for i in range(args.reports):
        r = fresh_report(templates[i % 200], t0 + i // 200 * 10)
        r.pop("sent_at", None)
        reports.append(validate_report(r))
    path = os.path.join(tempfile.mkdtemp(prefix="sm-commit-"), "monitor.db")
    for variant in ("in-commit", "thread", "in-commit", "thread"):
        t = run(path, reports, args.group, variant)
        n = len(t)
        print(f"{variant:9}  {n} transactions of {args.group}: p50 {t[n // 2]:6.1f} ms  p99 {t[int(n * 0.99)]:6.1f} ms"
              f"  max {t[-1]:6.1f} ms  over 20 ms: {sum(x > 20 for x in t)}", flush=True)


if __name__ == "__main__":
    main()
