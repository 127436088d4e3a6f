"""Proof under load and faults: one suite, a quick profile for CI and a full one by hand.

    .venv/bin/python -m bench prove --profile quick            # ~2 minutes (CI runs it)
    .venv/bin/python -m bench prove --profile full             # ~15 minutes, the recorded figures
    .venv/bin/python -m bench prove --only outage,crash        # some scenarios
    .venv/bin/python -m bench prove --profile mixed-small      # issue 13's mixed use, scaled down
    .venv/bin/python -m bench prove --profile mixed            # the same at 1,000 agents, 10 minutes

Scenarios, each against the real hub process (``server-monitor serve``) on loopback:

* ``load``: simulated agents (payloads from the real captures, the agent's own
  Delivery/Spool/Transport code, a compressed interval) and dashboard viewers polling the
  canned queries: zero errors, every acknowledged report stored exactly once, latencies,
  hub CPU and RSS over time.
* ``outage``: the hub stopped for 100 agent intervals, then started: every spooled report
  arrives, none twice, in order per host.
* ``crash``: ``kill -9`` of the hub under load: ``PRAGMA integrity_check`` ok, every report
  acknowledged before the kill is there, the agents resend the rest.
* ``disk_full``: the hub's file-size limit (RLIMIT_FSIZE) stops the database from growing:
  ingest answers 503, agents spool, nothing is corrupt, all arrives once space returns.
* ``bad_collectors``: real agent processes whose fake nvidia-smi hangs, loses a GPU or
  reports a driver/library mismatch, beside the simulated fleet: each state is named, the
  other hosts are unaffected.
* ``mixed`` (profiles ``mixed``/``mixed-small`` only): agents, dashboard viewer groups and
  analysts looping a heavy ad-hoc query at once: ingest and dashboard p50/p99, errors, lost
  reports, the analysts' answers (time-limited, queued out) and the hub's CPU.
* ``fuzz``: schemathesis against ``docs/openapi.yaml`` on the running hub: no 5xx,
  responses match the schema.

Exit status 0 when every invariant held; the figures are printed and written as JSON.
"""

import argparse
import concurrent.futures
import copy
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import logging

import urllib3
import yaml

from bench import common
from bench.common import ROOT, pct, sample_report
from monitor_agent.delivery import Delivery
from monitor_agent.spool import Spool
from monitor_agent.transport import Transport
from server_monitor.core import config as config_mod

PROFILES = {
    # agents, viewers, load seconds, agent tick (real s), viewer period (s), outage agents, outage tick
    # quick (CI): fuzzing was 134 of 318 s at 30 examples per operation; 10 still reach every
    # operation, the full profile keeps 300.
    "quick": dict(agents=60, viewers=4, seconds=10, tick=1.0, viewer_period=2.0, outage_agents=20,
                  outage_tick=0.1, crash_agents=30, fuzz_examples=10, viewer_groups=[(3, 2.0)], analysts=1),
    "full": dict(agents=500, viewers=20, seconds=300, tick=5.0, viewer_period=5.0, outage_agents=500,
                 outage_tick=0.5, crash_agents=200, fuzz_examples=300),
    # Issue 13's mixed use, all at once: agents at agents/tick reports/s, viewer groups
    # (count, refresh period s), analysts looping a heavy ad-hoc SQL query. "mixed" is the
    # goal (1,000 agents at 200 reports/s, 10 minutes); "mixed-small" fits a shared 2-core VM.
    # warmup: seconds of the fleet reporting before viewers and analysts start and figures are
    # taken (every host known, the hub's first statistics gathered: the steady state).
    "mixed": dict(agents=1000, seconds=600, tick=5.0, viewer_groups=[(50, 30.0), (10, 5.0)], analysts=2, warmup=60),
    "mixed-small": dict(agents=200, seconds=120, tick=5.0, viewer_groups=[(10, 30.0), (2, 5.0)], analysts=2,
                        warmup=30),
    # The fleet alone (one viewer, no analysts): what ingest does beside the hub's own maintenance.
    "mixed-fleet": dict(agents=1000, seconds=120, tick=5.0, viewer_groups=[(1, 30.0)], analysts=0, warmup=30),
}
# Scenarios a profile runs when --only is not given.
PROFILE_SCENARIOS = {"mixed": ["mixed"], "mixed-small": ["mixed"], "mixed-fleet": ["mixed"]}
# A heavy analyst query: every raw GPU sample, grouped per server (a full scan of history).
HEAVY_SQL = ("select g.server_id, count(*), avg(s.utilization_gpu), max(s.temperature_gpu_c) "
             "from gpu_samples s join gpus g on g.id = s.gpu_id group by g.server_id")
CAPTURES = [("h100-80gb", "load", 8), ("h200", "load", 8), ("h100-mig", "load", 4), ("rtx-4080", "load", 1)]
VIRTUAL_INTERVAL = 30  # seconds of sample time per agent tick (the "compressed interval")
HUB_WORKERS = None  # --workers: the hub's server.workers for this run (None: the config's default)
REPLICATE = False  # --replicate: the hub replicates both databases with Litestream to <its dir>/replica


class Hub(common.Hub):
    """The shared hub (:class:`bench.common.Hub`), started with this run's ``--workers`` (and,
    with ``--replicate``, its ``replication`` section on: Litestream to ``<workdir>/replica``)."""

    def start(self, workers=None, fsize=None):
        with open(self.config_path) as fp:
            data = yaml.safe_load(fp)
        # The simulated viewers and analysts all log in as the admin, one session each, at once:
        # lift the budget of right passwords and the cap on live sessions per user (docs/security.md N10).
        data["auth"].update(logins_per_minute=100000, max_sessions_per_user=100000)
        if REPLICATE:
            data["replication"] = {"enabled": True, "url": os.path.join(self.workdir, "replica"), "sync_interval": "1s"}
        with open(self.config_path, "w") as fp:
            yaml.safe_dump(data, fp)
        return super().start(workers or HUB_WORKERS, fsize)


class AckTransport(Transport):
    """The agent's transport, also recording which report ids the hub acknowledged."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.acked, self.latencies, self.statuses = set(), [], []
        self.lock = threading.Lock()

    def send(self, payload):
        t0 = time.perf_counter()
        result = super().send(payload)
        with self.lock:
            self.latencies.append((time.perf_counter() - t0) * 1000)
            self.statuses.append(result.status)
            if result.outcome == "delivered":
                if "reports" in payload:
                    for report, item in zip(payload["reports"], result.body.get("results") or []):
                        if item.get("status") in (200, 201):
                            self.acked.add(report["report_id"])
                else:
                    self.acked.add(payload["report_id"])
        return result


TEMPLATES = {}


def template(index):
    capture, state, gpus = CAPTURES[index % len(CAPTURES)]
    if capture not in TEMPLATES:
        TEMPLATES[capture] = sample_report("template", gpus=gpus, processes=1, capture=capture, state=state)
    return TEMPLATES[capture]


class SimAgent:
    """One simulated host: real Delivery + Spool + Transport, reports from a capture template."""

    def __init__(self, index, hub_url, token, spool_root, t0):
        self.name = f"sim-{index:04d}"
        self.base = template(index)
        self.transport = AckTransport(hub_url, token, timeout=10)
        self.delivery = Delivery(self.transport, Spool(os.path.join(spool_root, self.name)), retry_base_s=0.5,
                                 retry_max_s=5)
        self.t0 = t0
        self.seq = 0
        self.generated = []

    def make(self):
        report = copy.deepcopy(self.base)
        report["report_id"] = str(uuid.uuid4())
        report["sample_time"] = self.t0 + self.seq * VIRTUAL_INTERVAL
        report.pop("sent_at", None)
        report["host"]["hostname"] = self.name
        report["host"]["machine_id"] = self.name
        for gpu in report["gpus"]:
            gpu["uuid"] = f"GPU-{self.name}-{gpu['index']}"
        for proc in report["processes"]:
            proc["gpu_uuid"] = f"GPU-{self.name}-{report['gpus'][0]['index']}"
        report["processes"] = report["processes"][:1]
        report["processes"][0]["pid"] = self.seq  # the hub's storage order, per host, is checkable
        self.seq += 1
        self.generated.append(report["report_id"])
        return report

    def tick(self):
        self.delivery.submit(self.make())

    def drain(self, seconds=120):
        deadline = time.monotonic() + seconds
        while len(self.delivery.spool) and time.monotonic() < deadline:
            self.delivery.next_attempt = 0
            self.delivery.flush()
            if len(self.delivery.spool):
                time.sleep(0.2)
        return len(self.delivery.spool) == 0


def fleet(hub, work, name, count, t0):
    """``count`` simulated agents reporting to ``hub``, spools under ``work/<name>-spools``."""
    return [SimAgent(i, hub.url, hub.config.get("agent.token"), os.path.join(work, f"{name}-spools"), t0)
            for i in range(count)]


def finish(threads, agents):
    """Wait for the agents' schedule to end, then for every spool to drain."""
    for t in threads:
        t.join()
    for a in agents:
        assert a.drain(), f"{a.name}: spool did not drain"


def run_agents(agents, seconds, tick, stop=None):
    """Tick every agent every ``tick`` seconds (staggered) for ``seconds``, in threads."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds

    def loop(agent, offset):
        next_at = time.monotonic() + offset
        while not stop.is_set() and time.monotonic() < deadline:
            wait = next_at - time.monotonic()
            if wait > 0:
                stop.wait(min(wait, deadline - time.monotonic()))
                continue
            agent.tick()
            next_at += tick

    threads = [threading.Thread(target=loop, args=(a, tick * i / len(agents)), daemon=True)
               for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    return threads


def login(hub):
    return common.login(hub, retries=None)  # browsers retry idempotent requests on a stale connection


def analysts(hub, count, stop):
    """Analysts looping :data:`HEAVY_SQL` as ad-hoc SQL; an answer stopped by the analysts'
    time limit (400 "too long") or held back by their queue (429/503) is expected, anything
    else (5xx, a dropped connection) is an error."""
    results = {"requests": 0, "ok": 0, "time_limited": 0, "queued_out": 0, "errors": 0, "latencies": []}
    lock = threading.Lock()
    path = "/monitor.json?_shape=objects&sql=" + urllib.parse.quote(HEAVY_SQL)

    sessions = [login(hub) for _ in range(count)]

    def loop(n):
        http, headers = sessions[n]
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                response = http.request("GET", hub.url + path, headers=headers, timeout=60)
                status, body = response.status, response.data
            except urllib3.exceptions.HTTPError:
                status, body = 0, b""
            with lock:
                results["requests"] += 1
                results["latencies"].append((time.perf_counter() - t0) * 1000)
                if status == 200:
                    results["ok"] += 1
                elif status == 400 and b"too long" in body:
                    results["time_limited"] += 1
                elif status in (429, 503):
                    results["queued_out"] += 1
                    stop.wait(1)
                else:
                    results["errors"] += 1

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    return threads, results


def viewers(hub, count, period, stop, results=None):
    """Dashboard viewers: each does what the dashboard page does every ``period`` seconds
    (``static/dashboard.js`` ``refresh()``): ``GET /api/fleet`` with its last ``ETag`` (gzip, as a
    browser asks) and the ``announcements`` canned query, in parallel on two connections as the
    browser's ``Promise.all`` does. One refresh's latency is until both have answered; each
    request's own latency is kept too (``by_path``). Viewer ``n`` of ``count`` starts its cycle
    ``period * n / count`` seconds in, as viewers who opened the page at different times."""
    results = results or {"latencies": [], "errors": 0, "requests": 0}
    lock = threading.Lock()

    sessions = [login(hub) for _ in range(count)]  # one after the other, before the load: not a login storm
    phases = [period * n / count for n in range(count)]  # evenly out of phase (see loop)

    def loop(n):
        _, headers = sessions[n]
        http = urllib3.PoolManager(maxsize=2)  # two kept-alive connections, as a browser keeps
        headers = dict(headers, **{"Accept": "application/json", "Accept-Encoding": "gzip"})
        etag = [None]
        pool = concurrent.futures.ThreadPoolExecutor(2)

        def get(path):
            extra = {"If-None-Match": etag[0]} if etag[0] and path == "/api/fleet" else {}
            started = time.perf_counter()
            try:
                response = http.request("GET", hub.url + path, headers=dict(headers, **extra), timeout=30)
                status = response.status
                if path == "/api/fleet" and status == 200:
                    etag[0] = response.headers.get("ETag")
            except urllib3.exceptions.HTTPError:
                status = 0
            with lock:
                results.setdefault("by_path", {}).setdefault(path.split("?")[0], []).append(
                    (time.perf_counter() - started) * 1000)
            return f"{path.split('?')[0]} {status}" if status not in (200, 304) else None

        # Real viewers opened their dashboards at different moments, so their refresh timers are
        # out of phase: each starts at its own offset within the period (all at once, every 30 s,
        # would be 50 simultaneous first builds and bursts no group of people produces).
        stop.wait(phases[n])
        while not stop.is_set():
            t0 = time.perf_counter()
            failed = [f for f in pool.map(get, ("/api/fleet", "/monitor/announcements.json?_shape=objects")) if f]
            with lock:
                results["latencies"].append((time.perf_counter() - t0) * 1000)
                results["requests"] += 1
                results["errors"] += bool(failed)
                for key in failed:
                    results.setdefault("failures", {})[key] = results.get("failures", {}).get(key, 0) + 1
            stop.wait(period)
        pool.shutdown()

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    return threads, results


def check_stored(hub, agents, check_order=True):
    """Every generated report stored exactly once (and in order per host)."""
    conn = hub.db()
    stored = [r for (r,) in conn.execute(
        "SELECT h.report_id FROM host_samples h JOIN servers s ON s.id = h.server_id WHERE s.hostname LIKE 'sim-%'")]
    generated = [r for a in agents for r in a.generated]
    assert len(stored) == len(set(stored)), "a report was stored twice"
    missing = set(generated) - set(stored)
    if missing:
        where = [(a.name, a.generated.index(r), r in a.transport.acked, a.delivery.spool.stats(),
                  sorted(set(a.transport.statuses), key=str), a.t0 + a.generated.index(r) * VIRTUAL_INTERVAL,
                  conn.execute("SELECT h.ts, h.received_at, h.report_id FROM host_samples h JOIN servers s"
                               " ON s.id = h.server_id WHERE s.hostname = ? AND abs(h.ts - ?) <= 120 ORDER BY h.ts",
                               (a.name, a.t0 + a.generated.index(r) * VIRTUAL_INTERVAL)).fetchall())
                 for a in agents for r in a.generated if r in missing]
        raise AssertionError(f"{len(missing)} reports missing: (host, sequence, acknowledged, spool, statuses) {where[:5]}")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    if check_order:
        for agent in agents:
            pids = [p for (p,) in conn.execute(
                "SELECT p.pid FROM gpu_processes p JOIN servers s ON s.id = p.server_id WHERE s.hostname = ?"
                " ORDER BY p.id", (agent.name,))]
            assert pids == sorted(pids), f"{agent.name}: reports stored out of order"
    conn.close()
    return len(generated)


def scenario_load(p, work):
    hub = Hub(os.path.join(work, "load"))
    hub.start()
    t0 = time.time() - p["seconds"] / p["tick"] * VIRTUAL_INTERVAL - 600
    agents = fleet(hub, work, "load", p["agents"], t0)
    stop = threading.Event()
    viewer_threads, viewed = viewers(hub, p["viewers"], p["viewer_period"], stop)
    threads = run_agents(agents, p["seconds"], p["tick"])
    while any(t.is_alive() for t in threads):
        hub.sample()
        time.sleep(1)
    stop.set()
    for t in viewer_threads:
        t.join(timeout=60)
    for a in agents:
        assert a.drain(), f"{a.name}: spool did not drain"
    total = check_stored(hub, agents)
    latencies = [lat for a in agents for lat in a.transport.latencies]
    errors = sum(1 for a in agents for s in a.transport.statuses if s not in (200, 201, 207))
    acked = set().union(*(a.transport.acked for a in agents))
    if errors:
        from collections import Counter

        kinds = Counter(str(s) for a in agents for s in a.transport.statuses if s not in (200, 201, 207))
        raise AssertionError(f"{errors} ingest requests failed: {dict(kinds)}; ingest p99 "
                             f"{pct([x for a in agents for x in a.transport.latencies], 0.99):.0f} ms")
    assert viewed["errors"] == 0, f"{viewed['errors']} dashboard requests failed"
    assert len(acked) == total
    cpu = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(hub.samples, hub.samples[1:])]
    rss = [s[2] for s in hub.samples]
    hub.stop()
    return {"agents": p["agents"], "viewers": p["viewers"], "seconds": p["seconds"], "reports": total,
            "reports_per_s": round(total / p["seconds"], 1),
            "ingest_ms_p50": round(pct(latencies, 0.5), 1), "ingest_ms_p99": round(pct(latencies, 0.99), 1),
            "query_requests": viewed["requests"], "query_ms_p50": round(pct(viewed["latencies"], 0.5), 1),
            "query_ms_p99": round(pct(viewed["latencies"], 0.99), 1),
            "hub_cpu_cores_avg": round(statistics.mean(cpu), 2) if cpu else None,
            "hub_cpu_cores_max": round(max(cpu), 2) if cpu else None,
            "hub_rss_mib_start": round(rss[0] / 2**20, 1), "hub_rss_mib_end": round(rss[-1] / 2**20, 1),
            "hub_rss_mib_max": round(max(rss) / 2**20, 1), "errors": 0, "duplicates": 0}


class OpenLoopFleet:
    """``agents`` hosts reporting in real time, one report per host every ``agents / rate`` s.

    A lean load generator for the mixed profile, so that on a 2-core machine the hub and not
    the generator is measured: reports are cut from one JSON template per capture (H100 and
    H200 under load, 8 GPUs, one process per GPU, 2 disks; host name, machine id, GPU UUIDs, report id
    and sample time filled in per report), gzipped as the agent sends them, and posted on a
    new connection each (an agent's keep-alive connection does not outlive a 5 s interval).
    Open loop: each report has a planned send time, and its latency counts from that time
    to the answer, so a hub that falls behind shows it. A report answered with anything but
    2xx (or not answered) counts as an error and is sent again after a second, as the
    agent's spool would, up to 10 times.
    """

    def __init__(self, hub, agents, rate, threads=48):
        self.hub, self.agents, self.rate, self.threads = hub, agents, rate, threads
        self.templates = []
        for capture, state, gpus in (("h100-80gb", "load", 8), ("h200", "load", 8)):
            report = sample_report("HOSTXXXX", gpus=gpus, processes=1, disks=2, capture=capture, state=state,
                                   machine_id="HOSTXXXX", sample_time=1234567890.5)
            report.pop("sent_at")
            report["report_id"] = "RIDXXXX"
            report["interval"] = int(agents / rate)
            text = json.dumps(report, separators=(",", ":"))
            assert text.count("1234567890.5") == 1 and text.count("RIDXXXX") == 1
            self.templates.append(text)
        self.latencies, self.statuses, self.sent, self.errors = [], {}, [], 0
        self.by_second = {}  # second of the run -> latencies (ms) of the reports planned in it

    def worst_seconds(self, n=3):
        """The ``n`` seconds of the run with the highest worst latency: ``[[second, max ms], ...]``."""
        worst = sorted(((max(v), k) for k, v in self.by_second.items()), reverse=True)[:n]
        return [[k, round(v)] for v, k in worst]

    def body(self, agent, when):
        report_id = str(uuid.uuid4())
        text = (self.templates[agent % len(self.templates)].replace("HOSTXXXX", f"sim-{agent:04d}")
                .replace("RIDXXXX", report_id).replace("1234567890.5", f"{when:.3f}"))
        import gzip

        return report_id, gzip.compress(text.encode(), compresslevel=6)

    def post(self, body):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.hub.port, timeout=30)
        try:
            conn.request("POST", "/api/report", body=body, headers={
                "Authorization": "Bearer " + self.hub.config.get("agent.token"), "Content-Type": "application/json",
                "Content-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def _send_slice(self, part, parts, total, start, wall0, results):
        """In one sender process: the reports ``k`` with ``k % parts == part``, on its threads."""
        counter = iter(range(part, total, parts))
        lock = threading.Lock()
        latencies, statuses, sent, errors = [], {}, [], [0]

        def worker():
            for k in counter:
                planned = start + k / self.rate
                wait = planned - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                report_id, body = self.body(k % self.agents, wall0 + k / self.rate)
                for _ in range(10):
                    status = self.post(body)
                    if 200 <= status < 300:
                        break
                    with lock:
                        errors[0] += 1
                        statuses[status] = statuses.get(status, 0) + 1
                    time.sleep(1)
                done = time.monotonic()
                with lock:
                    latencies.append(((done - planned) * 1000, int(planned - start)))
                    statuses[status] = statuses.get(status, 0) + 1
                    sent.append(report_id)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, self.threads // parts))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        results.put((latencies, statuses, sent, errors[0]))

    def start(self, seconds, processes=4):
        """Fork ``processes`` sender processes (before the viewers' threads exist) that wait for :meth:`go`.

        Several processes, so that the generator's own GIL never paces the reports: in one
        process, threads waiting for the GIL after every socket call let the sender fall
        behind while the hub sat idle.
        """
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._go, self._start_at = ctx.Event(), ctx.Value("d", 0.0)
        self._results = ctx.Queue()
        self._total = int(seconds * self.rate)
        self._procs = []
        for part in range(processes):
            proc = ctx.Process(target=self._child, args=(part, processes), daemon=True)
            proc.start()
            self._procs.append(proc)

    def _child(self, part, parts):
        self._go.wait()
        start = self._start_at.value
        self._send_slice(part, parts, self._total, start, time.time() + (start - time.monotonic()), self._results)

    def go(self):
        """Start sending now; returns at once (see :meth:`wait`)."""
        self._start_at.value = time.monotonic() + 0.5
        self._go.set()

    def wait(self):
        """Block until every sender process is done; collects latencies, statuses, ids and errors."""
        for _ in self._procs:
            latencies, statuses, sent, errors = self._results.get()
            self.latencies += [lat for lat, _ in latencies]
            for lat, second in latencies:
                self.by_second.setdefault(second, []).append(lat)
            self.sent += sent
            self.errors += errors
            for status, n in statuses.items():
                self.statuses[status] = self.statuses.get(status, 0) + n
        for proc in self._procs:
            proc.join()
        return self._total

    def run(self, seconds, processes=4):
        """Send for ``seconds`` (blocking); returns reports planned."""
        self.start(seconds, processes)
        self.go()
        return self.wait()


def maintenance_cpu_ms(hub):
    """CPU time (ms) the hub's maintenance thread has used so far (``maintenance_state.cpu_ms``)."""
    with hub.db() as conn:
        row = conn.execute("SELECT value FROM maintenance_state WHERE name = 'cpu_ms'").fetchone()
    return row[0] if row else 0


def scenario_mixed(p, work):
    """Issue 13's mixed use, all at once on one hub: ``agents`` hosts reporting in real time at
    ``agents / tick`` reports/s (:class:`OpenLoopFleet`), viewer groups doing the dashboard's
    refresh, analysts looping :data:`HEAVY_SQL`. Every report must be stored exactly once."""
    hub = Hub(os.path.join(work, "mixed"))
    hub.start()
    warm = OpenLoopFleet(hub, p["agents"], p["agents"] / p["tick"])
    if p.get("warmup"):
        warm.run(p["warmup"])  # not measured: every host's first reports, the hub's first statistics
    sender = OpenLoopFleet(hub, p["agents"], p["agents"] / p["tick"])
    sender.start(p["seconds"])  # forked before any other thread of this process exists
    stop = threading.Event()
    viewed = {"latencies": [], "errors": 0, "requests": 0}
    viewer_threads = []
    for count, period in p["viewer_groups"]:
        threads, _ = viewers(hub, count, period, stop, viewed)
        viewer_threads += threads
    analyst_threads, analysed = analysts(hub, p.get("analysts", 0), stop)
    runner = threading.Thread(target=sender.wait, daemon=True)
    maint0, wall0 = maintenance_cpu_ms(hub), time.monotonic()
    hub.sample()
    sender.go()
    runner.start()
    while runner.is_alive():
        time.sleep(1)
        hub.sample()
    maintenance_share = (maintenance_cpu_ms(hub) - maint0) / 1000 / (time.monotonic() - wall0)
    stop.set()
    for t in viewer_threads + analyst_threads:
        t.join(timeout=90)
    with hub.db() as conn:
        stored = [r for (r,) in conn.execute("SELECT report_id FROM host_samples")]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    lost = len(set(sender.sent + warm.sent) - set(stored))
    duplicates = len(stored) - len(set(stored))
    cpu = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(hub.samples, hub.samples[1:])]
    rss = max(s[2] for s in hub.samples) / 2**20 if hub.samples else None
    hub.stop()
    latencies = sender.latencies
    result = {"agents": p["agents"], "seconds": p["seconds"], "target_reports_per_s": p["agents"] / p["tick"],
              "viewer_groups": p["viewer_groups"], "analysts": p.get("analysts", 0), "reports": len(sender.sent),
              "reports_per_s": round(len(sender.sent) / p["seconds"], 1), "warmup_reports": len(warm.sent),
              "warmup_errors": warm.errors, "lost": lost, "duplicates": duplicates,
              "integrity": integrity, "ingest_errors": sender.errors, "ingest_statuses": sender.statuses,
              "ingest_ms_p50": round(pct(latencies, 0.5), 1), "ingest_ms_p99": round(pct(latencies, 0.99), 1),
              "ingest_ms_max": round(max(latencies), 1) if latencies else None,
              "ingest_worst_seconds": sender.worst_seconds(),
              "dashboard_refreshes": viewed["requests"], "dashboard_errors": viewed["errors"],
              "dashboard_failures": viewed.get("failures", {}),
              "dashboard_ms_p50": round(pct(viewed["latencies"], 0.5), 1),
              "dashboard_ms_p99": round(pct(viewed["latencies"], 0.99), 1),
              "dashboard_ms_p99_by_request": {path: round(pct(values, 0.99), 1)
                                              for path, values in viewed.get("by_path", {}).items()},
              "analyst_requests": analysed["requests"], "analyst_ok": analysed["ok"],
              "analyst_time_limited": analysed["time_limited"], "analyst_queued_out": analysed["queued_out"],
              "analyst_errors": analysed["errors"],
              "hub_cpu_cores_avg": round(statistics.mean(cpu), 2) if cpu else None,
              "hub_cpu_cores_max": round(max(cpu), 2) if cpu else None,
              "hub_rss_mib_max": round(rss) if rss else None,
              "hub_workers": HUB_WORKERS or config_mod.worker_count(config_mod.load(hub.config_path)),
              "replication": REPLICATE,
              "maintenance_core_share": round(maintenance_share, 3)}
    print(json.dumps(result), flush=True)
    assert lost == 0 and duplicates == 0, f"{lost} reports lost, {duplicates} stored twice"
    assert integrity == "ok", integrity
    assert sender.errors == 0 and warm.errors == 0, f"ingest requests failed: {sender.statuses} {warm.statuses}"
    assert viewed["errors"] == 0, f"{viewed['errors']} dashboard refreshes failed"
    assert analysed["errors"] == 0, f"{analysed['errors']} analyst requests failed"
    return result


def scenario_outage(p, work):
    hub = Hub(os.path.join(work, "outage"))
    hub.start()
    tick = p["outage_tick"]
    agents = fleet(hub, work, "outage", p["outage_agents"], time.time() - 200 * VIRTUAL_INTERVAL - 600)
    threads = run_agents(agents, 10 * tick + 100 * tick + 20 * tick, tick)
    time.sleep(10 * tick)
    hub.stop()
    time.sleep(100 * tick)
    spooled = sum(len(a.delivery.spool) for a in agents)
    hub.start()
    finish(threads, agents)
    total = check_stored(hub, agents)
    hub.stop()
    return {"agents": len(agents), "tick_s": tick, "outage_intervals": 100,
            "outage_s": round(100 * tick, 1),
            "spooled_at_restart": spooled, "reports": total, "missing": 0, "duplicates": 0, "order_kept": True}


def scenario_crash(p, work):
    hub = Hub(os.path.join(work, "crash"))
    hub.start()
    agents = fleet(hub, work, "crash", p["crash_agents"], time.time() - 400 * VIRTUAL_INTERVAL)
    tick = 0.2
    threads = run_agents(agents, 12, tick)
    time.sleep(5)
    acked_before = set().union(*(set(a.transport.acked) for a in agents))
    hub.stop(signal.SIGKILL)
    conn = sqlite3.connect(hub.config.db_path)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    present = {r for (r,) in conn.execute("SELECT report_id FROM host_samples")}
    conn.close()
    lost_acked = acked_before - present
    assert integrity == "ok", integrity
    assert not lost_acked, f"{len(lost_acked)} acknowledged reports lost in the crash"
    time.sleep(2)
    hub.start()
    finish(threads, agents)
    total = check_stored(hub, agents)
    hub.stop()
    return {"agents": len(agents), "acked_before_kill": len(acked_before), "present_after_kill": len(present),
            "integrity": integrity, "acked_lost": 0, "reports": total, "duplicates": 0}


def scenario_disk_full(p, work):
    hub = Hub(os.path.join(work, "disk"))
    hub.start()
    agents = fleet(hub, work, "disk", 10, time.time() - 400 * VIRTUAL_INTERVAL)
    for a in agents:  # servers and GPUs exist before the disk fills
        a.tick()
    hub.stop()
    size = os.path.getsize(hub.config.db_path)
    hub.start(fsize=size + 256 * 1024)  # room for ~256 KiB more, then "disk full"
    threads = run_agents(agents, 8, 0.1)
    for t in threads:
        t.join()
    statuses = [s for a in agents for s in a.transport.statuses]
    full_answers = statuses.count(503)
    spooled = sum(len(a.delivery.spool) for a in agents)
    conn = sqlite3.connect(hub.config.db_path)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    assert full_answers > 0, "the file-size limit was never hit"
    assert spooled > 0 and integrity == "ok"
    assert 500 not in statuses
    hub.raise_fsize()
    for a in agents:
        assert a.drain(), f"{a.name}: spool did not drain after space returned"
    total = check_stored(hub, agents)
    hub.stop()
    return {"agents": len(agents), "answers_503": full_answers, "spooled_while_full": spooled,
            "integrity_while_full": integrity, "reports_after_recovery": total, "missing": 0}


def scenario_bad_collectors(p, work):
    hub = Hub(os.path.join(work, "bad"))
    hub.start()
    agents = fleet(hub, work, "bad", 20, time.time() - 400 * VIRTUAL_INTERVAL)
    threads = run_agents(agents, 12, 1.0)
    real = []
    fake = os.path.join(ROOT, "tests", "fake_nvidia_smi.py")
    for name, mode in (("bad-hang", "hang"), ("bad-lost", "lost:1"), ("bad-driver", "driver_mismatch")):
        cfg = os.path.join(work, f"{name}.yaml")
        with open(cfg, "w") as fp:
            fp.write(f"server_url: {hub.url}\ntoken: {hub.config.get('agent.token')}\ninterval: 2\ngpu_timeout: 1\n"
                     f"nvidia_smi: {fake}\nhostname: {name}\nmachine_id: {name}\nspool_dir: {work}/{name}-spool\n")
        env = dict(os.environ, FAKE_NVSMI_MODE=mode, FAKE_NVSMI_GPUS="4", FAKE_NVSMI_SEED=name)
        real.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "agent.py"), "-c", cfg], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for t in threads:
        t.join()
    for proc in real:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    conn = hub.db()
    states = dict(conn.execute("SELECT hostname, gpu_state FROM servers"))
    lost = conn.execute("SELECT gpu_lost FROM servers WHERE hostname = 'bad-lost'").fetchone()[0]
    conn.close()
    assert states["bad-hang"] in ("timeout", "busy"), states["bad-hang"]
    assert states["bad-lost"] == "gpu_lost" and "00000000:28:00.0" in lost
    assert states["bad-driver"] == "driver_mismatch"
    others = {h: s for h, s in states.items() if h.startswith("sim-")}
    assert set(others.values()) == {"ok"}, others
    check_stored(hub, agents)
    result = {"states": {k: v for k, v in states.items() if k.startswith("bad-")}, "healthy_hosts": len(others)}
    text = dashboard_text(hub)
    if text is None:
        result["dashboard"] = "not checked: no browser (playwright + chromium)"
        assert os.environ.get("CI") != "true", "CI must check the dashboard in a browser"
    else:
        for name in ("driver/library version mismatch", "GPU 28:00.0 lost"):
            assert name in text, name
        assert "nvidia-smi timed out" in text or "nvidia-smi hung" in text
        result["dashboard"] = "names every state"
    hub.stop()
    return result


def dashboard_text(hub):
    """The dashboard's visible text in headless Chromium, or None without a browser."""
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(hub.url + "/login")
        page.fill("#username", "admin")
        page.fill("#password", hub.password)
        page.click("input[type=submit]")
        page.wait_for_selector("#grid .cell")
        # The grid names states in its text and, for each server and GPU, in title/aria-label.
        text = page.inner_text("body") + "\n" + "\n".join(page.evaluate(
            "[...document.querySelectorAll('#grid [title], #grid [aria-label]')]"
            ".map((e) => (e.title || '') + ' ' + (e.getAttribute('aria-label') || ''))"))
        browser.close()
    return text


def scenario_fuzz(p, work):
    hub = Hub(os.path.join(work, "fuzz"))
    hub.start()
    agent = fleet(hub, work, "fuzz", 1, time.time() - 3600)[0]
    agent.tick()
    _, headers = login(hub)
    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    examples = str(p["fuzz_examples"])
    result = subprocess.run(
        [st, "run", os.path.join(ROOT, "docs", "openapi.yaml"), "--url", hub.url,
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "--max-examples", examples, "--exclude-method", "DELETE",
         "-H", f"Authorization: Bearer {hub.config.get('agent.token')}", "-H", headers["Cookie"].join(["Cookie: ", ""])],
        capture_output=True, text=True, timeout=1800)
    conn = hub.db()
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    hub.stop()
    summary = [line for line in result.stdout.splitlines() if re.search(r"passed|failed|error", line, re.I)][-5:]
    assert result.returncode == 0, result.stdout[-4000:]
    assert integrity == "ok"
    return {"examples_per_operation": int(examples), "schemathesis": " / ".join(s.strip() for s in summary)}


SCENARIOS = {"load": scenario_load, "outage": scenario_outage, "crash": scenario_crash,
             "disk_full": scenario_disk_full, "bad_collectors": scenario_bad_collectors, "fuzz": scenario_fuzz,
             "mixed": scenario_mixed}


def main(argv=None):
    logging.basicConfig(level=logging.ERROR)  # the agents' retry warnings are expected here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--only", help="comma-separated scenarios (default: all)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--seconds", type=int, help="override the load duration")
    parser.add_argument("--workers", type=int, help="the hub's worker processes (default: server.workers)")
    parser.add_argument("--replicate", action="store_true",
                        help="the hub replicates with Litestream (replication.enabled) to a directory beside it")
    args = parser.parse_args(argv)
    global HUB_WORKERS, REPLICATE
    HUB_WORKERS, REPLICATE = args.workers, args.replicate
    default = PROFILE_SCENARIOS.get(args.profile, [n for n in SCENARIOS if n != "mixed"])
    names = args.only.split(",") if args.only else default
    profile = dict(PROFILES[args.profile])
    if args.seconds:
        profile["seconds"] = args.seconds
    results, failed = {}, []
    machine = common.machine()
    print(f"proof suite, profile {args.profile}; hub workers: {args.workers or 'config default'}; "
          f"machine: {machine}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sm-proof-") as work:
        for name in names:
            started = time.monotonic()
            try:
                results[name] = SCENARIOS[name](profile, work)
                results[name]["ok"] = True
            except AssertionError as exc:
                results[name] = {"ok": False, "error": str(exc)[:2000]}
                failed.append(name)
            results[name]["duration_s"] = round(time.monotonic() - started, 1)
            print(f"{name:15} {'ok  ' if results[name]['ok'] else 'FAIL'} {json.dumps(results[name])}", flush=True)
    if args.json:
        with open(args.json, "w") as fp:
            json.dump({"profile": args.profile, "machine": machine, "results": results}, fp, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
