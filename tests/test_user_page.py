"""Issue 26 item 6: the per-user page through the real hub over HTTP: what a user holds now, their
GPU-hours and idle GPU-hours per day, their jobs; viewer scope; hostile user names (the text rule's
own examples) that must be escaped everywhere and still resolve."""

import json
import re
import time
from urllib.parse import quote

import pytest
from browser import push
from datasette_auth_passwords.utils import hash_password
from http_client import Browserless
from reports import sample_report

from server_monitor.auth.accounts import Accounts
from server_monitor.serving.web import user_path
from server_monitor.storage.rollup import Maintenance

PASSWORD = "correct horse battery"
HOUR = 3600
# Holder names as agents send them: markup, URL syntax, dot segments, other scripts with ZWJ, a
# tab (kept by the text rule), and a bidi override the hub replaces by U+FFFD (tests/test_textrule.py).
HOSTILE = ["<script>alert(1)</script>", "a/b?c=1#d%2F&e", "..", ".", "\u0432\u0430\u043d\u044f\u200d\U0001f642",
           "tab\there", "x\u202ey"]
STORED = {"x\u202ey": "x\ufffdy"}


def _report(host, t, holders, util):
    """One report of ``host`` at ``t`` with one process per (gpu index, user, container) in ``holders``;
    GPU i runs at ``util[i]`` % utilization.gpu."""
    report = sample_report(host, gpus=len(util), processes=0, sample_time=t)
    report["interval"] = HOUR
    for gpu, value in zip(report["gpus"], util):
        gpu["utilization.gpu"] = value
    report["processes"] = [
        {"gpu_uuid": report["gpus"][gpu]["uuid"], "pid": 4000 + n, "process_name": "python train.py",
         "used_gpu_memory": 8192, "user": user, "uid": 1000 + n, "container": container, "container_kind": "lxc"}
        for n, (gpu, user, container) in enumerate(holders)]
    return report


def _fill(hub, config):
    """alpha: alice holds GPU 0 idle (0 %) and GPU 1 busy (100 %) in container "job 42", hourly for
    the last 3 hours and now; beta: bob holds its GPU 0, and every hostile name holds beta's GPU 1.
    Then the hub's own maintenance pass computes the GPU-hours."""
    now = int(time.time())
    for k in range(3, -1, -1):
        t = now - k * HOUR
        alpha = _report("alpha", t, [(0, "alice", "job 42"), (1, "alice", "job 42")], [0, 100])
        beta = _report("beta", t, [(0, "bob", "lab-b")] + [(1, name, "evil") for name in HOSTILE], [50, 50])
        alpha["groups"], beta["groups"] = ["cluster-a"], ["cluster-b"]  # host groups, as the agent's groups: sends
        push(hub, config, alpha)
        push(hub, config, beta)
    Maintenance(config.db_path, pause=0).run_once()


def _client(hub, username, password):
    client = Browserless(hub.base_url)
    assert client.login(username, password).status == 302
    return client


def _rows(client, query, **params):
    response = client.request("GET", f"/monitor/{query}.json?_shape=array&" +
                              "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items()))
    assert response.status == 200, response.data[:300]
    return json.loads(response.data)


def test_item6_user_page_shows_held_gpus_daily_hours_idle_hours_and_jobs(hub_process, hub_config):
    _fill(hub_process, hub_config)
    admin = _client(hub_process, hub_config.get("auth.username"), hub_config.password)
    page = admin.request("GET", "/users/alice")
    assert page.status == 200 and 'data-user="alice"' in page.data.decode()
    assert "/static/user.js" in page.data.decode()
    gpus = _rows(admin, "user_gpus", user="alice")
    assert [(g["server"], g["gpu_index"], g["idle"], g["containers"], g["held_mib"]) for g in gpus] == [
        ("alpha", 0, 1, "job 42", 8192), ("alpha", 1, 0, "job 42", 8192)]
    daily = _rows(admin, "user_gpu_hours_daily", user="alice")
    # 4 hourly reports x 2 GPUs, each counted one interval (the newest provisionally): 8 GPU-hours,
    # of which GPU 0's 4 at 0 % are idle.
    assert round(sum(d["gpu_hours"] for d in daily), 3) == 8.0
    assert round(sum(d["idle_gpu_hours"] for d in daily), 3) == 4.0
    jobs = _rows(admin, "user_jobs", user="alice")
    assert [(j["container"], j["server"], j["gpu_hours"], j["idle_gpu_hours"], j["gpus"]) for j in jobs] == [
        ("job 42", "alpha", 8.0, 4.0, 2)]
    # Another user's holdings never leak into alice's page.
    assert {g["server"] for g in _rows(admin, "user_gpus", user="bob")} == {"beta"}
    assert _rows(admin, "user_gpus", user="nobody") == []


def test_item6_scoped_viewer_never_sees_another_groups_server_on_a_user_page(hub_process, hub_config):
    """Viewers scoped to beta — by server, and by its host group cluster-b — open alice's page: none of
    alpha's GPUs, hours or jobs; bob's (on beta) show."""
    _fill(hub_process, hub_config)
    accounts = Accounts(hub_config.auth_db_path)
    admin = _client(hub_process, hub_config.get("auth.username"), hub_config.password)
    servers = {s["name"]: s["server_id"] for s in _rows(admin, "servers")}
    accounts.create_user("sally", hash_password(PASSWORD, iterations=1000), "viewer", servers=[servers["beta"]])
    accounts.create_user("gina", hash_password(PASSWORD, iterations=1000), "viewer", servers=[],
                         groups=["cluster-b"])
    for name in ("sally", "gina"):
        scoped = _client(hub_process, name, PASSWORD)
        assert scoped.request("GET", "/users/alice").status == 200
        for query in ("user_gpus", "user_gpu_hours_daily", "user_jobs"):
            assert _rows(scoped, query, user="alice") == [], (name, query)
            assert _rows(admin, query, user="alice") != [], query  # the rows exist: the scope hid them
        assert {g["server"] for g in _rows(scoped, "user_gpus", user="bob")} == {"beta"}, name
        assert sum(d["gpu_hours"] for d in _rows(scoped, "user_gpu_hours_daily", user="bob")) == pytest.approx(4.0)
        assert {j["server"] for j in _rows(scoped, "user_jobs", user="bob")} == {"beta"}, name
    # Processes hidden: the page says so and the queries answer nothing.
    accounts.create_user("pia", hash_password(PASSWORD, iterations=1000), "viewer", see_processes=False)
    hidden = _client(hub_process, "pia", PASSWORD)
    text = hidden.request("GET", "/users/bob").data.decode()
    assert "may not see\nprocesses" in text and "user.js" not in text
    assert _rows(hidden, "user_gpus", user="bob") == [] and _rows(hidden, "user_jobs", user="bob") == []


def test_item6_hostile_user_names_are_escaped_and_resolve(hub_process, hub_config):
    """Each hostile name: its page (by the same URL the UI builds) answers 200 with the name only as
    escaped text, and its queries find exactly its own holdings."""
    _fill(hub_process, hub_config)
    admin = _client(hub_process, hub_config.get("auth.username"), hub_config.password)
    stored = {r["user"] for r in _rows(admin, "usage_by_user")}
    for name in HOSTILE:
        name = STORED.get(name, name)
        assert name in stored, (name, stored)
        # The path the nudges' and digests' links use (web.user_path, the rule of common.js userHref():
        # /users/<percent-encoded>, dot segments in the query string).
        page = admin.request("GET", user_path(name))
        assert page.status == 200, (name, page.status)
        html = page.data.decode()
        assert "<script>alert(1)</script>" not in html
        heading = re.search(r'<h1 id="user-heading" data-user="([^"]*)">', html).group(1)
        import html as html_mod
        assert html_mod.unescape(heading) == name
        gpus = _rows(admin, "user_gpus", user=name)
        assert [(g["server"], g["gpu_index"], g["containers"]) for g in gpus] == [("beta", 1, "evil")], name
        assert _rows(admin, "user_jobs", user=name)[0]["container"] == "evil"
    # Names the page cannot take: a clear 400, never a 500.
    assert admin.request("GET", "/users/%FF%FE").status == 400
    assert admin.request("GET", "/users/" + "x" * 257).status == 400
    assert admin.request("GET", "/users?name=").status == 400


def test_item6_upgrade_to_27_fills_the_user_days_from_existing_accounting(tmp_path, monkeypatch):
    """A hub upgraded with months of GPU-hours shows them on the per-user page at once: migration 27
    sums the gpu_usage_1h rows of the last 366 days into gpu_usage_user_1d (idle hours unknown before: 0)."""
    from server_monitor.storage import schema

    path = str(tmp_path / "monitor.db")
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:26])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 26)
    schema.migrate(path)
    conn = schema.connect(path)
    day = int(time.time()) // 86400 * 86400 - 40 * 86400
    conn.executemany("INSERT INTO gpu_usage_1h (hour, server_id, gpu_id, user, container, gpu_seconds, vram_mib_seconds,"
                     " util_seconds, util_known_seconds, held_seconds) VALUES (?, 1, ?, ?, 'job 7', 3600, 0, 0, 0, 3600)",
                     [(day + h * 3600, gpu, user) for h in range(30) for gpu in (1, 2) for user in ("alice", "")]
                     + [(day - 400 * 86400, 1, "alice")])  # older than the page can show: not summed
    conn.close()
    monkeypatch.undo()
    assert schema.migrate(path) == 26
    rows = schema.connect(path).execute(
        "SELECT user, day, container, gpu_seconds, idle_seconds, gpus, first_hour, last_hour FROM gpu_usage_user_1d"
        " ORDER BY day").fetchall()
    assert rows == [("alice", day, "job 7", 24 * 2 * 3600.0, 0.0, 2, day, day + 23 * 3600),
                    ("alice", day + 86400, "job 7", 6 * 2 * 3600.0, 0.0, 2, day + 86400, day + 29 * 3600)]
