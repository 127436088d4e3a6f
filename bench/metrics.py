"""The Prometheus path at fleet size: ``/metrics`` whole and sharded, a real Prometheus with
``http_sd_configs``, and what its scrapes cost the agents' reports (issue 24 item 5).

    .venv/bin/python -m bench metrics --servers 1000 [--shards 4] [--seconds 60] [--json out.json]

A hub (``server-monitor serve``, its default workers, its own maintenance) on a fleet grown only
through ``POST /api/report`` (``--servers`` hosts × 8 GPUs, 2 processes each, batches of 50).
Measured over HTTP on loopback with the Prometheus token:

* ``/metrics`` whole, with ``Accept-Encoding: gzip`` as Prometheus sends it: seconds (median of
  ``--runs``, each after the reuse window so every one is a build) and bytes on the wire / as text;
  one shard (``?shard=0&of=N``) the same;
* Debian's ``prometheus`` scraping ``/metrics/targets?shards=N`` (http_sd) every 15 s: every
  target's ``up`` and ``scrape_duration_seconds`` after ``--seconds``;
* ingest latency (p50/p99/max ms) of reports sent open loop at ``servers / 30`` per second (each
  host every 30 s), first without Prometheus, then while it scrapes — side by side in one run.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from bench.common import HTTP, Hub, free_port, machine, pct, sample_report, timed

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def host(i):
    """Host name of fleet member ``i``."""
    return f"node-{i:05d}"


def grow(hub, servers, batch=50):
    """``servers`` hosts through ``POST /api/report`` in batches (under the 1 MiB body limit); returns seconds taken."""
    token = hub.config.get("agent.token")
    t0 = time.monotonic()
    for start in range(0, servers, batch):
        reports = [sample_report(host(i), gpus=8, processes=2, sample_time=time.time())
                   for i in range(start, min(servers, start + batch))]
        answer = HTTP.request("POST", hub.url + "/api/report", body=json.dumps({"reports": reports}).encode(),
                              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
                              timeout=120)
        assert answer.status in (200, 201, 207), answer.data[:300]
    return time.monotonic() - t0


def scrape_figures(hub, path, runs):
    """``(median s, gzip bytes, text bytes)`` of ``runs`` scrapes of ``path``, each a fresh build."""
    auth = {"Authorization": "Bearer " + hub.config.get("prometheus.token")}
    seconds, packed = [], 0
    for k in range(runs):
        # Past the hub's reuse window (plugins/sm_metrics.py REUSE_S): a build, not a copy; at
        # doubling intervals, so that the hub never sees a steady scraper and builds none ahead.
        time.sleep(5.5 * 2 ** k)
        response, body, ms = timed("GET", hub.url + path, headers={**auth, "Accept-Encoding": "gzip"})
        assert response.status == 200, body[:300]
        seconds.append(ms / 1000)
        packed = body
    # The text's size from the last body: asking the hub for it uncompressed would make a worker
    # inflate it (550 MB at 10,000 servers) and count in its memory.
    return round(sorted(seconds)[len(seconds) // 2], 3), len(packed), len(gzip.decompress(packed))


def send_open_loop(hub, servers, seconds):
    """Reports of existing hosts at ``servers / 30`` per second for ``seconds``; latencies in ms."""
    token = hub.config.get("agent.token")
    rate = servers / 30
    latencies, lock = [], threading.Lock()
    templates = [sample_report(host(i), gpus=8, processes=2) for i in range(servers)]
    deadline = time.monotonic() + seconds

    def one(k):
        report = dict(templates[k % servers], report_id=f"bench-{k}-{time.time_ns()}",
                      sample_time=time.time(), sent_at=time.time())
        t0 = time.perf_counter()
        answer = HTTP.request("POST", hub.url + "/api/report", body=json.dumps(report).encode(),
                              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        with lock:
            latencies.append((time.perf_counter() - t0) * 1000 if answer.status == 201 else float("inf"))

    threads, k, start = [], 0, time.monotonic()
    while time.monotonic() < deadline:
        due = start + k / rate
        time.sleep(max(0.0, due - time.monotonic()))
        t = threading.Thread(target=one, args=(k,), daemon=True)
        t.start()
        threads.append(t)
        k += 1
    for t in threads:
        t.join(60)
    return {"reports": len(latencies), "p50_ms": round(pct(latencies, 0.5), 1),
            "p99_ms": round(pct(latencies, 0.99), 1), "max_ms": round(max(latencies), 1)}


def prometheus(hub, work, shards, interval=15, timeout=10):
    """Start Debian's prometheus on ``hub`` with http_sd over ``shards`` targets, scraping every
    ``interval`` s with ``timeout``; returns (proc, base)."""
    token_file = os.path.join(work, "prom-token")
    with open(token_file, "w") as fp:
        fp.write(hub.config.get("prometheus.token"))
    port = free_port()
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as fp:
        fp.write(f"global:\n  scrape_interval: {interval}s\n  scrape_timeout: {timeout}s\nscrape_configs:\n"
                 "  - job_name: server-monitor\n"
                 f"    authorization: {{type: Bearer, credentials_file: {token_file}}}\n"
                 "    http_sd_configs:\n"
                 f"      - url: {hub.url}/metrics/targets?shards={shards}\n"
                 "        refresh_interval: 30s\n"
                 f"        authorization: {{type: Bearer, credentials_file: {token_file}}}\n")
    log = open(os.path.join(work, "prometheus.log"), "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def query(base, promql, timeout=10):
    """The ``result`` of an instant PromQL query at Prometheus ``base`` (list of dicts)."""
    answer = HTTP.request("GET", base + "/api/v1/query", fields={"query": promql}, timeout=timeout)
    return json.loads(answer.data)["data"]["result"]


def run(servers=1000, shards=4, seconds=60, runs=3, workdir=None):
    """The figures (dict); see the module docstring."""
    work = workdir or tempfile.mkdtemp(prefix="sm-bench-metrics-")
    hub = Hub(work)
    hub.start()
    out = {"servers": servers, "gpus": servers * 8, "shards": shards, "machine": machine()}
    try:
        out["grow_s"] = round(grow(hub, servers), 1)
        out["whole_s"], out["whole_gzip_bytes"], out["whole_text_bytes"] = scrape_figures(hub, "/metrics", runs)
        out["shard_s"], out["shard_gzip_bytes"], out["shard_text_bytes"] = scrape_figures(
            hub, f"/metrics?shard=0&of={shards}", runs)
        out["ingest_alone"] = send_open_loop(hub, servers, seconds)
        prom, base = prometheus(hub, work, shards)
        try:
            time.sleep(20)  # discovery and the first scrapes
            out["ingest_while_scraped"] = send_open_loop(hub, servers, seconds)
            up = query(base, 'up{job="server-monitor"}')
            durations = query(base, 'scrape_duration_seconds{job="server-monitor"}')
            out["targets_up"] = f"{sum(r['value'][1] == '1' for r in up)}/{len(up)}"
            out["scrape_duration_s_max"] = round(max(float(r["value"][1]) for r in durations), 3) if durations else None
            out["gpu_series"] = int(float((query(base, "count(DCGM_FI_DEV_GPU_UTIL)") or [{"value": [0, 0]}])
                                          [0]["value"][1]))
        finally:
            os.killpg(prom.pid, 15)
            prom.wait(20)
        hub.sample()
        out["hub_rss_mib"] = round(hub.samples[-1][2] / 2**20) if hub.samples else None
    finally:
        hub.stop()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=60, help="each ingest latency run")
    parser.add_argument("--runs", type=int, default=3, help="scrapes timed per path")
    parser.add_argument("--workdir")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    figures = run(args.servers, args.shards, args.seconds, args.runs, args.workdir)
    print(json.dumps(figures), flush=True)
    if args.json:
        with open(args.json, "w") as fp:
            json.dump(figures, fp, indent=2)
    return 0
