"""The Datasette hub in-process (datasette.client, real SQLite files): privacy, login,
canned queries as the JSON API, the ingest mount, secrets never in responses."""

import asyncio
import json
import re

import pytest
from reports import sample_report


class Client:
    """Synchronous wrapper over ``datasette.client`` that keeps cookies like a browser."""

    def __init__(self, ds):
        self.ds = ds
        self.cookies = {}

    def request(self, method, path, **kwargs):
        cookies = dict(self.cookies)
        cookies.update(kwargs.pop("cookies", {}))

        async def go():
            return await self.ds.client.request(method, path, cookies=cookies, **kwargs)

        response = asyncio.run(go())
        for name, value in response.cookies.items():
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def login(self, username, password, next_url="/"):
        page = self.get("/login")
        token = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
        return self.post("/login", data={"username": username, "password": password, "next": next_url,
                                         "csrftoken": token})


@pytest.fixture
def client(datasette):
    return Client(datasette)


@pytest.fixture
def admin(client, hub_config):
    response = client.login(hub_config.get("auth.username"), hub_config.password)
    assert response.status_code == 302, response.text
    return client


def ingest(client, report, token):
    body = json.dumps(report).encode()
    return client.post("/api/report", content=body, headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/json"})


ANON_PATHS = ["/", "/monitor", "/monitor/servers", "/monitor/gpus.json", "/monitor/servers.json?_shape=array",
              "/monitor/gpus_samples", "/monitor.json", "/-/metadata", "/-/metadata.json", "/-/plugins.json",
              "/-/settings.json", "/-/databases.json", "/-/versions.json", "/-/actor.json", "/-/threads.json",
              "/monitor?sql=select+1", "/monitor.db", "/-/messages", "/-/permissions", "/-/allow-debug"]


@pytest.mark.parametrize("path", ANON_PATHS)
def test_anonymous_sees_nothing(client, path):
    response = client.get(path)
    if ".json" in path:
        assert response.status_code == 401
        assert response.json()["error"] == "login required"
    else:
        assert response.status_code == 302
        assert response.headers["location"].startswith("/login?next=")


def test_anonymous_api_gets_json_401(client):
    response = client.get("/monitor/servers", headers={"Accept": "application/json"})
    assert response.status_code == 401


def test_login_page_and_static_are_public(client):
    assert client.get("/login").status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/-/static/app.css").status_code == 200


def test_password_tool_and_basic_auth_are_closed(admin):
    assert admin.get("/-/password-tool").status_code == 404
    assert admin.get("/-/login").headers["location"] == "/login"


def test_wrong_password_is_rejected(client, hub_config):
    response = client.login(hub_config.get("auth.username"), "wrong")
    assert response.status_code == 401
    assert "Invalid username or password" in response.text
    assert client.get("/").status_code == 302


def test_login_redirects_only_to_local_next(client, hub_config):
    response = client.login(hub_config.get("auth.username"), hub_config.password, next_url="//evil.example/")
    assert response.headers["location"] == "/"


def test_login_then_dashboard_and_logout(client, hub_config):
    response = client.login(hub_config.get("auth.username"), hub_config.password, next_url="/monitor")
    assert response.headers["location"] == "/monitor"
    cookie = response.headers["set-cookie"]
    assert "sm_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = client.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
    stolen = dict(client.cookies)
    assert client.post("/logout", data={"csrftoken": token}).status_code == 302
    assert client.get("/").status_code == 302
    # The old cookie no longer works: the session ended on the server.
    assert client.get("/monitor/servers.json", cookies=stolen).status_code == 401


def test_ingest_is_mounted_on_the_same_port(client, hub_config):
    report = sample_report("mounted")
    response = ingest(client, report, hub_config.get("agent.token"))
    assert response.status_code == 201, response.text
    assert ingest(client, report, "nope").status_code == 401


def test_canned_queries_are_the_json_api(admin, hub_config):
    ingest(admin, sample_report("gpu-a", gpus=2, processes=2), hub_config.get("agent.token"))
    ingest(admin, sample_report("gpu-b", gpus=1, processes=0, capture="h100-mig", state="idle"),
           hub_config.get("agent.token"))
    servers = admin.get("/monitor/servers.json?_shape=array").json()
    assert [(s["name"], s["status"], s["gpu_count"], s["gpus_busy"]) for s in servers] == [
        ("gpu-a", "online", 2, 2), ("gpu-b", "online", 1, 0)]
    assert servers[0]["gpu_models"] == "NVIDIA H100 80GB HBM3 × 2"
    gpus = admin.get("/monitor/gpus.json?_shape=array").json()
    assert len(gpus) == 3
    h100 = gpus[0]
    assert (h100["memory_total_mib"], h100["power_limit_w"], h100["memory_used_mib"], h100["utilization_gpu"]) == (
        81559, 700, 19818, 100)
    mig = [g for g in gpus if g["server"] == "gpu-b"][0]
    assert mig["mig_mode"] == 1 and mig["utilization_gpu"] is None and mig["busy"] == 0
    procs = admin.get("/monitor/processes.json?_shape=array").json()
    assert len(procs) == 4
    assert {(p["user"], p["container"]) for p in procs} == {("user0", "lab-0"), ("user1", "lab-1")}
    assert procs[0]["used_gpu_memory_mib"] >= procs[1]["used_gpu_memory_mib"]
    disks = admin.get("/monitor/disks.json?_shape=array").json()
    assert {d["mountpoint"] for d in disks} == {"/", "/data1"}
    history = admin.get(f"/monitor/server_history.json?_shape=array&server_id={servers[0]['server_id']}&hours=24").json()
    assert len(history) == 1 and history[0]["cpu_percent"] == 42.5
    gpu_hist = admin.get(f"/monitor/gpu_history.json?_shape=array&server_id={servers[0]['server_id']}&hours=1").json()
    assert [g["gpu_index"] for g in gpu_hist] == [0, 1]


@pytest.fixture
def long_raw_retention(hub_config):
    """Raw rows kept 40 days: for a test that writes 30 days of raw rows straight into the
    database (no ingest, so no dirty marks nor late merges), where the hub's own retention
    pass would otherwise delete their older part while the test reads them."""
    with open(hub_config.path) as fp:
        text = fp.read()
    assert "retention_days: 7" in text
    with open(hub_config.path, "w") as fp:
        fp.write(text.replace("retention_days: 7", "retention_days: 40"))
    return hub_config


def test_history_is_downsampled_below_the_row_limit(long_raw_retention, admin, hub_config):
    import sqlite3
    import time

    ingest(admin, sample_report("busy-host", gpus=8, processes=0), hub_config.get("agent.token"))
    conn = sqlite3.connect(hub_config.db_path)
    now = int(time.time())
    server_id = conn.execute("select id from servers").fetchone()[0]
    # 30 days of history for the host and its 8 GPUs: 30-second samples for the last 3 days
    # (history reads raw rows only within 48 h), one per 5 minutes before (read through the
    # 5-minute and hourly roll-ups, which get the same buckets either way; a fifth of the rows).
    times = [now - i * 30 for i in range(1, 3 * 2880)] + [now - 3 * 86400 - i * 300 for i in range(27 * 288)]
    conn.executemany("insert into host_samples (server_id, ts, received_at, report_id, cpu_percent)"
                     " values (?, ?, ?, ?, ?)",
                     [(server_id, ts, now, f"r{ts}", 50.0) for ts in times])
    gpu_ids = [r[0] for r in conn.execute("select id from gpus")]
    conn.executemany("insert into gpu_samples (gpu_id, ts, utilization_gpu) values (?, ?, ?)",
                     [(g, ts, 80) for g in gpu_ids for ts in times])
    conn.commit()
    # Roll the 30 days up now (`server-monitor maintain`), rather than racing the hub's own pass.
    from server_monitor.storage.rollup import Maintenance

    maintenance = Maintenance.from_config(long_raw_retention)
    maintenance.pause = 0  # no 5 ms breather after each of its ~4,000 transactions: no ingest runs here
    maintenance.run_once()
    for hours in (1, 24, 24 * 7, 24 * 30):
        rows = admin.get(f"/monitor/server_history.json?_shape=array&server_id={server_id}&hours={hours}").json()
        assert 0 < len(rows) <= 1000
        assert rows[-1]["ts"] >= now - 3600
        asked = int(time.time())  # the window ends when the query runs (after the roll-up pass)
        gpu_rows = admin.get(f"/monitor/gpu_history.json?_shape=array&server_id={server_id}&hours={hours}").json()
        assert 0 < len(gpu_rows) <= 1000, hours
        assert {r["gpu_index"] for r in gpu_rows} == set(range(8))
        assert min(r["ts"] for r in gpu_rows) <= asked - hours * 3600 + 2 * gpu_rows[0]["bucket_s"]


def test_no_secret_in_any_response(admin, hub_config):
    ingest(admin, sample_report("s"), hub_config.get("agent.token"))
    secrets_ = [hub_config.password, hub_config.get("auth.password_hash"), hub_config.get("agent.token"),
                hub_config.get("server.secret_key")]
    for path in ["/", "/-/metadata.json", "/-/plugins.json", "/-/settings.json", "/-/databases.json",
                 "/-/versions.json", "/-/actor.json", "/monitor.json", "/monitor/servers.json", "/-/metadata",
                 "/monitor", "/login"]:
        response = admin.get(path)
        assert response.status_code in (200, 302), path
        for secret in secrets_:
            assert secret not in response.text, path


def test_security_headers_on_datasette_pages(admin):
    response = admin.get("/monitor")
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "no-store" in response.headers["cache-control"]


def test_containers_probes_and_agent_health(admin, hub_config):
    import time

    report = sample_report("lxc-host", gpus=1, processes=0)
    report["containers"] = [
        {"name": "trainbox", "project": "default", "kind": "incus", "type": "container", "state": "Running",
         "memory_bytes": 4 * 2**30, "disk_bytes": 10 * 2**30, "cpu_seconds": 123.4, "ipv4": "10.0.0.5"},
        {"name": "ws-3", "project": "vision", "kind": "incus", "type": "container", "state": "Stopped",
         "memory_bytes": None, "disk_bytes": None, "cpu_seconds": None, "ipv4": None},
    ]
    report["probes"] = [{"name": "intl", "url": "https://example.org", "ok": False, "latency_ms": None,
                         "status": None, "error": "ConnectTimeoutError", "checked_at": time.time()}]
    report["agent"] = {"spool_depth": 3, "spool_bytes": 4096, "spool_dropped": 2, "rejected": 0}
    report["disks"].append({"mountpoint": "zpool:tank", "device": "tank", "fstype": "zpool",
                            "total_bytes": 10**13, "used_bytes": 5 * 10**12, "health": "DEGRADED"})
    assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    containers = admin.get("/monitor/containers.json?_shape=array").json()
    assert [(c["project"], c["name"], c["state"]) for c in containers] == [
        ("default", "trainbox", "Running"), ("vision", "ws-3", "Stopped")]
    probes = admin.get("/monitor/probes.json?_shape=array").json()
    assert probes[0]["ok"] == 0 and probes[0]["error"] == "ConnectTimeoutError"
    server = admin.get("/monitor/servers.json?_shape=array").json()[0]
    assert (server["spool_depth"], server["spool_dropped"]) == (3, 2)
    pool = [d for d in admin.get("/monitor/disks.json?_shape=array").json() if d["fstype"] == "zpool"][0]
    assert pool["health"] == "DEGRADED" and pool["used_percent"] == 50.0
    # A newer report without a container list (not collected) keeps the last one.
    newer = sample_report("lxc-host", gpus=1, processes=0, sample_time=report["sample_time"] + 30)
    newer["sent_at"] = None
    newer.pop("containers", None)
    assert ingest(admin, newer, hub_config.get("agent.token")).status_code == 201
    assert len(admin.get("/monitor/containers.json?_shape=array").json()) == 2
