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
        expected = ["GPU_A2: the name looks like gpu-a2, the name of server #1 (accept it on /admin if expected)",
                    "gpu-a2: the host name changed from gpu-a (same machine id) (accept it on /admin if expected)",
                    "gpu-b: a second server (another machine id) reports the name of server #2"
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
