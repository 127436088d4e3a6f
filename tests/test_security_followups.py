"""Regression tests for the last findings of issue 14, each through the real hub process
(``python -m server_monitor serve``): L10 host identity changes (security review), H2 data pages
while monitor.db is replaced (newcomer review), L1 ``server-monitor sessions`` (security review).
docs/security.md and docs/reliability.md list them."""

import json
import os
import re
import sqlite3
import time

import pytest
import urllib3
from conftest import free_port, sample_report
from http_client import Browserless
from test_agent_process import start_hub

HTTP = urllib3.PoolManager(retries=False)


def _set_config(hub_config, **values):
    import yaml

    data = yaml.safe_load(open(hub_config.path))
    for dotted, value in values.items():
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)


def _post(base, token, report):
    response = HTTP.request("POST", base + "/api/report", body=json.dumps(report).encode(), timeout=10,
                            headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return response.status


def _stop(proc):
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def _csrf(client, path):
    page = client.request("GET", path).data.decode()
    return re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)


def _problems(admin, rule):
    fleet = json.loads(admin.request("GET", "/api/fleet").data)
    return sorted(p["message"] for p in fleet["problems"] if p["rule"] == rule)


def _wait_for(what, timeout=20):
    deadline = time.time() + timeout
    while True:
        value = what()
        if value or time.time() > deadline:
            return value
        time.sleep(0.3)


@pytest.mark.slow
def test_l10_changed_or_look_alike_host_names_are_flagged_to_the_admin(hub_config, tmp_path):
    """L10: with the shared token any agent may send any host name. The hub used to store a
    changed name (same machine id), a second server taking an existing name, or a look-alike name
    without a word. Now each is a host_identity_events row, a "host name" problem on the dashboard
    (host_identity alert) and a line on /admin until an admin accepts it; every report is stored."""
    _set_config(hub_config, **{"alerts.interval_s": 1})
    port = free_port()
    hub = start_hub(hub_config, port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    token = hub_config.get("agent.token")
    try:
        a = sample_report("gpu-a", gpus=1, processes=0, machine_id="m-aaaa")
        assert _post(base, token, a) == 201
        assert _post(base, token, sample_report("gpu-b", gpus=1, processes=0, machine_id="m-bbbb")) == 201
        quiet = sample_report("gpu-a", gpus=1, processes=0, machine_id="m-aaaa")  # same name again: nothing
        assert _post(base, token, quiet) == 201
        renamed = sample_report("gpu-a2", gpus=1, processes=0, machine_id="m-aaaa")
        assert _post(base, token, renamed) == 201
        replay = sample_report("gpu-a", gpus=1, processes=0, machine_id="m-aaaa",
                               sample_time=a["sample_time"] - 60)  # a spooled report from before the rename
        assert _post(base, token, replay) == 201
        assert _post(base, token, sample_report("gpu-b", gpus=1, processes=0, machine_id="m-cccc")) == 201
        assert _post(base, token, sample_report("GPU_A2", gpus=1, processes=0, machine_id="m-dddd")) == 201

        db = sqlite3.connect(hub_config.db_path)
        events = db.execute("SELECT server_id, kind, hostname, previous, other_server_id FROM host_identity_events"
                            " ORDER BY id").fetchall()
        assert events == [(1, "renamed", "gpu-a2", "gpu-a", None),
                          (3, "name_taken", "gpu-b", "gpu-b", 2),
                          (4, "look_alike", "GPU_A2", "gpu-a2", 1)]
        # Nothing refused, nothing lost: every report is in the history of its own server.
        assert db.execute("SELECT server_id, count(*) FROM host_samples GROUP BY server_id").fetchall() == [
            (1, 4), (2, 1), (3, 1), (4, 1)]
        assert db.execute("SELECT hostname FROM servers WHERE id = 1").fetchone() == ("gpu-a2",)

        admin = Browserless(base)
        assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
        expected = ["GPU_A2: the name looks like another server's name (accept it on /admin if expected)",
                    "gpu-a2: the host name changed from gpu-a (same machine id) (accept it on /admin if expected)",
                    "gpu-b: a second server (another machine id) reports this name"
                    " (accept it on /admin if expected)"]
        assert _wait_for(lambda: _problems(admin, "host_identity") == expected or None), _problems(admin, "host_identity")
        page = admin.request("GET", "/admin").data.decode()
        section = page[page.index('id="identity"'):page.index('id="gpus"')]
        assert "the host name changed from gpu-a (same machine id)" in section
        assert section.count('action="/monitor/admin_accept_identity"') == 4  # three events + "accept all"

        # Accepting the rename ends that problem only; the row stays with who accepted it.
        response = admin.request("POST", "/monitor/admin_accept_identity", encode_multipart=False,
                                 fields={"csrftoken": _csrf(admin, "/admin"), "event_id": "1"})
        assert response.status == 302 and response.headers["Location"].startswith("/admin#identity")
        assert _wait_for(lambda: len(_problems(admin, "host_identity")) == 2 or None)
        assert not any("changed from" in m for m in _problems(admin, "host_identity"))
        assert db.execute("SELECT accepted_by FROM host_identity_events WHERE id = 1").fetchone() == ("admin",)
        # A viewer-level actor cannot read or accept them (admin canned queries).
        anonymous = Browserless(base)
        assert anonymous.request("GET", "/monitor/host_identity_events.json").status == 401
    finally:
        _stop(hub)


def _cli(hub_config, *args):
    import subprocess
    import sys

    from conftest import ROOT

    return subprocess.run([sys.executable, "-m", "server_monitor", "sessions", *args, "-c", hub_config.path],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_l1_sessions_cli_lists_and_revokes_sessions_of_a_running_hub(hub_process, hub_config):
    """L1: an admin had no way to end sessions (a leaked cookie stayed valid for session_hours)
    short of deleting the user or changing the admin password. `server-monitor sessions list`
    shows who is logged in (user, created, last seen; never a session id or its hash in full) and
    `server-monitor sessions revoke USER` / `--all` end them: the next request of a revoked
    session is sent to /login (302) or refused (401), on the running hub, through the real CLI."""
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.auth.accounts import Accounts

    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("vera", hash_password("correct horse battery"), "viewer")
    base = hub_process.base_url
    admin, vera, vera2 = Browserless(base), Browserless(base), Browserless(base)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    assert vera.login("vera", "correct horse battery").status == 302
    assert vera2.login("vera", "correct horse battery").status == 302
    for client in (admin, vera, vera2):
        assert client.request("GET", "/api/fleet").status == 200

    listed = _cli(hub_config, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ref", "username", "source", "created"]
    rows = [line.split() for line in lines[1:]]
    assert sorted(r[1] for r in rows) == ["admin", "vera", "vera"] and listed.stderr.strip() == "3 live sessions"
    assert all(r[2] in ("config", "user") and re.fullmatch(r"\d{4}-\d\d-\d\d", r[3]) for r in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", r[5]) for r in rows)  # last seen: the requests above
    stored = [h for (h,) in accounts.connection().execute("SELECT id_hash FROM sessions")]
    raw_ids = [c for client in (admin, vera, vera2) for c in client.cookies.values()]
    assert not any(secret in listed.stdout for secret in stored + raw_ids)
    assert not re.search(r"[A-Za-z0-9_-]{20,}", listed.stdout)  # nothing id-like at all

    unknown = _cli(hub_config, "revoke", "nobody")
    assert unknown.returncode == 1 and "no user 'nobody'" in unknown.stderr
    assert _cli(hub_config, "revoke").returncode == 2  # neither a user nor --all: usage error

    revoked = _cli(hub_config, "revoke", "vera")
    assert revoked.returncode == 0 and revoked.stdout.strip() == "ended 2 sessions of vera"
    for client in (vera, vera2):
        page = client.request("GET", "/")
        assert page.status == 302 and page.headers["Location"].startswith("/login")
        assert client.request("GET", "/api/fleet").status == 401
    assert admin.request("GET", "/api/fleet").status == 200  # other users keep theirs

    everyone = _cli(hub_config, "revoke", "--all")
    assert everyone.returncode == 0 and everyone.stdout.strip() == "ended 1 session (all users)"
    assert admin.request("GET", "/admin").status == 302
    assert _cli(hub_config, "list").stderr.strip() == "0 live sessions"
