"""monitor.db deleted or replaced under the running hub (newcomer review H2)."""

import json
import os
import re
import signal
import sqlite3
import time

import pytest
import urllib3
from conftest import free_port, sample_report
from test_agent_process import start_agent, start_hub, stop

TOKEN_HEADERS = {"Content-Type": "application/json"}


def _post(base, token, report):
    http = urllib3.PoolManager(retries=False)
    return http.request("POST", base + "/api/report", body=json.dumps(report).encode(),
                        headers=dict(TOKEN_HEADERS, Authorization=f"Bearer {token}"), timeout=10)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_ingest_refuses_with_503_once_the_file_is_gone(ingest_server, how, tmp_path):
    """H2: ingest used to answer 201 "stored" into the deleted file (lost at restart) and a job
    re-created an empty monitor.db; now it answers 503 + Retry-After (agents spool) and nothing
    opens the path again until the hub restarts."""
    from server_monitor.storage import schema
    from server_monitor.storage.dbguard import DatabaseReplaced

    cfg = ingest_server.config
    token = cfg.get("agent.token")
    assert _post(ingest_server.base_url, token, sample_report("h2-a")).status == 201
    if how == "deleted":
        os.remove(cfg.db_path)
    else:  # e.g. a restore copied over it with mv
        other = tmp_path / "other.db"
        schema.migrate(str(other))
        os.replace(other, cfg.db_path)
    answer = _post(ingest_server.base_url, token, sample_report("h2-b"))
    assert answer.status == 503 and answer.headers["Retry-After"]
    assert f"was {how}" in json.loads(answer.data)["error"]
    with pytest.raises(DatabaseReplaced):
        schema.connect(cfg.db_path)
    if how == "deleted":
        assert not os.path.exists(cfg.db_path)  # no empty database re-created at the path


@pytest.mark.slow
def test_real_agent_spools_while_the_database_is_gone_and_delivers_after_restart(hub_config, tmp_path):
    """H2 end to end: rm monitor.db under a running hub with a real agent reporting every second.
    The hub says so in its log and in /-/health (503, database_replaced), refuses reports with 503,
    the agent spools them, and after a restart every report the agent kept is stored (it used to
    acknowledge them into the deleted file, so they were lost at the restart)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hub = start_hub(hub_config, port, tmp_path)
    agent = start_agent(tmp_path, base, hub_config.get("agent.token"), env={"FAKE_NVSMI_GPUS": "1"})
    http = urllib3.PoolManager(retries=False)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            if sqlite3.connect(hub_config.db_path).execute("SELECT count(*) FROM host_samples").fetchone()[0] >= 2:
                break
            time.sleep(0.3)
        os.remove(hub_config.db_path)
        deadline = time.time() + 30
        while time.time() < deadline and len(list((tmp_path / "spool").glob("*.json.gz"))) < 3:
            time.sleep(0.3)
        assert len(list((tmp_path / "spool").glob("*.json.gz"))) >= 3, agent.log_path.read_text()
        health = http.request("GET", base + "/-/health", timeout=5)
        body = json.loads(health.data)
        assert health.status == 503 and body["ok"] is False and body["database_replaced"] is True
        assert f"{hub_config.db_path} was deleted" in body["error"]
        assert "was deleted while the hub was running" in (tmp_path / "hub.log").read_text()
        assert not os.path.exists(hub_config.db_path)  # nothing re-created an empty file meanwhile
        os.killpg(hub.pid, signal.SIGTERM)
        hub.wait(timeout=15)
        assert "was deleted while the hub was running" in (tmp_path / "hub.log").read_text()

        hub = start_hub(hub_config, port, tmp_path)  # a new, empty monitor.db (said loudly)
        assert "starting with an EMPTY metrics database" in (tmp_path / "hub.log").read_text()
        deadline = time.time() + 30
        while time.time() < deadline and list((tmp_path / "spool").glob("*.json.gz")):
            time.sleep(0.3)
        time.sleep(1.0)
    finally:
        stop(agent)
        if hub.poll() is None:
            os.killpg(hub.pid, signal.SIGTERM)
            hub.wait(timeout=15)
    log = agent.log_path.read_text()
    spooled = re.findall(r"report ([0-9a-f-]{36}) spooled", log)
    assert len(spooled) >= 3
    stored = {r for (r,) in sqlite3.connect(hub_config.db_path).execute("SELECT report_id FROM host_samples")}
    assert list((tmp_path / "spool").glob("*.json.gz")) == []
    assert set(spooled) <= stored, set(spooled) - stored


DATA_PATHS = ["/", "/free", "/accounting", "/servers/1/history", "/admin", "/monitor", "/monitor.json",
              "/monitor/servers", "/monitor/servers.json", "/monitor/gpus.csv", "/monitor/host_samples.json",
              "/monitor.json?sql=select+hostname+from+servers", "/monitor/gpus/1.json", "/api/fleet", "/api/servers",
              "/api/servers/1", "/api/servers/1/history", "/metrics", "/-/metadata.json"]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_data_pages_answer_503_while_the_file_is_replaced(hub_process, hub_config, tmp_path, how):
    """H2: after monitor.db was deleted or replaced under the running hub, the dashboard, Datasette's
    database, table and query pages, their JSON/CSV, the SQL editor, /api/* and /metrics kept serving
    the deleted file's data as if it were current. Now every data page answers 503 (JSON with
    database_replaced for API-style requests, an HTML page saying what to do otherwise) and no old
    data is in any answer; login, logout, /account and static files still work."""
    from http_client import Browserless

    from server_monitor.storage import schema

    base = hub_process.base_url
    token = hub_config.get("agent.token")
    assert _post(base, token, sample_report("h2-ghost-host", gpus=1)).status == 201
    admin = Browserless(base)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    before = {path: admin.request("GET", path) for path in DATA_PATHS}
    assert {p: r.status for p, r in before.items() if r.status != 200} == {}
    assert b"h2-ghost-host" in before["/monitor/servers.json"].data

    if how == "deleted":
        os.remove(hub_config.db_path)
    else:  # a restore copied over it with mv: another file, with other (here: no) servers
        other = tmp_path / "other.db"
        schema.migrate(str(other))
        os.replace(other, hub_config.db_path)
    for path in DATA_PATHS:
        answer = admin.request("GET", path)
        assert answer.status == 503, (path, answer.status)
        assert answer.headers["Retry-After"] == "30" and answer.headers["Cache-Control"] == "no-store"
        assert b"h2-ghost-host" not in answer.data
        text = answer.data.decode()
        assert f"{hub_config.db_path} was {how}" in text
        if path.startswith("/api/") or path in ("/metrics",) or ".json" in path or path.endswith(".csv"):
            body = json.loads(text)
            assert body["status"] == 503 and body["database_replaced"] is True, path
        else:
            assert "The metrics database was replaced or deleted" in text and "Restart the hub" in text
            assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self';")
    # What does not read monitor.db still answers: static files, the account page, logout and login.
    assert admin.request("GET", "/static/dashboard.css").status == 200
    assert admin.request("GET", "/account").status == 200
    assert admin.request("GET", "/monitor/servers", headers={"Accept": "text/html"}).status == 503
    anonymous = Browserless(base)
    assert anonymous.request("GET", "/monitor/servers.json").status == 401  # no session: still "log in" first
    assert anonymous.request("GET", "/login").status == 200
    health = anonymous.request("GET", "/-/health")
    assert health.status == 503 and json.loads(health.data)["database_replaced"] is True
    assert not (how == "deleted" and os.path.exists(hub_config.db_path))  # nothing re-created the file
