#!/usr/bin/env python3
"""Re-run of the approach of the security review of 227e0d8 (issue 25): a live attack run against
real hubs on loopback, counted per area (tried / held), every case that did not hold printed with
its evidence.

    .venv/bin/python scripts/security_rerun.py                 # every area, ports 8400-8499
    .venv/bin/python scripts/security_rerun.py --areas metrics,crawl --port-base 8400 --json out.json

What it does, like the review: starts its own hubs (``python -m server_monitor serve``, each with its
own config and data directory in a temporary directory, on 127.0.0.1 ports from ``--port-base``),
creates accounts through ``/admin`` invites and ``/register`` (viewer1: server 1 only, processes
hidden; viewer2: server 1, processes visible; viewerall: all servers, processes hidden; analyst1;
admin2), feeds hosts with ``POST /api/report`` built from ``tests/reports.py``, simulates distinct
clients with loopback source addresses (127.0.0.x), runs every area's cases, and stops everything
it started (by process group id). Findings are re-run at a scale that fits a 2-core machine (N3:
300 slow sockets against a hub with a 256-descriptor limit; N4: a 64 MiB gzip bomb; N9: 200
anonymous 1 MiB bodies). Bounded loops only, loopback only. Needs the dev venv (urllib3, the project,
Playwright with Debian chromium for the browser areas). Not part of the pytest suite;
``tests/test_security_rerun.py`` runs one area as a smoke test. docs/security.md records a run.

Exit status: 0 when every case held, 1 otherwise, 2 when the harness itself failed.
"""

import argparse
import gzip
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import urllib3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)
sys.path.insert(0, ROOT)

from http_client import Browserless  # noqa: E402
from reports import mig_report, sample_report  # noqa: E402

FAKE_NVSMI = os.path.join(TESTS, "fake_nvidia_smi.py")


def _module(name):
    """``server_monitor.<layer>.<name>`` (this tree), or ``server_monitor.<name>`` in trees from
    before the restructure (so the harness can be pointed at 227e0d8 as a negative control)."""
    import importlib

    for layer in ("core", "auth", "serving", "storage"):
        try:
            return importlib.import_module(f"server_monitor.{layer}.{name}")
        except ImportError:
            pass
    return importlib.import_module(f"server_monitor.{name}")
PASSWORDS = {"viewer1": "violet tulip garden", "viewer2": "orange kettle river", "viewerall": "maple cobalt window",
             "analyst1": "silver anchor meadow", "admin2": "copper lantern harbor"}
HEAVY = ("with recursive c(x) as (select 1 union all select x + 1 from c limit 2000000000) "
         "select count(*) from c")
AREAS = ["retest", "crawl", "csrf", "scope", "canned", "roles", "xss", "analyst", "metrics", "login", "ingest",
         "agent", "free", "throughput", "files"]
TITLES = {
    "retest": "Re-test of ba1fb60 findings (M1-M4, L1-L10, I1-I10)",
    "crawl": "Anonymous crawl: paths x GET, HEAD, POST",
    "csrf": "CSRF: 14 admin endpoints x 3 forgeries; forged logout",
    "scope": "Scope and fleet document",
    "canned": "Canned queries with hostile parameters",
    "roles": "Roles on ack, silence and bulk edit; API validation",
    "xss": "Stored XSS in Chromium",
    "analyst": "Analyst SQL",
    "metrics": "/metrics",
    "login": "Login limiter, sessions CLI, token timing",
    "ingest": "Ingest abuse",
    "agent": "Agent",
    "free": "/free recipe",
    "throughput": "Throughput by one client",
    "files": "Files and locks",
}
HTTP = urllib3.PoolManager(retries=False, maxsize=64)


class Results:
    """Cases per area: ``check(area, name, held, evidence)``; ``failures`` keeps the evidence."""

    def __init__(self):
        self.tried, self.held, self.failures, self.lock = {}, {}, [], threading.Lock()

    def check(self, area, name, held, evidence=""):
        with self.lock:
            self.tried[area] = self.tried.get(area, 0) + 1
            if held:
                self.held[area] = self.held.get(area, 0) + 1
            else:
                self.failures.append((area, name, str(evidence)[:600]))
                print(f"  NOT HELD [{area}] {name}: {str(evidence)[:300]}", flush=True)
        return held

    def table(self):
        lines = ["| Area | Tried | Held |", "|---|---:|---:|"]
        for area in AREAS:
            if area in self.tried:
                lines.append(f"| {TITLES[area]} | {self.tried[area]} | {self.held.get(area, 0)} |")
        total, held = sum(self.tried.values()), sum(self.held.values())
        lines.append(f"| **Total** | **{total}** | **{held}** |")
        return "\n".join(lines)


# -- hubs ---------------------------------------------------------------------------------------

class Hub:
    """One hub process: its own config (``server_monitor.core.config.create``) and data directory
    under ``workdir``, ``python -m server_monitor serve`` on 127.0.0.1:``port``, in a session of its
    own (stopped by its process group id)."""

    def __init__(self, workdir, name, port, edits=None, nofile=None, workers=1):
        import yaml

        config_mod = _module("config")

        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.config_path = os.path.join(self.dir, "config.yaml")
        cfg, self.password = config_mod.create(self.config_path, port=port, data_dir=self.dir)
        data = yaml.safe_load(open(self.config_path))
        data["server"]["workers"] = workers
        for dotted, value in (edits or {}).items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        with open(self.config_path, "w") as fp:
            yaml.safe_dump(data, fp)
        self.cfg = config_mod.load(self.config_path)
        self.port, self.nofile, self.proc, self.name = port, nofile, None, name
        self.base = f"http://127.0.0.1:{port}"
        self.token = self.cfg.get("agent.token")
        self.admin_name = self.cfg.get("auth.username")
        self.log_path = os.path.join(self.dir, "hub.log")
        self._admin = None

    def start(self, wait_s=60):
        nofile = self.nofile

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", self.config_path,
                                      "--port", str(self.port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=limit)
        log.close()
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub {self.name} exited:\n" + open(self.log_path).read()[-2000:])
            try:
                if HTTP.request("GET", self.base + "/login", timeout=2).status == 200:
                    return self
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"hub {self.name} did not start:\n" + open(self.log_path).read()[-2000:])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def stop(self, timeout=20):
        """SIGTERM to the hub's process group; returns seconds to exit (SIGKILL after ``timeout``)."""
        if not self.proc or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return float("inf")
        return time.monotonic() - t0

    def client(self, source=None):
        client = Browserless(self.base)
        if source:
            client.http = urllib3.PoolManager(retries=False, source_address=(source, 0))
        return client

    def login(self, name, password, source=None):
        client = self.client(source)
        answer = client.login(name, password)
        if answer.status != 302:
            raise RuntimeError(f"login {name}: {answer.status} {answer.data[:200]!r}")
        return client

    def admin(self):
        if self._admin is None:
            self._admin = self.login(self.admin_name, self.password)
        return self._admin

    def post(self, body, token=None, headers=None, source=None, timeout=30):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        http = HTTP if source is None else urllib3.PoolManager(retries=False, source_address=(source, 0))
        hdrs = {"Content-Type": "application/json"}
        if token is not False:
            hdrs["Authorization"] = "Bearer " + (token or self.token)
        hdrs.update(headers or {})
        return http.request("POST", self.base + "/api/report", body=body, headers=hdrs, timeout=timeout)

    def invite_and_register(self, username, password, role="viewer", servers=None, see_processes=True):
        """An invite made on /admin (the form, as an admin would) and the account registered
        through /register with it; returns the new user's logged-in client."""
        admin = self.admin()
        page = admin.request("GET", "/admin").data.decode()
        token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
        fields = [("csrftoken", token), ("role", role), ("hours", "24"), ("max_uses", "1")]
        if servers is not None:
            fields += [("scope", "some")] + [("servers", str(s)) for s in servers]
        else:
            fields += [("scope", "all")]
        if see_processes:
            fields.append(("see_processes", "on"))
        answer = admin.request("POST", "/admin/invites", fields=fields, encode_multipart=False)
        code = re.search(r"register\?code=([A-Za-z0-9_\-]+)", answer.data.decode())
        if answer.status != 200 or not code:
            raise RuntimeError(f"invite for {username}: {answer.status}")
        user = self.client()
        form = user.request("GET", f"/register?code={code.group(1)}").data.decode()
        token = re.search(r'name="csrftoken" value="([^"]+)"', form).group(1)
        done = user.request("POST", f"/register?code={code.group(1)}", encode_multipart=False,
                            fields={"csrftoken": token, "code": code.group(1), "username": username,
                                    "password": password, "password2": password})
        if done.status != 302:
            raise RuntimeError(f"register {username}: {done.status} {done.data[-300:]!r}")
        return user

    def db(self):
        return sqlite3.connect(self.cfg.db_path, timeout=10)

    def rss_kib(self):
        """Summed VmRSS of the hub's process group (KiB)."""
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.getpgid(int(pid)) != self.proc.pid:
                    continue
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except (OSError, ProcessLookupError):
                pass
        return total


def timed(client, method, path, **kw):
    t0 = time.monotonic()
    kw.setdefault("timeout", 30)
    try:
        answer = client.request(method, path, **kw)
    except urllib3.exceptions.HTTPError as exc:
        return time.monotonic() - t0, None, type(exc).__name__
    return time.monotonic() - t0, answer, None


def csrf(client, path="/admin"):
    return re.search(r'name="csrftoken" value="([^"]+)"', client.request("GET", path).data.decode()).group(1)


# -- the run ------------------------------------------------------------------------------------

class Run:
    """Shared state: the main hub with its hosts and accounts, ports, the results."""

    def __init__(self, workdir, port_base, results):
        self.workdir, self.next_port, self.results = workdir, port_base, results
        self.port_limit = port_base + 99
        self.hubs, self.procs = [], []
        self._main = None

    def port(self):
        port = self.next_port
        self.next_port += 1
        if port > self.port_limit:
            raise RuntimeError("out of ports")
        return port

    def hub(self, name, **kw):
        hub = Hub(self.workdir, name, self.port(), **kw)
        self.hubs.append(hub)
        return hub.start()

    def check(self, area, name, held, evidence=""):
        return self.results.check(area, name, held, evidence)

    @property
    def main(self):
        """The review's :6201: 2 workers; gpu-a (id 1, processes and an XID naming a process),
        gpu-b (id 2, out of scope for viewer1/viewer2), big-64 (id 3: 64 idle GPUs); the five accounts."""
        if self._main is None:
            hub = self.hub("main", workers=2, edits={"alerts.interval_s": 2})
            now = time.time()
            a = sample_report("gpu-a", gpus=2, processes=1)
            for p in a["processes"]:
                p.update(user="yyhiddenuser", process_name="/home/yy/yyhiddenproc", container="yyhiddenctr")
            a["kmsg_state"] = "ok"
            a["xid_events"] = [{"xid": 79, "pci.bus_id": a["gpus"][0]["pci.bus_id"], "name": "GPU has fallen off the bus",
                                "seq": 7, "usec": 1000, "time": now - 60, "pid": 4242, "process_name": "yyhiddenxid",
                                "message": "NVRM: Xid (PCI:0000:18:00): 79, pid=4242, name=yyhiddenxid, GPU has fallen "
                                           "off the bus."}]
            b = sample_report("zz-secret-host", gpus=1, processes=1)
            b["processes"][0].update(user="zzsecretuser", process_name="zzsecretproc", container="zzsecretctr")
            big = sample_report("big-64", gpus=64, processes=0, state="idle")
            for report in (a, b, big):
                answer = hub.post(report)
                if answer.status != 201:
                    raise RuntimeError(f"feed {report['host']['hostname']}: {answer.status} {answer.data[:300]!r}")
            hub.users = {
                "viewer1": hub.invite_and_register("viewer1", PASSWORDS["viewer1"], servers=[1], see_processes=False),
                "viewer2": hub.invite_and_register("viewer2", PASSWORDS["viewer2"], servers=[1], see_processes=True),
                "viewerall": hub.invite_and_register("viewerall", PASSWORDS["viewerall"], see_processes=False),
                "analyst1": hub.invite_and_register("analyst1", PASSWORDS["analyst1"], role="analyst"),
                "admin2": hub.invite_and_register("admin2", PASSWORDS["admin2"], role="admin"),
            }
            self._main = hub
        return self._main

    def secrets(self, hub):
        values = [hub.password, hub.cfg.get("auth.password_hash"), hub.token, hub.cfg.get("server.secret_key"),
                  hub.cfg.get("prometheus.token"), *PASSWORDS.values()]
        return [v for v in values if v]

    def cleanup(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=10)
        for hub in self.hubs:
            hub.stop(timeout=15)


# -- areas ----------------------------------------------------------------------------------------

CRAWL_PATHS = [
    "/", "/.json", "/login", "/register", "/register?code=x", "/-/register", "/account", "/logout", "/-/login",
    "/-/password-tool", "/servers/1/history", "/free", "/accounting", "/admin", "/admin/invites",
    "/admin/invites/1/revoke", "/admin/users/viewer1", "/admin/servers/1/delete", "/admin/tokens", "/admin/gpus",
    "/api/servers", "/api/servers/1", "/api/servers/1/history", "/api/fleet", "/api/fleet?fresh=1",
    "/api/alerts/1/ack", "/api/silences", "/api/silences/1", "/monitor/gpus.csv", "/metrics", "/metrics/targets",
    "/monitor", "/monitor.json", "/monitor.db", "/monitor.json?sql=select+1", "/monitor/host_samples.json",
    "/monitor/servers.json", "/monitor/processes.csv", "/monitor/admin_set_server", "/_internal.json",
    "/-/metadata.json", "/-/versions.json", "/-/plugins.json", "/-/settings.json", "/-/threads.json",
    "/-/databases.json", "/-/actor.json", "/-/permissions", "/-/messages", "/auth.db", "/config.yaml",
    "/static/../config.yaml", "/static/%2e%2e/config.yaml", "/static/..%2fconfig.yaml", "/static/..%5cconfig.yaml",
    "/static/%252e%252e/config.yaml", "/~6Donitor.json?sql=select+1", "/~6Donitor/servers.json", "/auth/users.json",
    "/monitor/sqlite_master.json", "/api/servers/1/../../../config.yaml", "/metrics?token=x", "/monitor.db.lock",
]
PUBLIC_OK = {"/login", "/-/health"}


def area_crawl(run):
    """Anonymous crawl: every path x GET, HEAD, POST; only /login (and /-/health) answer 2xx; no
    secret in any body or header."""
    hub = run.main
    anon = HTTP
    secrets_ = run.secrets(hub)
    for path in CRAWL_PATHS + ["/-/health"]:
        for method in ("GET", "HEAD", "POST"):
            try:
                answer = anon.request(method, hub.base + path, redirect=False, timeout=15)
            except urllib3.exceptions.HTTPError as exc:
                run.check("crawl", f"{method} {path}", False, type(exc).__name__)
                continue
            base = path.split("?")[0]
            bad = []
            if answer.status < 300 and not (base in PUBLIC_OK and (method != "POST" or base == "/-/health")):
                bad.append(f"status {answer.status}")
            if answer.status >= 500:
                bad.append(f"status {answer.status}")
            text = answer.data.decode("utf-8", "replace") + json.dumps(dict(answer.headers))
            leaked = [s[:4] + "…" for s in secrets_ if s in text]
            if leaked:
                bad.append(f"secret in answer {leaked}")
            run.check("crawl", f"{method} {path}", not bad, "; ".join(bad))


def area_csrf(run):
    """14 state-changing endpoints x 3 forgeries (no token, an anonymous token tossed next to the
    admin's session, text/plain), as the admin; plus a forged logout. Nothing changes."""
    hub = run.main
    admin = hub.admin()

    def state():
        auth = sqlite3.connect(hub.cfg.auth_db_path, timeout=10)
        mon = hub.db()
        try:
            return (json.dumps([list(r) for t in ("users", "invites", "agent_tokens")
                                for r in auth.execute(f"SELECT * FROM {t} ORDER BY 1")], default=str),
                    json.dumps([list(r) for t in ("servers", "gpus", "announcements", "silences", "alert_acks")
                                for r in mon.execute(f"SELECT * FROM {t} ORDER BY 1")], default=str))
        finally:
            auth.close()
            mon.close()

    anon = hub.client()
    tossed = re.search(r'name="csrftoken" value="([^"]+)"', anon.request("GET", "/login").data.decode()).group(1)
    tossed_cookie = anon.cookies.get("ds_csrftoken")
    form = {"action": "update", "role": "admin", "scope": "all", "server_id": "1", "display_name": "pwned",
            "status": "fault", "status_note": "x", "level": "critical", "message": "pwned", "hours": "1",
            "max_uses": "5", "token_id": "1", "gpu_id": "1", "alert_id": "1", "note": "x", "rule": "disk_full",
            "minutes": "60", "silence_id": "1", "announcement_id": "1", "password": hub.password,
            "new_password": "pwned pwned pwned", "new_password2": "pwned pwned pwned", "identity_id": "1"}
    endpoints = ["/admin/gpus", "/monitor/admin_silence", "/monitor/admin_ack_alert", "/monitor/admin_end_silence",
                 "/monitor/admin_announce", "/monitor/admin_set_server", "/monitor/admin_remove_gpu",
                 "/monitor/admin_accept_identity", "/admin/tokens", "/admin/invites", "/admin/servers/2/delete",
                 "/admin/invites/1/revoke", "/account", "/admin/users/viewerall"]
    before = state()
    for path in endpoints:
        for name in ("no token", "tossed token", "text/plain"):
            headers = {}
            if name == "no token":
                kw = dict(fields=form, encode_multipart=False)
            elif name == "tossed token":
                kw = dict(fields=dict(form, csrftoken=tossed), encode_multipart=False)
                headers["Cookie"] = f"ds_csrftoken={tossed_cookie}; " + admin.cookie_header["Cookie"]
            else:
                kw = dict(body=json.dumps(dict(form, csrftoken=csrf(admin))).encode())
                headers["Content-Type"] = "text/plain"
            if name == "tossed token":
                answer = admin.http.request("POST", hub.base + path, headers=headers, redirect=False, **kw)
            else:
                answer = admin.request("POST", path, headers=headers, **kw)
            run.check("csrf", f"{path} [{name}]", 400 <= answer.status < 500, f"status {answer.status}")
    answer = admin.request("POST", "/logout", fields={}, encode_multipart=False)
    alive = admin.request("GET", "/admin").status
    run.check("csrf", "forged /logout (no token)", alive == 200, f"logout {answer.status}, then /admin {alive}")
    after = state()
    run.check("csrf", "auth.db and admin-written tables unchanged", after == before, "state changed")


SCOPE_QUERIES = ["servers", "gpus", "processes", "disks", "server_history", "gpu_history", "usage_by_user",
                 "containers", "probes", "announcements", "free_gpus", "idle_holders", "gpu_hours", "alerts_active",
                 "alerts_history", "fleet_servers", "fleet_gpus", "fleet_processes", "silences",
                 "gpu_holders_history", "server_alerts", "gpu_hours_daily", "xid_events", "fleet_mig", "server_xids"]


def area_scope(run):
    """viewer1 (server 1, processes hidden), viewer2 (server 1, processes visible), viewerall (all,
    processes hidden) x every canned query (JSON with forged scope parameters and another server's
    id, CSV) and the APIs, the fleet document with the admin's ETag, If-None-Match: *, fresh,
    gzip: never an out-of-scope host, never a process, user or container where hidden (N6
    included: XID text carries pid=/name=)."""
    hub = run.main
    other_hosts = ["zz-secret-host", "big-64", "zzsecret"]
    hidden = ["yyhiddenuser", "yyhiddenproc", "yyhiddenctr", "yyhiddenxid", "pid=4242", "zzsecretuser"]
    policy = {"viewer1": other_hosts + hidden, "viewer2": other_hosts, "viewerall": hidden}
    admin = hub.admin()
    deadline = time.time() + 20  # the gpu_xid alert (its text named the process, N6) is raised first
    while time.time() < deadline and "gpu_xid" not in admin.request("GET", "/api/fleet?fresh=1").data.decode():
        time.sleep(0.5)
    everything = "".join(admin.request("GET", p).data.decode() for p in (
        "/monitor/processes.json?_shape=array", "/monitor/server_xids.json?server_id=1&hours=24",
        "/api/fleet?fresh=1"))
    missing = [m for m in ("yyhiddenuser", "zz-secret-host", "pid=4242", "gpu_xid") if m not in everything]
    run.check("scope", "markers are there to be leaked (admin sees them)", not missing, f"missing {missing}")
    etag = admin.request("GET", "/api/fleet").headers.get("ETag")
    paths = []
    for name in SCOPE_QUERIES:
        paths += [f"/monitor/{name}.json?_shape=array&server_id=2&hours=24&since=0",
                  f"/monitor/{name}.json?_scope_all=1&_scope_servers=[1,2,3]&_scope_processes=1&server_id=1&hours=24",
                  f"/monitor/{name}.csv?server_id=1&hours=24"]
    paths += ["/api/servers", "/api/servers/2", "/api/servers/3", "/api/servers/2/history", "/api/fleet",
              "/api/fleet?fresh=1", "/api/fleet?_scope_all=1&actor=admin&processes=1", "/api/servers/1",
              "/api/servers/1/history", "/free", "/", "/servers/2/history"]
    for user, markers in policy.items():
        client = hub.users[user]
        for path in paths:
            elapsed, answer, error = timed(client, "GET", path)
            if error:
                run.check("scope", f"{user} {path}", False, error)
                continue
            text = answer.data.decode("utf-8", "replace")
            found = [m for m in markers if m in text]
            # Logged in all along: a 401 or a redirect to /login would make the case vacuous.
            ok = not found and answer.status < 500 and answer.status not in (301, 302, 401)
            run.check("scope", f"{user} {path}", ok, f"status {answer.status}, found {found}")
        own = client.request("GET", "/api/servers").data.decode()
        run.check("scope", f"{user} sees its own server gpu-a", "gpu-a" in own, own[:200])
        for name, headers in (("admin's ETag", {"If-None-Match": etag or '"x"'}), ("If-None-Match: *", {"If-None-Match": "*"}),
                              ("gzip", {"Accept-Encoding": "gzip"})):
            answer = client.request("GET", "/api/fleet", headers=headers, decode_content=True)
            text = answer.data.decode("utf-8", "replace")
            found = [m for m in markers if m in text]
            run.check("scope", f"{user} /api/fleet [{name}]", not found and answer.status in (200, 304),
                      f"status {answer.status}, found {found}")
    # The fleet document over 20 new connections (both workers).
    for i in range(20):
        client = hub.login("viewer1", PASSWORDS["viewer1"]) if i == 0 else client
        fresh = Browserless(hub.base)
        fresh.cookies = dict(client.cookies)
        text = fresh.request("GET", "/api/fleet").data.decode()
        found = [m for m in policy["viewer1"] if m in text]
        run.check("scope", f"viewer1 /api/fleet new connection {i}", not found, f"found {found}")
    # I-2: a viewer whose scope is only a look-alike host sees its host_identity problem without
    # the name of the server it looks like.
    answer = hub.post(sample_report("zz-secret-h0st", gpus=1, processes=0))
    with hub.db() as conn:
        look = conn.execute("SELECT id FROM servers WHERE hostname = 'zz-secret-h0st'").fetchone()[0]
    vlook = hub.invite_and_register("vlook", "pebble harvest lantern", servers=[look])
    deadline, text = time.time() + 20, ""
    while time.time() < deadline and "host_identity" not in text:
        text = vlook.request("GET", "/api/fleet?fresh=1").data.decode()
        time.sleep(0.5)
    text += vlook.request("GET", "/monitor/alerts_active.json?_shape=array").data.decode()
    run.check("scope", "I-2 look-alike host's identity problem names no out-of-scope server",
              "host_identity" in text and "zz-secret-host" not in text,
              f"post {answer.status}; identity problem {'host_identity' in text}; "
              f"names zz-secret-host: {'zz-secret-host' in text}")


HOSTILE = {
    "day_start": ["1e23", "-1e23", "1e9", "abc", "0x10"],
    "hours": ["1e308", "-1", "NaN", "inf", "", "9e18"],
    "server_id": ["-1", "1.5", "1 or 1=1", "100000000000000000000000"],
    "since": ["9e18", "-9e18"], "until": ["9e18"], "tz_offset_min": ["9e18", "-9e18"],
    "count": ["-1", "1000000000", "abc"], "model": ["%"], "gpu_id": ["-1", "1 or 1=1"],
}


def area_canned(run):
    """Every viewer canned query x hostile values of its own parameters, as viewer1: no 5xx, every
    answer within 5 s, no out-of-scope host or hidden process."""
    QUERIES = _module("queries").QUERIES

    hub = run.main
    viewer = hub.users["viewer1"]
    markers = ["zz-secret-host", "big-64", "yyhiddenuser", "pid=4242"]
    for name in SCOPE_QUERIES:
        sql = QUERIES[name]["sql"]
        params = [p for p in HOSTILE if f":{p}" in sql] or ["hours"]
        for param in params:
            for value in HOSTILE[param]:
                path = f"/monitor/{name}.json?_shape=array&{param}={quote(value)}"
                elapsed, answer, error = timed(viewer, "GET", path, timeout=20)
                if error:
                    run.check("canned", path, False, error)
                    continue
                found = [m for m in markers if m in answer.data.decode("utf-8", "replace")]
                run.check("canned", path, answer.status < 500 and answer.status not in (301, 302, 401)
                          and elapsed < 5 and not found,
                          f"status {answer.status} in {elapsed:.1f} s, found {found}")


def area_roles(run):
    """viewer1, viewerall and analyst1 on 7 write paths: 403 (or 401/405) and nothing changed; the
    admin's ack and silence notes with a lone surrogate, RLO or NUL: 400, not 500 (I-7)."""
    hub = run.main
    writes = [("POST", "/admin/gpus", {"status": "fault", "gpu_id": "1"}),
              ("POST", "/monitor/admin_silence", {"server_id": "1", "rule": "disk_full", "minutes": "60"}),
              ("POST", "/monitor/admin_ack_alert", {"alert_id": "1"}),
              ("POST", "/monitor/admin_set_server", {"server_id": "1", "display_name": "x"}),
              ("POST", "/api/silences", None), ("POST", "/api/alerts/1/ack", None), ("DELETE", "/api/servers/2", None)]
    for user in ("viewer1", "viewerall", "analyst1"):
        client = hub.users[user]
        for method, path, form in writes:
            if form is not None:
                answer = client.request(method, path, fields=dict(form, csrftoken=csrf(client, "/")),
                                        encode_multipart=False)
            else:
                answer = client.request(method, path, body=json.dumps({"server_id": 1, "rule": "disk_full",
                                                                        "minutes": 60, "note": "x"}).encode(),
                                        headers={"Content-Type": "application/json"})
            run.check("roles", f"{user} {method} {path}", answer.status in (401, 403, 405), f"status {answer.status}")
    admin = hub.admin()
    for note in ("\ud800", "ab\u202egnp.exe", "nul\x00byte"):
        for path in ("/api/alerts/1/ack", "/api/silences"):
            body = json.dumps({"note": note, "server_id": 1, "rule": "disk_full", "minutes": 60}).encode()
            answer = admin.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            run.check("roles", f"admin {path} note {note!r} (I-7)", answer.status == 400,
                      f"status {answer.status} {answer.data[:120]!r}")
    with hub.db() as conn:
        present = conn.execute("SELECT count(*) FROM servers WHERE id = 2").fetchone()[0]
    run.check("roles", "server 2 still there after the refused DELETEs", present == 1, "server 2 deleted")


PAYLOADS = ['<img src=x onerror=alert(1)>', '"><script>alert(2)</script>', "javascript:alert(3)",
            "<svg/onload=alert(4)>", "'-alert(5)-'", "{{7*7}}<b>b</b>"]


def area_xss(run):
    """Hostile strings in every agent string field of one host (process name, user, container, GPU
    name, OS, kernel, mountpoint, XID message, GPU error) and in admin notes; pages x admin,
    viewer2, analyst1 in Chromium: no dialog, no injected element."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, TESTS)
    from browser import CHROMIUM_ARGS, chromium_path

    hub = run.main
    reports = []
    for i, payload in enumerate(PAYLOADS):
        r = sample_report(f"xss-{i}", gpus=1, processes=1, disks=1)
        r["processes"][0].update(process_name=payload, user=payload[:32], container=payload)
        r["gpus"][0]["name"] = payload
        r["host"].update(os=payload, kernel=payload, cpu_model=payload)
        r["disks"][0]["mountpoint"] = "/" + payload
        r["gpu_status"] = {"state": "error", "message": payload, "lost": [], "stale": False}
        r["kmsg_state"] = "ok"
        r["xid_events"] = [{"xid": 13, "pci.bus_id": r["gpus"][0]["pci.bus_id"], "seq": 1, "usec": 1,
                            "time": time.time() - 30, "message": payload}]
        reports.append(r)
    answer = hub.post({"reports": reports})
    run.check("xss", "hostile host strings accepted for storage", answer.status in (201, 207), answer.data[:300])
    ids = [r[0] for r in hub.db().execute("SELECT id FROM servers WHERE hostname LIKE 'xss-%' ORDER BY id")]
    admin = hub.admin()
    token = csrf(admin, "/monitor/admin_announce")
    admin.request("POST", "/monitor/admin_announce", fields={"csrftoken": token, "level": "warning",
                                                              "message": PAYLOADS[0], "hours": "1"},
                  encode_multipart=False)
    pages = ["/", "/free", "/accounting", "/monitor/servers", "/monitor/processes", "/monitor/gpus",
             "/monitor/containers", "/monitor/disks", "/monitor/xid_events?hours=24", "/monitor/alerts_active",
             "/monitor/announcements", "/monitor/usage_by_user"] + [f"/servers/{i}/history" for i in ids[:3]]
    roles = {"admin": (hub.admin_name, hub.password), "viewer2": ("viewer2", PASSWORDS["viewer2"]),
             "analyst1": ("analyst1", PASSWORDS["analyst1"])}
    admin_only = ["/admin", "/monitor/gpu_processes", "/monitor/xid_events_table"]
    shown = [0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            for role, (name, password) in roles.items():
                context = browser.new_context()
                page = context.new_page()
                dialogs = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(hub.base + "/login")
                page.fill("#username", name)
                page.fill("#password", password)
                page.click("input[type=submit]")
                page.wait_for_load_state("networkidle", timeout=15000)
                for path in pages + (admin_only[:1] if role == "admin" else []):
                    before = len(dialogs)
                    try:
                        page.goto(hub.base + path, timeout=20000)
                        page.wait_for_load_state("networkidle", timeout=15000)
                        injected = page.evaluate(
                            "() => document.querySelectorAll('img[src=x], svg[onload], b, script:not([src])').length")
                        inline = page.evaluate("() => [...document.querySelectorAll('script:not([src])')]"
                                               ".filter(s => s.textContent.includes('alert(')).length")
                        shown[0] += any(p in page.inner_text("body") for p in PAYLOADS)
                    except Exception as exc:  # noqa: BLE001 - a page that fails to load is a failed case
                        run.check("xss", f"{role} {path}", False, f"{type(exc).__name__}: {exc}")
                        continue
                    ok = len(dialogs) == before and injected == 0 and inline == 0
                    run.check("xss", f"{role} {path}", ok,
                              f"dialogs {dialogs[before:]}, injected elements {injected}, inline scripts {inline}")
                context.close()
        finally:
            browser.close()
    run.check("xss", "the payloads reached the pages (shown as text on 20+ loads)", shown[0] >= 20,
              f"payload text on {shown[0]} loads")


def area_analyst(run):
    """analyst1's SQL: every escape refused; N1 gpu_set over 3,000 candidates and through _where;
    N5 _where, tilde path, printf width, randomblob; viewers unaffected by 4 heavy _where queries."""
    hub = run.main
    analyst = hub.users["analyst1"]
    refused = {
        "ATTACH": "attach database '" + hub.cfg.auth_db_path + "' as a",
        "ATTACH in CTE": "with x as (select 1) attach database ':memory:' as a",
        "auth.users": "select * from auth.users",
        "load_extension": "select load_extension('/tmp/x')",
        "readfile": "select readfile('/etc/passwd')",
        "fsdir": "select * from fsdir('/')",
        "sqlite_dbpage": "select * from sqlite_dbpage",
        "VACUUM INTO": "vacuum into '/tmp/sm-rerun-copy.db'",
        "CTE write": "with x as (select 1) delete from servers",
        "several statements": "select 1; delete from servers",
        "temp table": "create temp table t(x)",
        "writable_schema": "pragma writable_schema = 1",
        "fts3_tokenizer": "select fts3_tokenizer('simple')",
        "FTS3_TOKENIZER upper, 2 args": "SELECT FTS3_TOKENIZER('x', x'0000000000000000')",
        "fts3_tokenizer in CTE": "with t as (select fts3_tokenizer('porter') as p) select * from t",
    }
    for name, sql in refused.items():
        answer = analyst.request("GET", "/monitor.json?sql=" + quote(sql), timeout=20)
        text = answer.data.decode("utf-8", "replace")
        leaked = "$pbkdf2" in text or "root:" in text or re.search(r'"rows": \[\[\d{6,}', text)
        run.check("analyst", f"refused: {name}", 400 <= answer.status < 500 and not leaked,
                  f"status {answer.status} {text[:150]}")
    with hub.db() as conn:
        servers = conn.execute("SELECT count(*) FROM servers").fetchone()[0]
    run.check("analyst", "servers table untouched", servers >= 3, f"{servers} servers")
    many = ("with recursive c(x) as (select 1 union all select x+1 from c limit 3000) select gpu_set((select "
            "json_group_array(json_object('i',x,'numa',x%2,'free',x,'uuid','u','name','n')) from c), '[]', 1500)")
    where = ("gpu_set((with recursive c(x) as (select 0 union all select x+1 from c limit 64) select "
             "json_group_array(json_object('i',x,'numa',0,'free',1)) from c), '[]', 32) is not null")
    cases = {
        "N1 gpu_set 3,000 candidates": "/monitor.json?sql=" + quote(many),
        "N1 gpu_set 64 x 32 through _where, one query": "/monitor/maintenance_state.json?_nocount=1&_nofacet=1"
                                                         "&_nosuggest=1&_where=" + quote(where),
        "N5 _where heavy": "/monitor/host_samples.json?_where=" + quote(f"({HEAVY}) > 0"),
        "N5 tilde json": "/~6Donitor.json?sql=" + quote(HEAVY),
        "N5 tilde csv (I-7)": "/~6Donitor.csv?sql=" + quote(HEAVY),
        "N5 printf width 1e9": "/monitor.json?sql=" + quote("select length(printf('%.*c', 1000000000, 'x'))"),
        "N5 randomblob 5e8": "/monitor.json?sql=" + quote("select length(randomblob(500000000))"),
        "L6 plain ?sql= heavy": "/monitor.json?sql=" + quote(HEAVY),
    }
    # The full table page runs up to three queries (rows, count, facet suggestions), each under the
    # analysts' 2 s limit, each calling gpu_set() once per row (at most 100 ms a call).
    elapsed, answer, error = timed(analyst, "GET", "/monitor/maintenance_state.json?_where=" + quote(where), timeout=60)
    run.check("analyst", "N1 gpu_set 64 x 32 through _where, whole table page (3 queries): < 6.5 s",
              not error and answer.status < 500 and elapsed < 6.5, error or f"status {answer.status} in {elapsed:.1f} s")
    for name, path in cases.items():
        elapsed, answer, error = timed(analyst, "GET", path, timeout=60)
        ok = not error and answer.status < 500 and elapsed < 3.5
        run.check("analyst", name, ok, error or f"status {answer.status} in {elapsed:.1f} s {answer.data[:120]!r}")
    # 4 heavy _where / tilde queries in parallel: a viewer's servers.json stays fast.
    viewer = hub.users["viewerall"]
    paths = ["/monitor/host_samples.json?_where=" + quote(f"({HEAVY}) > 0"), "/~6Donitor.json?sql=" + quote(HEAVY)] * 2
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(timed, analyst, "GET", p) for p in paths]
        time.sleep(0.5)
        elapsed, answer, error = timed(viewer, "GET", "/monitor/servers.json")
        [f.result() for f in futures]
    run.check("analyst", "N5 viewer's servers.json during 4 heavy analyst queries", not error and elapsed < 1.5,
              error or f"{elapsed:.2f} s")
    elapsed, answer, error = timed(analyst, "GET", "/monitor.json?sql=select+1")
    run.check("analyst", "analyst slot free afterwards", not error and answer.status == 200 and elapsed < 3,
              error or f"status {answer.status} in {elapsed:.1f} s")


def area_metrics(run):
    """/metrics: anonymous, agent token, wrong/empty/prefix/suffix/query-string token, Basic,
    non-latin-1, viewer, analyst → 401/403; admin and the Prometheus token → 200, no user or
    process name in the output."""
    hub = run.main
    token = hub.cfg.get("prometheus.token")
    cases = {
        "anonymous": ({}, None, (401,)), "agent token": ({"Authorization": "Bearer " + hub.token}, None, (401, 403)),
        "wrong token": ({"Authorization": "Bearer " + "x" * len(token)}, None, (401, 403)),
        "empty token": ({"Authorization": "Bearer "}, None, (401, 403)),
        "Basic": ({"Authorization": "Basic " + __import__("base64").b64encode(f"x:{token}".encode()).decode()}, None,
                  (401, 403)),
        "token prefix": ({"Authorization": "Bearer " + token[:-1]}, None, (401, 403)),
        "token + suffix": ({"Authorization": "Bearer " + token + "x"}, None, (401, 403)),
        "query-string token": ({}, "?token=" + token, (401, 403)),
        "non-latin-1": ({"Authorization": "Bearer tök€n".encode().decode("latin-1")}, None, (400, 401, 403)),
        "viewer": ("viewer1", None, (403,)), "analyst": ("analyst1", None, (403,)),
        "Prometheus token": ({"Authorization": "Bearer " + token}, None, (200,)), "admin": ("admin", None, (200,)),
    }
    for path in ("/metrics", "/metrics/targets"):
        for name, (headers, query, expect) in cases.items():
            if isinstance(headers, str):
                client = hub.admin() if headers == "admin" else hub.users[headers]
                answer = client.request("GET", path)
            else:
                answer = HTTP.request("GET", hub.base + path + (query or ""), headers=headers, redirect=False)
            text = answer.data.decode("utf-8", "replace")
            leaked = [m for m in ("yyhiddenuser", "yyhiddenproc", "zzsecretuser") if m in text]
            run.check("metrics", f"{path} {name}", answer.status in expect and not leaked,
                      f"status {answer.status}, leaked {leaked}")


def area_login(run):
    """Login limiter (40 guesses for one user from 40 addresses; 40 users from one address), N10
    (right passwords budgeted, sessions per user capped), N11 (sessions revoke ignores case), token
    timing (near vs far miss), L4/L5 covered in retest."""
    hub = run.hub("login", workers=2)
    from datasette_auth_passwords.utils import hash_password

    Accounts = _module("accounts").Accounts

    accounts = Accounts(hub.cfg.auth_db_path)
    for name in ("vera", "walt", "viewer2"):
        accounts.create_user(name, hash_password("correct horse battery", iterations=1000), "viewer")

    def guess(i, user, source):
        client = hub.client(source)
        page = client.request("GET", "/login").data.decode()
        token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
        return client.request("POST", "/login", fields={"username": user, "password": f"wrong-{i}",
                                                        "csrftoken": token}, encode_multipart=False).status

    with ThreadPoolExecutor(20) as pool:
        one_user = list(pool.map(lambda i: guess(i, "vera", f"127.0.1.{i + 1}"), range(40)))
    run.check("login", "40 parallel guesses for one user from 40 addresses: 5 checked",
              one_user.count(401) == 5 and one_user.count(429) == 35, f"{sorted(one_user)}")
    with ThreadPoolExecutor(20) as pool:
        one_addr = list(pool.map(lambda i: guess(i, f"nobody{i}", "127.0.2.1"), range(40)))
    run.check("login", "40 users from one address: 5 checked", one_addr.count(401) == 5 and one_addr.count(429) == 35,
              f"{sorted(one_addr)}")
    # N10: right passwords: 20 a minute per user, at most 20 sessions.
    statuses = []
    for i in range(22):
        statuses.append(hub.client(f"127.0.3.{i % 5 + 1}").login("walt", "correct horse battery").status)
    run.check("login", "N10 right passwords budgeted (21st in a minute: 429)", statuses[:20] == [302] * 20
              and statuses[20:] == [429, 429], f"{statuses}")
    live = len([s for s in accounts.live_sessions() if s["username"] == "walt"])
    run.check("login", "N10 sessions per user capped at 20", live <= 20, f"{live} live sessions")
    t0 = time.monotonic()
    other = hub.client("127.0.3.1").login("viewer2", "correct horse battery").status
    run.check("login", "N10 another user logs in at once from the same address", other == 302
              and time.monotonic() - t0 < 3, f"{other} in {time.monotonic() - t0:.1f} s")
    # N11: revoke by another case.
    one = hub.login("viewer2", "correct horse battery")
    two = hub.login("VIEWER2", "correct horse battery")
    done = subprocess.run([sys.executable, "-m", "server_monitor", "sessions", "revoke", "VIEWER2", "-c",
                           hub.config_path], cwd=ROOT, capture_output=True, text=True, timeout=60)
    after = [one.request("GET", "/api/servers").status, two.request("GET", "/api/servers").status]
    run.check("login", "N11 sessions revoke VIEWER2 ends viewer2's sessions", done.returncode == 0
              and after == [401, 401], f"rc {done.returncode} {done.stdout.strip()!r}; then {after}")
    again = subprocess.run([sys.executable, "-m", "server_monitor", "sessions", "revoke", "Viewer2", "-c",
                            hub.config_path], cwd=ROOT, capture_output=True, text=True, timeout=60)
    run.check("login", "N11 revoke with nothing to end exits non-zero", again.returncode != 0,
              f"rc {again.returncode} {again.stdout!r}")
    listing = subprocess.run([sys.executable, "-m", "server_monitor", "sessions", "list", "-c", hub.config_path],
                             cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    ids = [r[0] for r in accounts.connection().execute("SELECT id_hash FROM sessions")]
    run.check("login", "sessions list shows no session hash", not any(i in listing for i in ids), "hash listed")
    # Agent-token timing: near miss vs far miss.
    near, far = hub.token[:-1] + ("A" if hub.token[-1] != "A" else "B"), "Z" * len(hub.token)
    times = {"near": [], "far": []}
    body = json.dumps(sample_report("timing")).encode()
    for _ in range(150):
        for kind, token in (("near", near), ("far", far)):
            t0 = time.perf_counter()
            hub.post(body, token=token)
            times[kind].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    run.check("login", "agent token near vs far miss: medians within 0.5 ms", abs(medians["near"] - medians["far"]) < 0.5,
              f"medians {medians}")
    hub.stop()


def area_ingest(run):
    """Ingest abuse (review: gzip bomb, encodings, huge numbers, nesting, batch size, duplicate keys,
    bad encodings, Content-Length games, token in the query string), N9 (anonymous bodies) and I-4
    (new hosts per hour, with the cap configured)."""
    hub = run.main
    good = sample_report("ingest-good")
    raw = json.dumps(good).encode()
    bomb = gzip.compress(b"[" + b" " * (50 << 20) + b"]", 9)

    def case(name, body, expect, token=None, headers=None):
        t0 = time.monotonic()
        try:
            answer = hub.post(body, token=token, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            return run.check("ingest", name, False, type(exc).__name__)
        run.check("ingest", name, answer.status in expect and time.monotonic() - t0 < 10,
                  f"status {answer.status} in {time.monotonic() - t0:.1f} s {answer.data[:120]!r}")

    case("gzip bomb without a token: 401", bomb, (401,), token=False, headers={"Content-Encoding": "gzip"})
    case("gzip bomb with the token: 413", bomb, (413, 400), headers={"Content-Encoding": "gzip"})
    case("double gzip", gzip.compress(gzip.compress(raw)), (400, 415), headers={"Content-Encoding": "gzip, gzip"})
    case("deflate", zlib.compress(raw), (201, 400, 415), headers={"Content-Encoding": "deflate"})
    case("br", raw, (400, 415), headers={"Content-Encoding": "br"})
    case("gzip + trailing junk (I6)", gzip.compress(raw) + b"TRAILINGJUNK", (400,), headers={"Content-Encoding": "gzip"})
    big = raw.replace(b'"cpu_count": 192', b'"cpu_count": ' + b"9" * 500000)
    case("500,000-digit integer", big, (400, 413))
    case("1e999999", raw.replace(b'"cpu_count": 192', b'"cpu_count": 1e999999'), (400,))
    case("NaN", raw.replace(b'"percent": 42.5', b'"percent": NaN'), (400,))
    case("400k nesting", b"[" * 400000 + b"]" * 400000, (400, 413))
    case("1M nesting", b"[" * 1000000 + b"]" * 1000000, (400, 413))
    case("501-report batch", json.dumps({"reports": [sample_report(f"b{i}", gpus=0, processes=0, disks=0)
                                                     for i in range(501)]}).encode(), (400, 413))
    case("150k duplicate keys", b"{" + b",".join(b'"a%d":1' % (i % 10) for i in range(150000)) + b"}", (400, 413))
    case("bad UTF-8", raw.replace(b"Ubuntu", b"Ub\xff\xfentu"), (400,))
    case("UTF-16", json.dumps(good).encode("utf-16"), (400,))
    case("token in the query string", raw, (401,), token=False)
    for name, length, expect in (("Content-Length 10^12", "1000000000000", ("413",)),
                                 ("Content-Length negative", "-5", ("400",)),
                                 ("Content-Length duplicated", "10\r\nContent-Length: 20", ("400",)),
                                 ("no Content-Length", None, ("411", "400"))):
        sock = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
        head = ("POST /api/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                + hub.token + "\r\n" + (f"Content-Length: {length}\r\n" if length else "") + "Connection: close\r\n\r\n")
        try:
            sock.sendall(head.encode() + (b"{}" if length is None else b""))
            answer = sock.recv(200).decode("latin-1")
        except OSError as exc:
            answer = f"{type(exc).__name__}"
        finally:
            sock.close()
        status = answer[9:12]
        run.check("ingest", name, status in expect or (status == "" and name == "Content-Length duplicated"),
                  answer[:80])
    # Hostile text lands (N2): free-text fields replaced, identity fields refused.
    for ch in ("\u200b", "\ufeff", "\u200f", "\u061c", "\u200e"):
        r = sample_report("n2-host", gpus=1, processes=1)
        r["processes"][0].update(process_name=f"/home/mallory/{ch}job", user=f"u{ch}x", container=f"c{ch}")
        answer = hub.post(r)
        run.check("ingest", f"N2 U+{ord(ch):04X} in process name/user/container: stored", answer.status == 201,
                  f"status {answer.status} {answer.data[:150]!r}")
    # N9: 200 anonymous 1 MiB bodies: 401 before the body, worker memory flat.
    rss0 = hub.rss_kib()
    socks, early = [], 0
    for i in range(200):
        try:
            sock = socket.create_connection(("127.0.0.1", hub.port), timeout=5, source_address=(f"127.0.4.{i % 4 + 1}", 0))
            sock.sendall(b"POST /api/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1048576\r\n\r\n")
            socks.append(sock)
        except OSError:
            pass
    deadline = time.monotonic() + 10  # one deadline for all: a hub that waits for the bodies answers none
    for sock in socks:
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if sock.recv(64).startswith(b"HTTP/1.1 401"):
                early += 1
        except OSError:
            pass
    rss1 = hub.rss_kib()
    for sock in socks:
        sock.close()
    run.check("ingest", "N9 200 anonymous 1 MiB posts answered 401 before their body", early == len(socks) == 200,
              f"{early} of {len(socks)} got 401 unread")
    run.check("ingest", "N9 hub memory while they were held: < +60 MB", rss1 - rss0 < 60 * 1024,
              f"RSS {rss0 // 1024} -> {rss1 // 1024} MB")
    health = HTTP.request("GET", hub.base + "/-/health", timeout=10).status
    run.check("ingest", "hub healthy after the abuse", health == 200, f"/-/health {health}")
    # I-4: one shared-token client, many new hosts (the cap is off by default; set to 50 here).
    capped = run.hub("hosts", edits={"agent.max_new_hosts_per_hour": 50})
    first = capped.post({"reports": [sample_report(f"node-{i}", gpus=1, processes=0, disks=1) for i in range(40)]})
    flood = capped.post({"reports": [sample_report(f"flood-{i}", gpus=1, processes=0, disks=1) for i in range(200)]})
    run.check("ingest", "I-4 new hosts beyond agent.max_new_hosts_per_hour refused", first.status == 207
              and flood.status == 429, f"{first.status}, then {flood.status}")
    capped.stop()
    default = run.hub("hosts-default")
    t0 = time.monotonic()
    statuses = [default.post({"reports": [sample_report(f"d{j}-{i}", gpus=1, processes=0, disks=1)
                                          for i in range(200)]}).status for j in range(2)]
    with default.db() as conn:
        n = conn.execute("SELECT count(*) FROM servers").fetchone()[0]
    run.check("ingest", "I-4 default config (cap off, documented decision): 400 hosts from one token", n < 400,
              f"{n} servers created in {time.monotonic() - t0:.1f} s ({statuses}); the cap is off by default")
    default.stop()


class _HostileHub(BaseHTTPRequestHandler):
    """The review's evil hub for N4: a gzip bomb (201), a big 503 body, JSON nested 200,000 deep (400)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = self.server.mode
        try:
            if mode == "bomb":
                self._answer(201, self.server.bomb, [("Content-Encoding", "gzip")])
            elif mode == "big":
                self.send_response(503)
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"x" * (1 << 20))
            elif mode == "deep":
                self._answer(400, b"[" * 200000 + b"]" * 200000)
            else:
                self._answer(207, b'{"results": "not a list"}')
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _answer(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _agent_config(path, url, token, spool, extra=""):
    with open(path, "w") as fp:
        fp.write(f"server_url: {url}\ntoken: {token}\ninterval: 2\nnvidia_smi: {FAKE_NVSMI}\nspool_dir: {spool}\n"
                 f"retry_base_s: 0.3\nretry_max_s: 1\n{extra}")
    return path


def _agent_once(config, env=None, timeout=90):
    """``agent.py --once`` under /usr/bin/time-like accounting: (rc, output, peak RSS KiB)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "agent.py"), "-c", config, "--once"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out.decode(errors="replace"), 0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc.returncode, out.decode(errors="replace"), usage.ru_maxrss


def area_agent(run):
    """The real agent: N2 (U+200B/U+FEFF/U+200F/U+061C in a process path → the host stays online),
    N4 (a hostile hub's gzip bomb, 64 MiB body, deep JSON, malformed 207), fake nvidia-smi in
    garbage, sentinels, slow and hang_hard modes."""
    hub = run.main
    work = os.path.join(run.workdir, "agent")
    os.makedirs(work, exist_ok=True)
    for i, ch in enumerate(("\u200b", "\ufeff", "\u200f", "\u061c")):
        config = _agent_config(os.path.join(work, f"n2-{i}.yaml"), hub.base, hub.token, os.path.join(work, f"sp{i}"),
                               f"hostname: victim-{i}\n")
        env = dict(os.environ, FAKE_NVSMI_PROCNAME=f"/home/mallory/{ch}job", FAKE_NVSMI_SEED=f"victim{i}")
        rc, out, _ = _agent_once(config, env)
        with hub.db() as conn:
            seen = conn.execute("SELECT count(*) FROM servers WHERE hostname = ?", (f"victim-{i}",)).fetchone()[0]
            # The hostile path went through the agent (replaced by U+FFFD on the way), not a clean one.
            paths = [r[0] for r in conn.execute(
                "SELECT p.process_name FROM gpu_processes p JOIN servers s ON s.id = p.server_id "
                "WHERE s.hostname = ? AND p.process_name LIKE '/home/mallory/%'", (f"victim-{i}",))]
        run.check("agent", f"N2 U+{ord(ch):04X} in a process path: report stored, host online",
                  rc == 0 and seen == 1 and paths and ch not in paths[0],
                  f"rc {rc}, servers {seen}, stored paths {paths[:1]}: {out[-300:]}")
    for mode, expect_rc in (("garbage", (0,)), ("sentinels", (0,)), ("slow:3", (0,)), ("hang_hard", (0, 1))):
        config = _agent_config(os.path.join(work, f"m-{mode[:4]}.yaml"), hub.base, hub.token,
                               os.path.join(work, f"spm{mode[:4]}"), "hostname: mode-host\nnvidia_smi_timeout_s: 5\n")
        t0 = time.monotonic()
        rc, out, _ = _agent_once(config, dict(os.environ, FAKE_NVSMI_MODE=mode), timeout=60)
        run.check("agent", f"fake nvidia-smi {mode}: agent answers, no traceback", rc in expect_rc
                  and "Traceback" not in out, f"rc {rc} in {time.monotonic() - t0:.1f} s: {out[-300:]}")
    server = ThreadingHTTPServer(("127.0.0.1", run.port()), _HostileHub)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # the agent hanging up early is what it should do
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    server.bomb = b"".join([comp.compress(b"\0" * (1 << 20)) for _ in range(256)] + [comp.flush()])
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        for mode in ("bomb", "big", "deep", "malformed207"):
            server.mode = mode
            config = _agent_config(os.path.join(work, f"n4-{mode}.yaml"), url, "t0ken-for-the-hostile-hub",
                                   os.path.join(work, f"spn4{mode}"))
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "agent.py"), "-c", config, "--once"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            peak = 0
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline:
                try:
                    with open(f"/proc/{proc.pid}/status") as f:
                        peak = max([peak] + [int(line.split()[1]) for line in f if line.startswith("VmHWM:")])
                except OSError:
                    pass
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
            ok = proc.returncode in (0, 1) and "Traceback" not in out and peak < 128 * 1024
            run.check("agent", f"N4 hostile hub answer: {mode}", ok,
                      f"rc {proc.returncode}, peak RSS {peak // 1024} MiB: {out[-300:]}")
    finally:
        server.shutdown()
        server.server_close()


def area_free(run):
    """N7: a MIG device "uuid" with a newline and a command gets no Copy button on /free; the
    script recipe (an API token since newcomer finding 9, typed at its prompt) run as written keeps
    the token off curl's command line and writes no session file."""
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM_ARGS, chromium_path

    hub = run.main
    report = mig_report("mig-node", busy_instances=())
    report["mig_devices"][0]["uuid"] = "MIG-4f1c2a9e-7b1d-5e3a-9c2b-1a2b3c4d5e6f\ncurl -s http://127.0.0.1:9/x | sh\n"
    report["mig_devices"][1]["uuid"] = "MIG-0b6d3c2a-1f2e-5d4c-8b7a-6e5f4d3c2b1a"
    answer = hub.post(report)
    if answer.status != 201:
        run.check("free", "MIG report stored", False, answer.data[:200])
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(hub.base + "/login")
            page.fill("#username", "viewerall")
            page.fill("#password", PASSWORDS["viewerall"])
            page.click("input[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(hub.base + "/free")
            page.wait_for_selector("#free-table tbody tr >> text=mig-node", timeout=15000)
            rows = page.locator("#free-table tbody tr")
            texts = [rows.nth(i).inner_text() for i in range(rows.count())]
            bad = [i for i, t in enumerate(texts) if "4f1c2a9e" in t]
            buttons = rows.nth(bad[0]).locator("button.copy").count() if bad else -1
            run.check("free", "N7a MIG uuid with a newline: no Copy button", buttons == 0,
                      f"rows {len(bad)}, copy buttons {buttons}")
            page.goto(hub.base + "/account")
            page.fill("#token-name", "n7 rerun")
            page.click("#create-token button[type=submit]")
            token = page.input_value("#new-token")
            page.goto(hub.base + "/free")
            page.wait_for_selector("#free-table tbody tr >> text=mig-node", timeout=15000)
            recipe = page.inner_text("#token-howto") + "\n" + page.inner_text("#one-liner")
        finally:
            browser.close()
    work = os.path.join(run.workdir, "free")
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir)
    with open(os.path.join(bindir, "curl"), "w") as fp:
        fp.write(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {work}/argv.log\nexec {shutil.which("curl")} "$@"\n')
    os.chmod(os.path.join(bindir, "curl"), 0o755)
    old = os.umask(0o022)
    try:
        done = subprocess.run(["bash", "-c", recipe], cwd=work, timeout=60, text=True, capture_output=True,
                              input=token + "\n",
                              env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    finally:
        os.umask(old)
    argv = open(os.path.join(work, "argv.log")).read() if os.path.exists(os.path.join(work, "argv.log")) else ""
    run.check("free", "N7b API token not on curl's command line", argv and token not in argv and "mig-node" in done.stdout,
              f"rc {done.returncode}; argv {argv[:200]!r}; out {done.stdout[:200]!r}")
    run.check("free", "N7b no session file written", not os.path.exists(os.path.join(work, "cookies.txt")), "")


def area_throughput(run):
    """N1 viewer path (4 parallel free_gpus?count=32 on the 64-GPU host), N3 (300 slow-header
    sockets against a hub with a 256-descriptor limit), I-5 (8 parallel /api/fleet?fresh=1 loops
    vs ingest p50), I-10 (SIGTERM during long queries), 300 slow connections on the main hub."""
    hub = run.main
    viewer, other = hub.users["viewerall"], hub.users["viewer2"]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(timed, viewer, "GET", "/monitor/free_gpus.json?_shape=array&count=32", timeout=120)
                   for _ in range(4)]
        time.sleep(0.3)
        e_other, a_other, err_other = timed(other, "GET", "/monitor/servers.json", timeout=120)
        results = [f.result() for f in futures]
    worst = max(r[0] for r in results)
    run.check("throughput", "N1 4 parallel free_gpus?count=32 on a 64-GPU host: each < 5 s",
              worst < 5 and all(r[1] is not None and r[1].status == 200 for r in results),
              f"slowest {worst:.1f} s, statuses {[r[1].status if r[1] else r[2] for r in results]}")
    run.check("throughput", "N1 another viewer's servers.json meanwhile < 2 s", not err_other and e_other < 2,
              err_other or f"{e_other:.2f} s")
    # I-5: ingest p50 alone and with 8 fleet loops.
    def ingest_p50(n=20):
        times = []
        for i in range(n):
            t0 = time.monotonic()
            hub.post(sample_report(f"tp-{i % 5}"))
            times.append(time.monotonic() - t0)
            time.sleep(0.1)
        return statistics.median(times) * 1000

    base = ingest_p50()
    stop = threading.Event()

    def loop():
        for _ in range(400):
            if stop.is_set():
                return
            viewer.request("GET", "/api/fleet?fresh=1", timeout=30)

    loops = [threading.Thread(target=loop) for _ in range(8)]
    for t in loops:
        t.start()
    loaded = ingest_p50()
    stop.set()
    for t in loops:
        t.join(timeout=60)
    run.check("throughput", "I-5 8 /api/fleet?fresh=1 loops: ingest p50 within 2x (decision: nginx limit_req)",
              loaded < 2 * base, f"ingest p50 {base:.0f} -> {loaded:.0f} ms")
    # 300 slow connections on the main hub (review: 3,000 had no effect): health stays fast.
    slow = []
    for i in range(300):
        try:
            sock = socket.create_connection(("127.0.0.1", hub.port), timeout=2, source_address=(f"127.0.5.{i % 3 + 1}", 0))
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        except OSError:
            pass
    e, a, err = timed(HTTP, "GET", hub.base + "/-/health", timeout=10)
    for sock in slow:
        sock.close()
    run.check("throughput", "300 slow connections on the main hub: /-/health answers", a is not None and a.status == 200
              and e < 2, err or f"{a.status} in {e:.2f} s")
    # N3: a hub with 256 descriptors, 300 trickling sockets from one address.
    n3 = run.hub("n3", nofile=256, edits={"server.header_timeout_s": 2, "server.body_timeout_s": 2,
                                          "server.max_connections_per_address": 100})
    socks = []
    for _ in range(300):
        sock = socket.socket()
        sock.settimeout(1)
        try:
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", n3.port))
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            pass
        sock.setblocking(False)
        socks.append(sock)
    t0 = time.monotonic()
    answers = []
    for path in ("/-/health", "/login"):
        try:
            answers.append(HTTP.request("GET", n3.base + path, timeout=5).status)
        except urllib3.exceptions.HTTPError as exc:
            answers.append(type(exc).__name__)
    run.check("throughput", "N3 300 slow-header sockets, 256 descriptors: /-/health and /login answer",
              answers == [200, 200], f"{answers}")

    def closed(sock):
        try:
            return sock.recv(4096) == b""
        except (BlockingIOError, socket.timeout):
            return False
        except OSError:
            return True

    while time.monotonic() - t0 < 8 and not all(closed(s) for s in socks):
        for sock in socks:
            try:
                sock.send(b"X-a: b\r\n")
            except OSError:
                pass
        time.sleep(0.5)
    still = sum(not closed(s) for s in socks)
    run.check("throughput", "N3 trickling sockets closed by the header deadline", still == 0,
              f"{still} still open after {time.monotonic() - t0:.1f} s")
    for sock in socks:
        sock.close()
    n3.stop()
    # I-10: SIGTERM during queued long analyst queries.
    i10 = run.hub("i10", edits={"server.shutdown_timeout_s": 2, "sql.analyst_time_limit_ms": 5000,
                                "sql.analyst_concurrency": 1, "sql.analyst_queue": 8})
    from datasette_auth_passwords.utils import hash_password

    Accounts = _module("accounts").Accounts

    Accounts(i10.cfg.auth_db_path).create_user("ana", hash_password("correct horse battery", iterations=1000), "analyst")
    clients = [i10.login("ana", "correct horse battery") for _ in range(4)]
    threads = [threading.Thread(target=timed, args=(c, "GET", "/monitor.json?sql=" + quote(HEAVY)),
                                kwargs={"timeout": 30}) for c in clients]
    for t in threads:
        t.start()
    time.sleep(1.5)
    took = i10.stop(timeout=15)
    for t in threads:
        t.join(timeout=35)
    run.check("throughput", "I-10 SIGTERM with 4 queued 5 s queries: exit < 8 s", took < 8, f"exit after {took:.1f} s")


def area_files(run):
    """N8 (planted symlinked data lock, FIFO write lock, symlinked analyst slot, symlinked shelf:
    the hub refuses to start and the target is untouched), N12 (backup copies private from their
    first byte), L8 (default layout: lock and database files 0600)."""
    hub = run.main
    for path in ("monitor.db", "auth.db", "monitor.db.lock", "monitor.db.write.lock", "monitor.db.jobs.lock",
                 "config.yaml"):
        full = os.path.join(hub.dir, path)
        st = os.lstat(full) if os.path.exists(full) else None
        ok = st is not None and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        run.check("files", f"default layout: {path} 0600 regular", ok, f"{oct(st.st_mode) if st else 'missing'}")
    for plant in ("symlink-data-lock", "fifo-write-lock", "symlink-analyst-slot", "symlink-shelf"):
        h = Hub(run.workdir, f"n8-{plant}", run.port())
        db = h.cfg.db_path
        victim = os.path.join(h.dir, "important.txt")
        with open(victim, "w") as fp:
            fp.write("precious\n")
        if plant == "symlink-data-lock":
            os.symlink(victim, db + ".lock")
        elif plant == "fifo-write-lock":
            os.mkfifo(db + ".write.lock", 0o666)
        elif plant == "symlink-analyst-slot":
            os.symlink(victim, db + ".analyst.0.lock")
        else:
            os.symlink(h.dir, db + ".fleet")
        proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", h.config_path, "--port",
                                 str(h.port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=30)
            last = err.strip().splitlines()[-1:] if err else []
            ok = proc.returncode != 0 and "refusing to use it" in err and open(victim).read() == "precious\n"
            evidence = f"rc {proc.returncode}: {last}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own hub, by its process group
            proc.communicate()
            ok, evidence = False, "the hub started (ran 30 s) on a planted file"
        run.check("files", f"N8 {plant}: hub refuses to start, target untouched", ok, evidence)
    # N12: every mode the backup copies ever had, under umask 022.
    dest = os.path.join(run.workdir, "bk", "nested")
    seen, stop = {}, threading.Event()

    def poll():
        while not stop.is_set():
            if os.path.isdir(dest):
                for f in os.listdir(dest):
                    try:
                        seen.setdefault(f, stat.S_IMODE(os.stat(os.path.join(dest, f)).st_mode))
                    except FileNotFoundError:
                        pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    old = os.umask(0o022)
    try:
        done = subprocess.run([sys.executable, "-m", "server_monitor", "backup", dest, "-c", hub.config_path],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        os.umask(old)
        stop.set()
        poller.join()
    modes = {k: oct(v) for k, v in seen.items()}
    run.check("files", "N12 backup copies 0600 from their first byte", done.returncode == 0 and seen
              and all(v == 0o600 for v in seen.values()), f"rc {done.returncode} modes {modes} {done.stderr[-200:]}")
    dmode = stat.S_IMODE(os.stat(dest).st_mode) if os.path.isdir(dest) else None
    run.check("files", "N12 backup destination directory 0700", dmode == 0o700, f"{oct(dmode) if dmode else None}")
    _installer_cases(run)


def _installer_cases(run):
    """I-8: a man-in-the-middle on plain http serves a replaced zipapp with a matching .sha256;
    ``install_agent.sh --sha256`` refuses it, and without a pin it warns. I-9: upgrade.sh's
    ``restore_databases`` replaces a planted link at the database path instead of writing through it."""
    import functools
    import getpass
    import hashlib
    from http.server import SimpleHTTPRequestHandler

    work = os.path.join(run.workdir, "i8")
    served = os.path.join(work, "www", "static", "agent")
    os.makedirs(served)
    evil = b"#!/bin/sh\necho owned\n"
    for arch in ("x86_64", "aarch64"):
        with open(os.path.join(served, f"server-monitor-agent-{arch}.pyz"), "wb") as fp:
            fp.write(evil)
        with open(os.path.join(served, f"server-monitor-agent-{arch}.pyz.sha256"), "w") as fp:
            fp.write(f"{hashlib.sha256(evil).hexdigest()}  server-monitor-agent-{arch}.pyz\n")
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=os.path.join(work, "www"))
    server = ThreadingHTTPServer(("127.0.0.1", run.port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = os.path.join(work, "root")
    os.makedirs(root)
    with open(os.path.join(work, "token"), "w") as fp:
        fp.write("t0ken-for-the-rerun\n")
    env = dict(os.environ, PATH=os.path.join(TESTS, "fakebin") + os.pathsep + os.environ["PATH"],
               FAKE_SYSTEMCTL_LOG=os.path.join(root, "calls.log"))
    genuine = hashlib.sha256(b"the release's own zipapp").hexdigest()
    try:
        args = ["bash", os.path.join(ROOT, "scripts", "install_agent.sh"), "--url",
                f"http://127.0.0.1:{server.server_port}", "--token-file", os.path.join(work, "token"), "--root", root]
        pinned = subprocess.run(args + ["--sha256", genuine], env=env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        installed = os.path.exists(os.path.join(root, "opt/server-monitor-agent/server-monitor-agent.pyz"))
        run.check("files", "I-8 install_agent.sh --sha256 refuses a replaced zipapp over plain http",
                  pinned.returncode != 0 and not installed, f"rc {pinned.returncode}, installed {installed}: "
                  f"{pinned.stderr[-200:]}")
        unpinned = subprocess.run(args + ["--dry-run"], env=env, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        run.check("files", "I-8 plain http without a pin: warning", "warning: plain http" in unpinned.stderr,
                  unpinned.stderr[-200:])
    finally:
        server.shutdown()
        server.server_close()
    work = os.path.join(run.workdir, "i9")
    release, data, backup = (os.path.join(work, d) for d in ("release", "data", "backup"))
    os.makedirs(os.path.join(release, ".venv", "bin"))
    os.makedirs(data)
    os.makedirs(backup)
    python = os.path.join(release, ".venv", "bin", "python")
    with open(python, "w") as fp:
        fp.write(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    os.chmod(python, 0o755)
    config = os.path.join(work, "config.yaml")
    with open(config, "w") as fp:
        fp.write(f"server:\n  secret_key: {'s' * 32}\nauth:\n  password: pw-for-the-rerun\nagent:\n  token: {'t' * 32}\n"
                 f"data:\n  path: {data}/monitor.db\n  auth_path: {data}/auth.db\n")
    for name, body in (("monitor-20261207T000000Z.db", b"monitor backup"), ("auth-20261207T000000Z.db", b"auth backup")):
        with open(os.path.join(backup, name), "wb") as fp:
            fp.write(body)
    victim = os.path.join(work, "victim.txt")
    with open(victim, "w") as fp:
        fp.write("root's file\n")
    os.symlink(victim, os.path.join(data, "monitor.db"))
    function = subprocess.run(["sed", "-n", "/^restore_databases()/,/^}/p", os.path.join(ROOT, "scripts", "upgrade.sh")],
                              capture_output=True, text=True, check=True).stdout
    script = (f'set -euo pipefail; DRY_RUN=0; SERVER_USER={getpass.getuser()}; say() {{ echo "$*" >&2; }}; '
              f'run() {{ "$@"; }}\n{function}\nrestore_databases "{config}" "{backup}" "{release}"\n')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    st = os.lstat(os.path.join(data, "monitor.db"))
    ok = (function and done.returncode == 0 and open(victim).read() == "root's file\n" and stat.S_ISREG(st.st_mode))
    run.check("files", "I-9 upgrade.sh rollback replaces a planted link, target untouched", ok,
              f"rc {done.returncode}, victim {open(victim).read()!r}, link still there {stat.S_ISLNK(st.st_mode)}")


def area_retest(run):
    """The ba1fb60 findings, re-tested live (M1 in csrf; the rest here) plus I-1, I-3, I-6 and I5."""
    hub = run.main
    admin = hub.admin()
    # M1: the right session-bound token, but a same-site / foreign / null Origin; API writes with
    # a body a cross-site form could send. Roles unchanged afterwards.
    for path in ("/admin/users/viewerall", "/admin/invites", "/monitor/admin_announce"):
        for name, headers in (("Sec-Fetch-Site: same-site", {"Sec-Fetch-Site": "same-site"}),
                              ("foreign Origin", {"Origin": "http://127.0.0.1:8499"}), ("Origin: null", {"Origin": "null"})):
            fields = {"csrftoken": csrf(admin), "action": "update", "role": "analyst", "scope": "all",
                      "level": "critical", "message": "forged", "hours": "1"}
            a = admin.request("POST", path, fields=fields, headers=headers, encode_multipart=False)
            run.check("retest", f"M1 {path} right token, {name}", a.status == 403, f"{a.status}")
    for name, headers in (("no Content-Type, foreign Origin", {"Origin": "http://localhost:8499"}),
                          ("text/plain", {"Content-Type": "text/plain"})):
        a = admin.request("POST", "/api/silences", body=b'{"server_id": 1, "rule": "disk_full", "minutes": 60}',
                          headers=headers)
        run.check("retest", f"M1 POST /api/silences {name}", a.status in (403, 415), f"{a.status}")
    role = sqlite3.connect(hub.cfg.auth_db_path).execute("SELECT role FROM users WHERE username = 'viewerall'").fetchone()
    run.check("retest", "M1 viewerall's role unchanged", role == ("viewer",), f"{role}")
    # M2 / I-1: bogus invites are cheap and limited; a valid invite still registers afterwards.
    reg = run.hub("register")
    times, statuses = [], []
    for i in range(13):
        c = reg.client()
        token = re.search(r'name="csrftoken" value="([^"]+)"', c.request("GET", "/login").data.decode()).group(1)
        t0 = time.monotonic()
        statuses.append(c.request("POST", f"/register?code=bogus{i}", encode_multipart=False, fields={
            "csrftoken": token, "code": f"bogus{i}", "username": f"u{i}", "password": "x" * 12,
            "password2": "x" * 12}).status)
        times.append(time.monotonic() - t0)
    run.check("retest", "M2 bogus invites: no hashing (< 0.2 s each), 429 by the 11th",
              max(times) < 0.2 and statuses[10:] == [429] * 3, f"{statuses}, max {max(times):.3f} s")
    try:
        reg.invite_and_register("newbie", "a fine long pass phrase")
        run.check("retest", "I-1 a valid invite registers after others' bogus posts", True)
    except RuntimeError as exc:
        run.check("retest", "I-1 a valid invite registers after others' bogus posts", False, exc)
    # I7: bogus code with a taken name vs a new name: the same answer.
    answers = []
    for name in ("viewer1", "brandnew1"):
        c = reg.client("127.0.6.1")
        token = re.search(r'name="csrftoken" value="([^"]+)"', c.request("GET", "/login").data.decode()).group(1)
        a = c.request("POST", "/register?code=nope", encode_multipart=False, fields={
            "csrftoken": token, "code": "nope", "username": name, "password": "y" * 12, "password2": "y" * 12})
        answers.append((a.status, re.sub(r'value="[^"]*"', "", a.data.decode())))
    run.check("retest", "I7 bogus invite: taken and new names answered alike", answers[0] == answers[1],
              f"{answers[0][0]} vs {answers[1][0]}")
    # I2: multipart invite → 415.
    a = admin.request("POST", "/admin/invites", fields={"csrftoken": csrf(admin), "role": "admin"})
    run.check("retest", "I2 multipart POST /admin/invites: 415", a.status == 415, f"{a.status}")
    # I3: POST to a read-only canned query 405; bad _sort 400; _sort with _sort_desc 400.
    for name, method, path, expect in (("POST read-only canned query", "POST", "/monitor/servers", (403, 405)),
                                       ("bad _sort", "GET", "/monitor/host_samples.json?_sort=nope", (400,)),
                                       ("_sort and _sort_desc", "GET",
                                        "/monitor/host_samples.json?_sort=ts&_sort_desc=ts", (400,))):
        a = admin.request(method, path, fields={} if method == "POST" else None,
                          encode_multipart=False) if method == "POST" else admin.request(method, path)
        run.check("retest", f"I3 {name}", a.status in expect, f"{a.status}")
    # M3 / L10: hostile host names and identity text.
    for name, mutate, expect in (
            ("M3 hostname with newline", lambda r: r["host"].update(hostname="gpu-07\nBcc: x@evil"), (400,)),
            ("L10 hostname ZWSP", lambda r: r["host"].update(hostname="gpu\u200b07"), (400,)),
            ("L10 hostname LRM", lambda r: r["host"].update(hostname="gpu\u200e07"), (400,)),
            ("L10 hostname Cyrillic a", lambda r: r["host"].update(hostname="gpu-\u043007"), (400,)),
            ("L10 hostname leading dash", lambda r: r["host"].update(hostname="-gpu07"), (400,)),
            ("M3 gpu_status message with CR", lambda r: r["gpu_status"].update(state="error", message="a\rb"),
             (201, 400)),
            ("L3 sample_time 1e9 with sent_at 9.9e10", lambda r: r.update(sample_time=1e9, sent_at=9.9e10), (400,)),
            ("L3 sample_time 1e9", lambda r: r.update(sample_time=1e9), (400,)),
            ("L3 sample_time now - 800 d", lambda r: r.update(sample_time=time.time() - 800 * 86400), (400,)),
            ("L10 machine id with U+202E", lambda r: r["host"].update(machine_id="m\u202eabc"), (400,))):
        r = sample_report("retest-host")
        mutate(r)
        a = hub.post(r)
        run.check("retest", name, a.status in expect, f"{a.status} {a.data[:120]!r}")
    # L10: the same report id from two hosts both stored.
    r1, r2 = sample_report("dup-a"), sample_report("dup-c")
    r2["report_id"] = r1["report_id"]
    statuses = [hub.post(r1).status, hub.post(r2).status]
    run.check("retest", "L10 the same report id from two hosts: both stored", statuses == [201, 201], f"{statuses}")
    # L2: CSV formula cells prefixed.
    r = sample_report("csv-host", gpus=1, processes=4)
    for p, v in zip(r["processes"], ("=HYPERLINK(\"http://x\")", "+SUM(1)", "@cmd", "-2+3+cmd")):
        p["user"] = v
    r["processes"][0]["container"] = "=cmd|' /C calc'!A0"
    hub.post(r)
    for path in ("/monitor/processes.csv", "/monitor/usage_by_user.csv?hours=24", "/monitor/processes.csv?_stream=1",
                 "/monitor/fleet_processes.csv", "/monitor.csv?sql=" + quote("select user from gpu_processes")):
        text = admin.request("GET", path).data.decode()
        bad = [line for line in text.splitlines() if re.search(r'(^|,)"?[=+@]', line)]
        run.check("retest", f"L2 CSV formulas prefixed: {path}", not bad, f"{bad[:2]}")
    # L4: X-Forwarded-For ignored by default.
    c = hub.client()
    token = re.search(r'name="csrftoken" value="([^"]+)"', c.request("GET", "/login").data.decode()).group(1)
    c.request("POST", "/login", fields={"username": "viewerall", "password": PASSWORDS["viewerall"], "csrftoken": token},
              headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6"},
              encode_multipart=False)
    clients = [row[0] for row in sqlite3.connect(hub.cfg.auth_db_path).execute("SELECT client FROM sessions")]
    run.check("retest", "L4 forwarded headers ignored: sessions.client is the socket peer", "6.6.6.6" not in clients,
              f"{set(clients)}")
    # L5: /account wrong current passwords → 429 after 5.
    user = hub.login("viewer2", PASSWORDS["viewer2"])
    statuses = []
    for _ in range(7):
        page = user.request("GET", "/account").data.decode()
        token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
        statuses.append(user.request("POST", "/account", encode_multipart=False, fields={
            "csrftoken": token, "password": "wrong wrong wrong", "new_password": "another long one",
            "new_password2": "another long one"}).status)
    run.check("retest", "L5 /account wrong current passwords: 429 after 5", statuses[-1] == 429, f"{statuses}")
    # I-3 / I4: password policy.
    for pw in ("aaaaaaaaaa", "abababababab", "1234567890", "Password123", "admin2admin2", "admin2admin2admin2"):
        page = hub.users["admin2"].request("GET", "/account").data.decode()
        token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
        a = hub.users["admin2"].request("POST", "/account", encode_multipart=False, fields={
            "csrftoken": token, "password": PASSWORDS["admin2"], "new_password": pw, "new_password2": pw})
        run.check("retest", f"I4/I-3 password {pw!r} refused", a.status in (200, 400) and "changed" not in
                  a.data.decode().lower(), f"{a.status}")
    # L7: fts3_tokenizer spellings (analyst).
    analyst = hub.users["analyst1"]
    for sql in ("select fts3_tokenizer('simple')", "select fts3_tokenizer('x', x'00')", "SELECT FTS3_TOKENIZER('simple')",
                "select \"fts3_tokenizer\"('simple')", "with t(p) as (select fts3_tokenizer('porter')) select * from t",
                "select Fts3_Tokenizer('unicode61')"):
        a = analyst.request("GET", "/monitor.json?sql=" + quote(sql))
        run.check("retest", f"L7 {sql[:40]}", a.status == 400, f"{a.status} {a.data[:100]!r}")
    # M4: delete the highest server, the next host gets a new id; a viewer scoped to it sees nothing.
    hub.post(sample_report("m4-old"))
    with hub.db() as conn:
        old_id = conn.execute("SELECT max(id) FROM servers").fetchone()[0]
    token = csrf(admin)
    admin.request("POST", f"/admin/servers/{old_id}/delete", fields={"csrftoken": token}, encode_multipart=False)
    hub.post(sample_report("m4-new"))
    with hub.db() as conn:
        new_id = conn.execute("SELECT id FROM servers WHERE hostname = 'm4-new'").fetchone()[0]
        left = conn.execute("SELECT count(*) FROM gpus WHERE server_id = ?", (old_id,)).fetchone()[0]
    run.check("retest", "M4 a deleted server's id is not reused; its rows are gone", new_id > old_id and left == 0,
              f"old {old_id}, new {new_id}, gpus left {left}")
    # L8: file modes under the default start.
    modes = {f: stat.S_IMODE(os.lstat(os.path.join(hub.dir, f)).st_mode) for f in os.listdir(hub.dir)
             if f.startswith(("monitor.db", "auth.db", "config")) and os.path.isfile(os.path.join(hub.dir, f))}
    run.check("retest", "L8 config, databases and lock files 0600", all(m == 0o600 for m in modes.values()),
              {k: oct(v) for k, v in modes.items()})
    reg.stop()
    # I-6 and I8 on one hub with the proxy header and the shared token off.
    proxy = run.hub("proxy", edits={"auth.trusted_proxy_header": "x-forwarded-for", "agent.shared_token_enabled": False})
    statuses = []
    for i in range(6):
        c = proxy.client("127.0.7.3")
        token = re.search(r'name="csrftoken" value="([^"]+)"', c.request("GET", "/login").data.decode()).group(1)
        statuses.append(c.request("POST", "/login", fields={"username": f"user{i}", "password": "wrong",
                                                            "csrftoken": token},
                                  headers={"X-Forwarded-For": f"10.19.0.{i}"}, encode_multipart=False).status)
    run.check("retest", "I-6 rotating X-Forwarded-For from an untrusted peer: 429 on the 6th", statuses[-1] == 429,
              f"{statuses}")
    a = proxy.post(sample_report("i8"))
    run.check("retest", "I8 shared_token_enabled false: shared token 401", a.status == 401, f"{a.status}")
    a = HTTP.request("GET", proxy.base + "/login", headers={"X-Forwarded-Proto": "https"})
    secure = [c for c in a.headers.getlist("Set-Cookie") if "ds_csrftoken" in c]
    run.check("retest", "I9 behind the trusted proxy with https: ds_csrftoken Secure", secure and "Secure" in secure[0],
              f"{secure}")
    proxy.stop()


FUNCS = {name: globals()[f"area_{name}"] for name in AREAS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--areas", default=",".join(AREAS), help="comma-separated areas (default: all): "
                        + ", ".join(AREAS))
    parser.add_argument("--port-base", type=int, default=8400, help="first loopback port (100 are used at most)")
    parser.add_argument("--json", help="write the counts and failures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (hub logs)")
    args = parser.parse_args(argv)
    areas = [a for a in args.areas.split(",") if a]
    unknown = set(areas) - set(AREAS)
    if unknown:
        parser.error(f"unknown areas: {sorted(unknown)}")
    results = Results()

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")  # the finally below still stops every hub

    signal.signal(signal.SIGTERM, stop)
    workdir = tempfile.mkdtemp(prefix="sm-security-rerun-")
    run = Run(workdir, args.port_base, results)
    started = time.monotonic()
    harness_errors = []
    try:
        for area in areas:
            t0 = time.monotonic()
            print(f"== {area}: {TITLES[area]}", flush=True)
            try:
                FUNCS[area](run)
            except Exception as exc:  # noqa: BLE001 - an area that crashes is reported, the others still run
                harness_errors.append((area, traceback.format_exc()))
                results.check(area, "area ran to the end", False, f"{type(exc).__name__}: {exc}")
            print(f"   {results.tried.get(area, 0)} tried, {results.held.get(area, 0)} held, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    finally:
        run.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + results.table())
    print(f"\n{len(results.failures)} cases did not hold ({time.monotonic() - started:.0f} s):")
    for area, name, evidence in results.failures:
        print(f"- [{area}] {name}: {evidence}")
    for area, tb in harness_errors:
        print(f"\nharness error in {area}:\n{tb}")
    if args.json:
        with open(args.json, "w") as fp:
            json.dump({"tried": results.tried, "held": results.held, "failures": results.failures}, fp, indent=1)
    if harness_errors:
        return 2
    return 0 if not results.failures else 1


if __name__ == "__main__":
    sys.exit(main())
