"""Hub benchmarks: ingest throughput and latency over real HTTP, query times, disk per sample.

    .venv/bin/python -m bench ingest [--seconds 30] [--servers 200] [--days 30] [--workdir DIR]
    .venv/bin/python -m bench fleet [--servers 1000]   # GET /api/fleet vs per-table calls (bench/fleet.py)

Runs, side by side in one invocation:

1. ingest throughput with ``wrk`` (Debian package) against ``server-monitor serve`` on
   loopback (the default one-port deployment: uvicorn + Datasette + mounted WSGI ingest),
   each request a distinct report of 8 GPUs, 16 processes and 4 disks, from 1000 hosts;
   first on an empty database, then on one already holding ``--days`` of history for
   ``--servers`` servers, grown through ``store_report`` with the hub's own maintenance
   (see :func:`populate`: no roll-up written and no ANALYZE run by the benchmark);
2. ingest latency at a fixed 100 reports/s (open loop: latency counted from the planned
   send time, so a stall is not hidden);
3. the limits without HTTP on the same disk: raw SQLite (the same rows, one transaction
   per report) and in-process ``validate_report`` + ``store_report``; the HTTP figures are
   stated as fractions of them;
4. query times through Datasette's JSON API as the logged-in admin, with 1000 servers ×
   8 GPUs: the ``servers`` and ``gpus`` canned queries, one server's 24 h and 30-day history;
5. bytes per stored GPU sample (``gpu_samples`` table and its indexes, from ``dbstat``).
"""

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import urllib3

from bench.common import Hub, fresh_database, fresh_report, login, machine, sample_report, store
from server_monitor.storage import schema
from server_monitor.storage.store import delete_server, store_reports


def report_template():
    """One report as JSON with %s/%d holes for wrk's Lua, and the Lua names filling them in order."""
    report = sample_report("HOSTNAME", gpus=8, processes=2, disks=4)
    report.pop("sent_at")
    report["report_id"] = "RID"
    report["host"]["machine_id"] = "MID"
    report["sample_time"] = 1234567890
    text = json.dumps(report, separators=(",", ":"))
    assert "%" not in text
    holes = {'"RID"': ("rid", '"%s"'), '"HOSTNAME"': ("name", '"%s"'), '"MID"': ("name", '"%s"'),
             "1234567890": ("t", "%d")}
    order = sorted(holes, key=text.index)
    for marker in order:
        assert text.count(marker) == 1, marker
        text = text.replace(marker, holes[marker][1])
    return text, ", ".join(holes[m][0] for m in order)


LUA = r"""
local template = [==[TEMPLATE]==]
local token = "TOKEN"
local base = BASE
local counter = 0
local threads = {}
function setup(thread)
  -- becomes the global "tid" inside that thread's Lua state
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
request = function()
  counter = counter + 1
  local host = (tid * 1000) + (counter % 1000)
  local t = base + math.floor(counter / 1000) * 30
  local rid = string.format("bench-%d-%d-%d", tid, counter, base)
  local name = string.format("bench-%d", host)
  local body = string.format(template, ARGS)
  return wrk.format("POST", "/api/report", {["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json"}, body)
end
"""


def run_wrk(hub, seconds, connections=16):
    template, lua_args = report_template()
    script = LUA.replace("TEMPLATE", template).replace("ARGS", lua_args).replace("TOKEN", hub.config.get("agent.token"))
    script = script.replace("BASE", str(int(time.time()) - 3 * 3600 + int(time.time() * 1000) % 997))
    path = os.path.join(hub.workdir, "bench.lua")
    with open(path, "w") as fp:
        fp.write(script)
    cpu0 = hub.cpu_seconds()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", path, hub.url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = hub.cpu_seconds() - cpu0
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
    return {"rate": rate, "non_2xx": int(errors.group(1)) if errors else 0, "p99": p99, "hub_cpu_s": cpu,
            "raw": out}


def paced_latency(hub, rate=100, seconds=30):
    """Open-loop load at ``rate`` reports/s; latency from each request's planned time (ms)."""
    token = hub.config.get("agent.token")
    planned = [i / rate for i in range(int(rate * seconds))]
    latencies, statuses = [], []
    lock = threading.Lock()
    base = time.time() - 2 * 3600
    bodies = []
    for i in range(len(planned)):
        r = sample_report(f"paced-{i % 500}", gpus=8, processes=2, disks=4, sample_time=base + (i // 500) * 30)
        r.pop("sent_at")
        bodies.append(json.dumps(r).encode())
    index = iter(range(len(planned)))
    start = time.monotonic() + 0.5  # after the bodies are built, so building is not counted

    def worker():
        pool = urllib3.PoolManager(retries=False)
        for i in index:
            wait = start + planned[i] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            resp = pool.request("POST", hub.url + "/api/report", body=bodies[i],
                                headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            done = time.monotonic()
            with lock:
                latencies.append((done - (start + planned[i])) * 1000)
                statuses.append(resp.status)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {"p50": statistics.median(latencies), "p99": latencies[int(len(latencies) * 0.99)],
            "max": latencies[-1], "errors": sum(1 for s in statuses if s >= 300), "n": len(latencies)}


def populate(db_path, servers, days, interval, extra_servers):
    """Grow a database like the hub's after ``days`` of ``servers`` hosts (8 GPUs each).

    Through the product's own paths only: every report goes through ``validate_report`` +
    ``store_report`` (as ingest stores it, on a clock running from ``days`` ago to now, one
    report per server every ``interval`` seconds), and the hub's own ``Maintenance`` runs
    every simulated hour (roll-ups, GPU-hours, retention, the planner statistics as the hub
    leaves them). No roll-up is written and no ANALYZE is run here. ``extra_servers`` hosts
    send one report now (latest state only). Costs one ``store_report`` per report
    (~650 reports/s of CPU on the reference VM): 200 servers x 30 days at 300 s is
    1.7 M reports, about 45 minutes.
    """
    from server_monitor.storage.rollup import Maintenance

    schema.migrate(db_path)
    conn = schema.connect(db_path)
    now = int(time.time()) // interval * interval
    clock = [now - days * 86400]
    maintenance = Maintenance(db_path, pause=0, now=lambda: clock[0])
    templates = []
    for s in range(servers):
        r = sample_report(f"node-{s:04d}", gpus=8, processes=2, disks=4)
        r["interval"] = interval
        templates.append(json.dumps(r))

    def send(template, ts):
        store(conn, fresh_report(json.loads(template), ts), ts)

    started, reports = time.time(), 0
    for ts in range(now - days * 86400, now, interval):
        for template in templates:
            send(template, ts)
        reports += len(templates)
        if ts // 3600 != (ts + interval) // 3600:
            clock[0] = ts + interval
            maintenance.run_once()
            if ts // 86400 != (ts + interval) // 86400:
                print(f"  {reports} reports, {(ts - now) / 86400 + days:.0f}/{days} days "
                      f"({time.time() - started:.0f} s)", flush=True)
    for s in range(extra_servers):
        r = sample_report(f"node-x{s:04d}", gpus=8, processes=2, disks=4)
        r["interval"] = interval
        send(json.dumps(r), now)
    conn.close()
    clock[0] = now
    maintenance.run_once()


def sqlite_limits(workdir, seconds=10):
    """Reports/s without HTTP, on the same disk: raw SQLite, in-process validate+store, grouped.

    Raw: the rows one report of 8 GPUs, 16 processes and 4 disks writes (1 host sample, 8 GPU
    samples, 16 process rows, 4 disk rows, the server's and 8 GPUs' latest-state updates) as
    plain INSERT/UPDATEs, one ``BEGIN IMMEDIATE`` transaction per report, with the hub's
    pragmas (``schema.connect``). In-process: ``validate_report`` + ``store_report`` of the same
    reports; grouped: the same through ``store_reports``, 16 per transaction (ingest's group
    commit under load). Each for ``seconds`` on a fresh database in ``workdir``; returns
    ``{"raw", "store", "grouped"}`` reports/s.
    """
    from server_monitor.storage.contract import validate_report

    results = {}
    for kind in ("raw", "store", "grouped"):
        path = os.path.join(workdir, f"limit-{kind}.db")
        conn = fresh_database(path)
        template = sample_report("limit-host", gpus=8, processes=2, disks=4)
        store(conn, fresh_report(template, template["sample_time"]), template["sample_time"])  # the server, its GPUs
        server_id = conn.execute("SELECT id FROM servers").fetchone()[0]
        gpu_ids = [g for (g,) in conn.execute("SELECT id FROM gpus ORDER BY gpu_index")]
        t = int(time.time()) - 86400
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            t += 1
            n += 1
            if kind == "store":
                store(conn, fresh_report(template, t), t)
                continue
            if kind == "grouped":  # ingest's group commit under load: 16 reports per transaction
                group = []
                for _ in range(16):
                    group.append((validate_report(fresh_report(template, t)), t))
                    t += 1
                n += 15
                store_reports(conn, group)
                continue
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE servers SET last_seen = ?, last_ts = ?, cpu_percent = 12.5 WHERE id = ?",
                         (t, t, server_id))
            conn.execute("INSERT INTO host_samples (server_id, ts, received_at, report_id, cpu_percent, load_1,"
                         " memory_used_bytes, memory_total_bytes, swap_used_bytes, net_rx_bps, net_tx_bps, gpu_state)"
                         " VALUES (?, ?, ?, ?, 12.5, 1.0, 1, 2, 0, 3.0, 4.0, 'ok')", (server_id, t, t, f"raw-{t}"))
            conn.executemany("UPDATE gpus SET last_ts = ?, utilization_gpu = 50, memory_used_mib = 1000 WHERE id = ?",
                             [(t, g) for g in gpu_ids])
            conn.executemany("INSERT INTO gpu_samples (gpu_id, ts, utilization_gpu, utilization_memory,"
                             " memory_used_mib, temperature_gpu_c, power_draw_w, fan_speed)"
                             " VALUES (?, ?, 50, 20, 1000, 60, 300.5, NULL)", [(g, t) for g in gpu_ids])
            conn.executemany("INSERT INTO gpu_processes (server_id, ts, gpu_id, pid, process_name, used_gpu_memory_mib,"
                             " user, uid, container, container_kind) VALUES (?, ?, ?, ?, 'python train.py', 9000,"
                             " 'alice', 1000, 'lab-ws', 'lxc')",
                             [(server_id, t, g, 1000 + k) for g in gpu_ids for k in range(2)])
            conn.executemany("INSERT INTO disk_samples (server_id, ts, mountpoint, device, fstype, total_bytes,"
                             " used_bytes) VALUES (?, ?, ?, '/dev/nvme0n1', 'ext4', 4000000000000, 1000000000000)",
                             [(server_id, t, m) for m in ("/", "/data1", "/data2", "/scratch")])
            conn.execute("COMMIT")
        results[kind] = n / (time.perf_counter() - started)
        conn.close()
    return results


def time_queries(hub, server_id, runs=30):
    http, headers = login(hub)
    paths = {
        "servers (1000 servers)": "/monitor/servers.json?_shape=array",
        "gpus (8000 GPUs)": "/monitor/gpus.json?_shape=array",
        "server_history 24 h": f"/monitor/server_history.json?_shape=array&server_id={server_id}&hours=24",
        "gpu_history 24 h (8 GPUs)": f"/monitor/gpu_history.json?_shape=array&server_id={server_id}&hours=24",
        "server_history 30 d": f"/monitor/server_history.json?_shape=array&server_id={server_id}&hours=720",
        "gpu_history 30 d (8 GPUs)": f"/monitor/gpu_history.json?_shape=array&server_id={server_id}&hours=720",
    }
    results = {}
    for name, path in paths.items():
        times, sql_times, rows = [], [], 0
        for _ in range(runs):
            t0 = time.perf_counter()
            resp = http.request("GET", hub.url + path.replace("_shape=array", "_shape=objects"), headers=headers)
            times.append((time.perf_counter() - t0) * 1000)
            assert resp.status == 200, (path, resp.status, resp.data[:300])
            body = json.loads(resp.data)
            rows = len(body["rows"])
            sql_times.append(body["query_ms"])  # Datasette's own timing of the SQL
        results[name] = (statistics.median(times), sorted(times)[int(runs * 0.95)], rows, statistics.median(sql_times))
    return results


def forget_bench_hosts(db_path):
    """Remove the hosts a wrk run created, so the next run starts from the same fleet."""
    conn = schema.connect(db_path)
    try:
        for (server_id,) in conn.execute("SELECT id FROM servers WHERE hostname LIKE 'bench-%'").fetchall():
            delete_server(conn, server_id)
    finally:
        conn.close()


def bytes_per_gpu_sample(db_path):
    conn = sqlite3.connect(db_path)
    size = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN ('gpu_samples', 'gpu_samples_ts')").fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM gpu_samples").fetchone()[0]
    return size / rows, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30, help="length of each throughput/latency run")
    parser.add_argument("--servers", type=int, default=200, help="servers with stored history")
    parser.add_argument("--days", type=int, default=30, help="days of history (roll-ups; raw for 7)")
    parser.add_argument("--interval", type=int, default=300,
                        help="seconds between one server's reports while the history is grown")
    parser.add_argument("--workdir", help="keep databases here (default: a temporary directory)")
    parser.add_argument("--queries-only", action="store_true", help="skip the ingest runs")
    parser.add_argument("--empty-only", action="store_true",
                        help="only the runs on an empty database (no populated history, no query table)")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated server.workers values to compare (default 1,2)")
    parser.add_argument("--full-only", action="store_true",
                        help="only the ingest runs on the populated database, one per --workers value in "
                             "that order (repeats allowed: 2,1,2,1), no limits, no query table")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")

    work = args.workdir or tempfile.mkdtemp(prefix="sm-bench-")
    os.makedirs(work, exist_ok=True)
    print(f"hub benchmark in {work}; machine: {machine()}")

    results = {}
    if args.full_only:
        full = Hub(os.path.join(work, "full"))
        if not os.path.exists(full.config.db_path):
            sys.exit(f"no populated database in {work}/full: run without --full-only first")
        for w in [int(x) for x in args.workers.split(",")]:
            forget_bench_hosts(full.config.db_path)
            full.start(w)
            try:
                f = run_wrk(full, args.seconds)
            finally:
                full.stop()
                forget_bench_hosts(full.config.db_path)
            print(f" {w} worker{'s' if w > 1 else ' '} populated database: {f['rate']:7.0f} reports/s  p99 {f['p99']:>8}  "
                  f"non-2xx {f['non_2xx']}  hub CPU {f['hub_cpu_s'] / args.seconds:.2f} cores", flush=True)
        return
    limits = sqlite_limits(work, min(args.seconds, 15))
    print(f"same disk, no HTTP, one transaction per report: raw SQLite {limits['raw']:.0f} reports/s, "
          f"validate_report + store_report {limits['store']:.0f} reports/s; "
          f"16 reports per transaction (group commit): {limits['grouped']:.0f} reports/s")
    counts = [int(w) for w in args.workers.split(",")]
    if not args.queries_only:
        for w in counts:
            shutil.rmtree(os.path.join(work, "empty"), ignore_errors=True)
            os.makedirs(os.path.join(work, "empty"))
            empty = Hub(os.path.join(work, "empty"))
            empty.start(w)
            try:
                results[("empty", w)] = run_wrk(empty, args.seconds)
                results[("latency", w)] = paced_latency(empty, 100, args.seconds)
            finally:
                empty.stop()

    if args.empty_only:
        print("\ningest throughput (wrk, 1 thread, 16 connections, 8 GPUs + 16 processes + 4 disks per report)")
        for w in counts:
            e, lat = results[("empty", w)], results[("latency", w)]
            print(f" {w} worker{'s' if w > 1 else ' '} empty database: {e['rate']:7.0f} reports/s  p99 {e['p99']:>8}  "
                  f"non-2xx {e['non_2xx']}  hub CPU {e['hub_cpu_s'] / args.seconds:.2f} cores  "
                  f"({100 * e['rate'] / limits['raw']:.0f} % of raw SQLite, {100 * e['rate'] / limits['store']:.0f} %"
                  " of in-process store)")
            print(f" {w} worker{'s' if w > 1 else ' '} latency at 100 reports/s (open loop, {lat['n']} reports): "
                  f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms, errors {lat['errors']}")
        return
    full_dir = os.path.join(work, "full")
    os.makedirs(full_dir, exist_ok=True)
    full = Hub(full_dir)
    if not os.path.exists(full.config.db_path):
        print(f"populating {args.servers} servers × {args.days} days (+{1000 - args.servers} servers latest only)…")
        t0 = time.time()
        populate(full.config.db_path, args.servers, args.days, args.interval, 1000 - args.servers)
        print(f"  done in {time.time() - t0:.0f} s, {os.path.getsize(full.config.db_path) / 2**30:.2f} GiB")
    forget_bench_hosts(full.config.db_path)
    per_sample, gpu_rows = bytes_per_gpu_sample(full.config.db_path)
    for n, w in enumerate(counts if not args.queries_only else counts[:1]):
        full.start(w)
        try:
            if n == 0:
                results["queries"] = time_queries(full, server_id=1)
            if not args.queries_only:
                results[("full", w)] = run_wrk(full, args.seconds)
        finally:
            full.stop()
            forget_bench_hosts(full.config.db_path)

    if not args.queries_only:
        print("\ningest throughput (wrk, 1 thread, 16 connections, 8 GPUs + 16 processes + 4 disks per report)")
        for w in counts:
            e, f, lat = results[("empty", w)], results[("full", w)], results[("latency", w)]
            print(f" {w} worker{'s' if w > 1 else ' '} empty database: {e['rate']:7.0f} reports/s  p99 {e['p99']:>8}  "
                  f"non-2xx {e['non_2xx']}  hub CPU {e['hub_cpu_s'] / args.seconds:.2f} cores  "
                  f"({100 * e['rate'] / limits['raw']:.0f} % of raw SQLite, {100 * e['rate'] / limits['store']:.0f} %"
                  " of in-process store)")
            print(f" {w} worker{'s' if w > 1 else ' '} {args.servers} servers × {args.days} d: {f['rate']:7.0f} reports/s"
                  f"  p99 {f['p99']:>8}  non-2xx {f['non_2xx']}  hub CPU {f['hub_cpu_s'] / args.seconds:.2f} cores  "
                  f"({100 * f['rate'] / limits['raw']:.0f} % of raw SQLite, {100 * f['rate'] / e['rate']:.0f} % of empty)")
            print(f" {w} worker{'s' if w > 1 else ' '} latency at 100 reports/s (open loop, {lat['n']} reports): "
                  f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms, errors {lat['errors']}")
    print("queries through Datasette's JSON API as admin (HTTP median / p95 ms; SQL time as Datasette measures it):")
    for name, (med, p95, rows, sql_ms) in results["queries"].items():
        print(f"  {name:28} {med:7.1f} / {p95:7.1f}   SQL {sql_ms:6.1f}   {rows} rows")
    print(f"disk: {per_sample:.1f} bytes per stored GPU sample (gpu_samples + its ts index, {gpu_rows} rows)")


if __name__ == "__main__":
    main()
