"""The cost curve of issue 24 item 6: one hub grown from 100 to 10,000 servers × 8 GPUs, measured
at each size.

    .venv/bin/python -m bench curve [--sizes 100,1000,5000,10000] [--shards 4] [--scrape-interval 30]
        [--prometheus-seconds 150] [--ingest-seconds 60] [--runs 3] [--json out.json] [--workdir DIR]

A hub (``server-monitor serve``, its default two workers, its own maintenance, alert, fleet
publisher and /metrics builder processes) whose fleet grows **only through ``POST
/api/report``** (batches of 50 reports, each host once; nothing is written to the database
directly and nothing runs ANALYZE that the hub itself does not). Each host: 8 H100 GPUs
(values from the real nvidia-smi captures, ``tests/reports.py``), a compute process on each GPU
of three hosts in four (the fourth's GPUs idle and free), host groups as an agent's
``groups:`` sends them (``cluster-a``… of 500 hosts, ``rack-001``… of 40). The reports state a
900 s interval so that the hosts stay online while the pages are measured without a feeder;
the ingest figure sends at the rate of a 30 s interval (``servers / 30`` reports per second).

At each size, with the 1-minute load average next to each group of figures:

* **fleet**: ``GET /api/fleet`` as the admin — the document a page gets (``?fresh=1``, the
  publisher's for ≥ 100 servers), its gzip and JSON size, ``304``; and **changed**: after an
  admin's write (a silence set and ended), the worker's own build of ``?fresh=1`` (median of
  ``--runs``);
* **metrics**: ``/metrics`` whole and ``?shard=0&of=N`` with ``Accept-Encoding: gzip``: seconds
  (each a build, past the reuse window), bytes on the wire and as text;
* **prometheus**: Debian's ``prometheus`` with ``http_sd_configs`` over ``--shards`` targets
  every ``--scrape-interval`` s for ``--prometheus-seconds``: ``up`` (min over the run per
  target) and ``scrape_duration_seconds`` (max over the scrapes after each target's first, and
  each target's first); from ``--control-from`` servers (5,000) also the **control**: the same Prometheus scraping
  the same shards' bytes from a static server, i.e. Prometheus' own part of that time;
* **browser** (Debian chromium, Playwright, 1440×900, logged in): navigation start → every GPU
  cell on screen (up to 1,000 servers, the grid is open) or every group's summary line and
  heat-strip (the overview, above 1,000); one group opened → its every GPU cell; DOM nodes;
  ``/admin`` (DOMContentLoaded) and ``/free`` (first page drawn); first load and median of ``--runs``;
* **new host**: 20 hosts' first reports one at a time: the workers' CPU per report (and the
  hub's whole process tree's, publisher and maintenance included) and median latency;
* **ingest**: ``servers / 30`` reports per second (the first 1,000 hosts in turn), open loop,
  for ``--ingest-seconds``: rate achieved, p50 / p99 / max latency from when each was due, hub
  CPU share;
* **per_server** (``--per-server-targets``): one target per server (``/metrics/servers/<id>``)
  from ``/metrics/targets?per=server``, ``--shards`` scrape jobs keeping their share by
  ``hashmod`` of ``server_id``, every ``--per-server-intervals`` s (each in turn, a Prometheus
  of its own): every target's ``scrape_duration_seconds`` (max, p99, p50 after its first), ``up``, the hub's CPU while
  scraped, and the ingest figures while scraped (see :func:`per_server_figures`);
* **rss**: the hub's process tree (workers, publisher, builders), after the size's measurements.
"""

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

import urllib3

from bench import metrics as bench_metrics
from bench.common import HTTP, Hub, login, machine, pct, sample_report, timed

GROUP_SIZE = 500  # hosts per cluster (cluster-a ... cluster-t at 10,000)
RACK_SIZE = 40
INTERVAL_S = 900


def host(i):
    """Host name of fleet member ``i``."""
    return f"node-{i:05d}"


def groups_of(i):
    """The host groups host ``i``'s agent reports: its cluster and its rack."""
    n = i // GROUP_SIZE
    cluster = "cluster-" + (chr(ord("a") + n) if n < 26 else f"z{n}")
    return [cluster, f"rack-{i // RACK_SIZE + 1:03d}"]


def report_for(i, name=None):
    """The report of host ``i`` (see the module docstring), a new ``report_id`` and times each call."""
    busy = i % 4 != 3
    report = sample_report(name or host(i), gpus=8, processes=1 if busy else 0, sample_time=time.time())
    report["interval"] = INTERVAL_S
    report["groups"] = groups_of(i)
    if not busy:
        for gpu in report["gpus"]:
            gpu["utilization.gpu"], gpu["memory.used"] = 0, 0
    return report


def post(hub, reports, timeout=120):
    token = hub.config.get("agent.token")
    body = json.dumps({"reports": reports} if isinstance(reports, list) else reports).encode()
    t0 = time.perf_counter()
    answer = HTTP.request("POST", hub.url + "/api/report", body=body, timeout=timeout,
                          headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    assert answer.status in (200, 201, 207), answer.data[:300]
    return (time.perf_counter() - t0) * 1000


def grow(hub, start, stop, batch=50):
    """Hosts ``start``..``stop - 1`` through ``POST /api/report`` in batches; returns seconds."""
    t0 = time.monotonic()
    for first in range(start, stop, batch):
        post(hub, [report_for(i) for i in range(first, min(stop, first + batch))])
    return time.monotonic() - t0


def load():
    return round(os.getloadavg()[0], 1)


def fleet_figures(hub, http, cookies, runs):
    gz = dict(cookies, **{"Accept-Encoding": "gzip"})
    out = {"load": load()}
    response, body, ms = timed("GET", hub.url + "/api/fleet?fresh=1", http, headers=gz)
    assert response.status == 200
    out["first_ms"], out["gzip_bytes"] = round(ms), len(body)
    import gzip

    out["json_bytes"] = len(gzip.decompress(body))
    served = [timed("GET", hub.url + "/api/fleet?fresh=1", http, headers=gz)[2] for _ in range(runs)]
    out["page_ms"] = round(statistics.median(served))
    etag = response.headers["etag"]
    for _ in range(3):
        response, body, ms = timed("GET", hub.url + "/api/fleet", http, headers=gz)
        if response.status == 200:
            etag = response.headers["etag"]
    unchanged = [timed("GET", hub.url + "/api/fleet", http, headers=dict(gz, **{"If-None-Match": etag}))
                 for _ in range(runs * 3)]
    out["not_modified_ms"] = round(statistics.median(ms for r, _, ms in unchanged if r.status == 304), 1) \
        if any(r.status == 304 for r, _, _ in unchanged) else None
    changed = []
    json_headers = dict(cookies, **{"Content-Type": "application/json"})
    for k in range(runs):
        post(hub, report_for(k))
        made = http.request("POST", hub.url + "/api/silences", headers=json_headers,
                            body=json.dumps({"server_id": 1, "minutes": 5, "note": "bench"}).encode())
        assert made.status == 201, made.data[:300]
        http.request("DELETE", f"{hub.url}/api/silences/{json.loads(made.data)['silence_id']}", headers=cookies)
        response, body, ms = timed("GET", hub.url + "/api/fleet?fresh=1", http, headers=gz)
        assert response.status == 200
        changed.append(ms)
    out["changed_ms"] = [round(ms) for ms in changed]
    return out


def metrics_figures(hub, shards, runs):
    out = {"load": load()}
    out["whole_s"], out["whole_gzip_bytes"], out["whole_text_bytes"] = bench_metrics.scrape_figures(hub, "/metrics", runs)
    out["shard_s"], out["shard_gzip_bytes"], out["shard_text_bytes"] = bench_metrics.scrape_figures(
        hub, f"/metrics?shard=0&of={shards}", runs)
    out["load_after"] = load()
    return out


def scrape_durations(base, selector, seconds):
    """``({shard: max scrape_duration_seconds of its scrapes after the first}, {shard: its first})``
    over the last ``seconds`` (each target's first scrape also starts the worker's builder and has
    Prometheus create every series)."""
    result = bench_metrics.query(base, f"scrape_duration_seconds{{{selector}}}[{seconds + 10}s]")
    steady, first = {}, {}
    for series in result:
        values = [float(v) for _, v in sorted(series["values"], key=lambda tv: float(tv[0]))]
        shard = series["metric"].get("shard", "?")
        first[shard] = round(values[0], 2)
        steady[shard] = round(max(values[1:]), 2) if len(values) > 1 else None
    return steady, first


def prometheus_figures(hub, work, shards, interval, seconds):
    proc, base = bench_metrics.prometheus(hub, work, shards, interval=interval, timeout=min(interval, 20))
    try:
        time.sleep(seconds)
        up = bench_metrics.query(base, f'min_over_time(up{{job="server-monitor"}}[{seconds}s])')
        steady, first = scrape_durations(base, 'job="server-monitor"', seconds)
        scrapes = bench_metrics.query(base, f'count_over_time(up{{job="server-monitor"}}[{seconds}s])')
        samples = bench_metrics.query(base, 'scrape_samples_scraped{job="server-monitor"}')
        return {"load": load(), "targets": len(up), "all_up": sum(r["value"][1] == "1" for r in up),
                "scrape_s_max": steady, "scrape_s_first": first,
                "scrapes": sum(int(float(r["value"][1])) for r in scrapes),
                "samples": sum(int(float(r["value"][1])) for r in samples)}
    finally:
        os.killpg(proc.pid, 9)  # SIGTERM: it may write its head for 20 s or more at 10,000 servers
        proc.wait(20)


def prometheus_control(hub, work, shards, interval, seconds):
    """The same Prometheus scrape of the same bytes without the hub: each shard's gzip exposition,
    fetched once from the hub, served by a static HTTP server (a thread of this process) to
    Prometheus with ``static_configs``. Its ``scrape_duration_seconds`` is Prometheus' own part
    (transfer, decompression, parsing, appending the samples)."""
    import http.server
    import subprocess

    auth = {"Authorization": "Bearer " + hub.config.get("prometheus.token"), "Accept-Encoding": "gzip"}
    bodies = {f"/s{i}": HTTP.request("GET", f"{hub.url}/metrics?shard={i}&of={shards}", headers=auth,
                                     decode_content=False, timeout=120).data for i in range(shards)}

    class Static(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the http.server name
            body = bodies.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Static)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    config = os.path.join(work, "control.yml")
    with open(config, "w") as fp:
        fp.write(f"global:\n  scrape_interval: {interval}s\n  scrape_timeout: {min(interval, 20)}s\nscrape_configs:\n")
        for i in range(shards):
            fp.write(f"  - job_name: control-{i}\n    metrics_path: /s{i}\n"
                     f"    static_configs: [{{targets: ['127.0.0.1:{port}'], labels: {{shard: '{i}'}}}}]\n")
    prom_port = bench_metrics.free_port()
    log = open(os.path.join(work, "control.log"), "wb")
    proc = subprocess.Popen([bench_metrics.PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb-control",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        time.sleep(seconds)
        steady, first = scrape_durations(base, 'job=~"control-.*"', seconds)
        up = bench_metrics.query(base, f'min_over_time(up{{job=~"control-.*"}}[{seconds}s])')
        return {"load": load(), "all_up": sum(r["value"][1] == "1" for r in up), "scrape_s_max": steady,
                "scrape_s_first": first}
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(20)
        server.shutdown()


def per_server_prometheus(hub, work, shards, interval, path):
    """Start Debian's prometheus on ``hub`` with ``shards`` scrape jobs over one http_sd list of
    one target per server (``/metrics/targets?per=server``), each job keeping its share by
    ``hashmod`` of ``server_id`` (docs/scaling.md's N-shard config, in one Prometheus); returns
    (proc, base)."""
    import subprocess

    token_file = os.path.join(work, "prom-token")
    with open(token_file, "w") as fp:
        fp.write(hub.config.get("prometheus.token"))
    config = os.path.join(work, "per-server.yml")
    auth = f"authorization: {{type: Bearer, credentials_file: {token_file}}}"
    with open(config, "w") as fp:
        fp.write(f"global:\n  scrape_interval: {interval}s\n  scrape_timeout: {min(interval, 20)}s\nscrape_configs:\n")
        for i in range(shards):
            fp.write(f"  - job_name: server-monitor-{i}\n    {auth}\n    http_sd_configs:\n"
                     f"      - url: {hub.url}/metrics/targets?per=server\n        refresh_interval: 60s\n        {auth}\n"
                     "    relabel_configs:\n"
                     f"      - {{source_labels: [server_id], modulus: {shards}, target_label: __tmp_hash, action: hashmod}}\n"
                     f"      - {{source_labels: [__tmp_hash], regex: '{i}', action: keep}}\n")
    port = bench_metrics.free_port()
    log = open(os.path.join(work, "per-server-prometheus.log"), "wb")
    proc = subprocess.Popen([bench_metrics.PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={path}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def per_server_figures(hub, work, servers, shards, interval, seconds, ingest_seconds):
    """Issue 24 item 5's other design: one Prometheus target per server (``/metrics/servers/<id>``,
    ~270 samples), split into ``shards`` jobs by ``hashmod``, every ``interval`` s for ``seconds``.
    After one interval of warm-up: the hub's CPU (cores) over one interval of scraping alone,
    then the ingest figures (``servers / 30`` reports/s) for ``ingest_seconds`` while scraped.
    Then over the run: targets, ``up`` (min per target), ``scrape_duration_seconds`` max and
    p99 over every scrape after each target's first (and the max of the firsts), scrapes, samples."""
    proc, base = per_server_prometheus(hub, work, shards, interval, os.path.join(work, f"tsdb-per-server-{interval}"))
    t_start = time.monotonic()
    try:
        time.sleep(interval + 10)
        out = {"load_start": load()}
        cpu0, t0 = hub.cpu_seconds(), time.monotonic()
        time.sleep(interval)
        out["hub_cores_scraped"] = round((hub.cpu_seconds() - cpu0) / (time.monotonic() - t0), 2)
        out["load_scraped"] = load()
        out["ingest_while_scraped"] = ingest_figures(hub, servers, ingest_seconds)
        time.sleep(max(0.0, seconds - (time.monotonic() - t_start)))
        window = int(time.monotonic() - t_start) + 10
        selector = 'job=~"server-monitor-.*"'
        up = bench_metrics.query(base, f"min_over_time(up{{{selector}}}[{window}s])", timeout=60)
        durations = bench_metrics.query(base, f"scrape_duration_seconds{{{selector}}}[{window}s]", timeout=60)
        steady, firsts = [], []
        for series in durations:
            values = [float(v) for _, v in sorted(series["values"], key=lambda tv: float(tv[0]))]
            firsts.append(values[0])
            steady += values[1:]
        samples = bench_metrics.query(base, f"sum(scrape_samples_scraped{{{selector}}})", timeout=60)
        out.update({"load": load(), "interval_s": interval, "jobs": shards, "targets": len(up),
                    "all_up": sum(r["value"][1] == "1" for r in up),
                    "scrapes": len(steady) + len(firsts),
                    "scrape_s_max": round(max(steady), 3) if steady else None,
                    "scrape_s_p99": round(pct(steady, 0.99), 3) if steady else None,
                    "scrape_s_p50": round(pct(steady, 0.5), 3) if steady else None,
                    "over_2s": sum(v > 2 for v in steady),
                    "scrape_s_first_max": round(max(firsts), 3) if firsts else None,
                    "samples": int(float(samples[0]["value"][1])) if samples else 0})
        return out
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(20)


# Navigation start -> the page's "done" state, checked on every animation frame.
# The overview (every section closed: above fleet.OVERVIEW_MIN_SERVERS rows) is done when every
# group line is filled; the grid when every GPU of the fleet has its cell.
VISIBLE = """(gpus) => {
  const sections = document.querySelectorAll('#grid details.gsec');
  const overview = sections.length > 0 && document.querySelectorAll('#grid details.gsec[open]').length === 0;
  const heads = [...document.querySelectorAll('#grid details.gsec > summary .gline')].filter((e) => e.textContent).length;
  const ready = overview ? heads === sections.length : document.querySelectorAll('#grid .cell').length >= gpus;
  if (ready) { window.__visible = window.__visible || performance.now(); window.__overview = overview; return true; }
  return false; }"""


def browser_figures(hub, servers, runs):
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM_ARGS, chromium_path

    http, cookies = login(hub)
    counts = json.loads(http.request("GET", hub.url + "/api/fleet", headers=cookies).data)["counts"]["gpus"]
    gpus = sum(counts.values())  # the fleet's (new hosts of the smaller sizes included)
    out = {"load": load(), "gpus": gpus}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.goto(hub.url + "/login")
        page.fill("#username", "admin")
        page.fill("#password", hub.password)
        page.press("#password", "Enter")
        page.wait_for_url(hub.url + "/", timeout=120000)
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        visible = []
        for _ in range(runs + 1):
            page.goto(hub.url + "/")
            page.wait_for_function(VISIBLE, arg=gpus, timeout=180000, polling="raf")
            visible.append(page.evaluate("window.__visible"))
            overview = page.evaluate("window.__overview")
        out["visible_first_ms"], out["visible_ms"] = round(visible[0]), round(statistics.median(visible[1:]))
        out["overview"] = overview
        out["nodes"] = int({m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["Nodes"])
        out["dom_elements"] = page.evaluate("document.getElementsByTagName('*').length")
        out["height_px"] = page.evaluate("document.documentElement.scrollHeight")
        if overview:  # one group opened: every GPU cell of it on screen
            opened = []
            for _ in range(runs):
                page.goto(hub.url + "/")
                page.wait_for_function(VISIBLE, arg=gpus, timeout=180000, polling="raf")
                opened.append(page.evaluate("""() => new Promise((resolve) => {
                  const sec = document.querySelector('#grid details.gsec');
                  const want = [...sec.querySelectorAll('summary .gline')][0].textContent.match(/(\\d+) GPUs/)[1] * 1;
                  const t0 = performance.now();
                  sec.open = true;
                  const check = () => sec.querySelectorAll('.cell').length >= want ? resolve([performance.now() - t0, want])
                                                                                   : requestAnimationFrame(check);
                  requestAnimationFrame(check); })"""))
            out["group_open_ms"] = round(statistics.median(t for t, _ in opened))
            out["group_gpus"] = opened[0][1]
            out["nodes_group_open"] = page.evaluate("document.getElementsByTagName('*').length")
        for path, ready in (("/admin", None), ("/free", "#free-count:not(:empty)")):
            loads = []
            for _ in range(runs + 1):
                page.goto(hub.url + path, wait_until="domcontentloaded")
                if ready:
                    page.wait_for_selector(ready, timeout=120000)
                    loads.append(page.evaluate("performance.now()"))
                else:
                    loads.append(page.evaluate("performance.timing.domContentLoadedEventEnd"
                                               " - performance.timing.navigationStart"))
            name = path.strip("/")
            out[f"{name}_first_ms"], out[f"{name}_ms"] = round(loads[0]), round(statistics.median(loads[1:]))
            out[f"{name}_nodes"] = page.evaluate("document.getElementsByTagName('*').length")
        browser.close()
    out["load_after"] = load()
    return out


def worker_cpu_seconds(hub):
    """CPU seconds of the hub's worker processes (its direct children that serve requests; not the
    fleet publisher, the /metrics builders or the leader's maintenance)."""
    import psutil

    total = 0.0
    for child in psutil.Process(hub.proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def new_host_figures(hub, first, count=20):
    """``count`` new hosts' first reports (fleet members ``first``…, the next size's first hosts),
    one at a time: the workers' CPU ms per report (the hub's whole tree beside it) and median latency."""
    latencies = []
    cpu0, tree0 = worker_cpu_seconds(hub), hub.cpu_seconds()
    for k in range(first, first + count):
        latencies.append(post(hub, report_for(k)))
    cpu = (worker_cpu_seconds(hub) - cpu0) * 1000 / count
    tree = (hub.cpu_seconds() - tree0) * 1000 / count
    return {"load": load(), "worker_cpu_ms_per_report": round(cpu, 2), "hub_tree_cpu_ms_per_report": round(tree, 2),
            "latency_ms": round(statistics.median(latencies), 1)}


def ingest_figures(hub, servers, seconds, senders=8):
    """Reports of the fleet's hosts at ``servers / 30`` per second (a 30 s interval), open loop:
    each report is due at its time; ``senders`` threads with kept-alive connections send them."""
    rate = servers / 30
    token = hub.config.get("agent.token")
    # The first 1,000 hosts' reports, in turn (building each host's report costs the bench 6.5 ms; the
    # hub's cost per report does not depend on which of its hosts sent it).
    templates = [report_for(i) for i in range(min(servers, 1000))]
    latencies, lock = [], threading.Lock()
    start = time.monotonic() + 0.5
    total = int(rate * seconds)
    counter = iter(range(total))

    def sender():
        http = urllib3.PoolManager(maxsize=1, retries=False)
        for k in counter:
            due = start + k / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            now = time.time()
            report = dict(templates[k % len(templates)], report_id=f"curve-{k}-{time.time_ns()}",
                          sample_time=now, sent_at=now)
            answer = http.request("POST", hub.url + "/api/report", body=json.dumps(report).encode(),
                                  headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            with lock:
                # open loop: from when the report was due, so a sender that fell behind counts too
                latencies.append((time.monotonic() - due) * 1000 if answer.status == 201 else float("inf"))

    cpu0, t0 = hub.cpu_seconds(), time.monotonic()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.monotonic() - t0
    cpu = hub.cpu_seconds() - cpu0
    return {"load": load(), "target_per_s": round(rate, 1), "sent": len(latencies),
            "achieved_per_s": round(len(latencies) / elapsed, 1), "failed": sum(ms == float("inf") for ms in latencies),
            "p50_ms": round(pct(latencies, 0.5), 1), "p99_ms": round(pct(latencies, 0.99), 1),
            "max_ms": round(max(latencies), 1), "hub_cores": round(cpu / elapsed, 2)}


def rss_mib(hub):
    hub.samples.clear()
    hub.sample()
    return round(hub.samples[-1][2] / 2**20) if hub.samples else None


def run(sizes, shards=4, interval=30, prometheus_seconds=150, ingest_seconds=60, runs=3, workdir=None,
        skip=(), out_path=None, control_from=5000, per_server=False, per_server_intervals=(30,)):
    work = workdir or tempfile.mkdtemp(prefix="sm-bench-curve-")
    hub = Hub(work)
    hub.start()
    results = {"machine": machine(), "sizes": {}, "workdir": work}
    grown = 0
    try:
        for size in sizes:
            row = results["sizes"][size] = {"servers": size, "gpus": size * 8}
            row["grow_s"] = round(grow(hub, grown, size), 1)
            grown = size
            time.sleep(3)
            http, cookies = login(hub)
            if "fleet" not in skip:
                row["fleet"] = fleet_figures(hub, http, cookies, runs)
            if "browser" not in skip:
                row["browser"] = browser_figures(hub, size, runs)
            if "metrics" not in skip:
                row["metrics"] = metrics_figures(hub, shards, max(2, runs - 1))
            if "prometheus" not in skip:
                row["prometheus"] = prometheus_figures(hub, work, shards, interval, prometheus_seconds)
            for every in (per_server_intervals if per_server else ()):
                row[f"per_server_{every}s"] = per_server_figures(hub, work, size, shards, every,
                                                                 max(prometheus_seconds, 3 * every + ingest_seconds + 20),
                                                                 ingest_seconds)
                print(json.dumps({str(size): {f"per_server_{every}s": row[f"per_server_{every}s"]}}), flush=True)
            if "control" not in skip and size >= control_from:
                row["prometheus_control"] = prometheus_control(hub, work, shards, interval, prometheus_seconds)
            row["rss_mib"] = rss_mib(hub)
            if "newhost" not in skip:
                row["new_host"] = new_host_figures(hub, grown)
                grown += 20
            if "ingest" not in skip:
                row["ingest"] = ingest_figures(hub, size, ingest_seconds)
            row["rss_mib_after_ingest"] = rss_mib(hub)
            print(json.dumps({str(size): row}), flush=True)
            if out_path:
                with open(out_path, "w") as fp:
                    json.dump(results, fp, indent=2)
    finally:
        hub.stop()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench curve", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000,10000")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--scrape-interval", type=int, default=30)
    parser.add_argument("--prometheus-seconds", type=int, default=150)
    parser.add_argument("--ingest-seconds", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--control-from", type=int, default=5000, help="the Prometheus control from this size on")
    parser.add_argument("--skip", default="", help="comma-separated: fleet,browser,metrics,prometheus,control,newhost,ingest")
    parser.add_argument("--per-server-targets", action="store_true",
                        help="also: one Prometheus target per server, --shards jobs split by hashmod")
    parser.add_argument("--per-server-intervals", default="30", help="their scrape interval(s), s, comma-separated")
    parser.add_argument("--workdir")
    parser.add_argument("--json", help="write the figures here (after each size)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine(), flush=True)
    run(sizes, args.shards, args.scrape_interval, args.prometheus_seconds, args.ingest_seconds, args.runs,
        args.workdir, set(filter(None, args.skip.split(","))), args.json, args.control_from,
        args.per_server_targets, [int(v) for v in args.per_server_intervals.split(",")])
    return 0
