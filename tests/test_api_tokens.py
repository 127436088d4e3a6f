"""Users' read-only API tokens for scripts (issue 26 item 4): created on /account and shown once,
stored hashed, expiry and last use, revoked by the user or an admin, sent as
``Authorization: Bearer``, exactly the owner's scope, never a write, rate limited."""

import hashlib
import re
import sqlite3
import time

import pytest
from conftest import make_datasette
from datasette_auth_passwords.utils import hash_password
from reports import sample_report
from test_hub_datasette import Client, ingest

from server_monitor.serving import hub

PASSWORD = "correct horse battery"


def grouped(hostname, groups):
    report = sample_report(hostname, gpus=2, processes=0, state="idle")
    report["groups"] = groups
    return report


def csrf(client, path="/account"):
    return re.search(r'name="csrftoken" value="([^"]+)"', client.get(path).text).group(1)


def create_token(client, name="job launcher", days="30", **kwargs):
    """A token made through the /account form; returns (response, token)."""
    answer = client.post("/account", data={"csrftoken": csrf(client), "action": "create_token", "name": name,
                                           "days": days}, **kwargs)
    found = re.search(r'value="(smu_[A-Za-z0-9_-]{43})"', answer.text)
    return answer, found.group(1) if found else None


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def configure(hub_config, **auth):
    """Rewrite the hub's config.yaml with ``auth.*`` values (before the Datasette is made)."""
    import yaml

    data = yaml.safe_load(open(hub_config.path))
    data["auth"].update(auth)
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)


@pytest.fixture
def lab(hub_config):
    """A hub with a-1, a-2 (host group team-a), b-1 (team-b), c-1 (none); the config admin logged in;
    viewer tina scoped to group team-a, analyst ann (all servers). Returns (admin, ctx, make_client)."""
    from server_monitor.storage import schema

    schema.migrate(hub_config.db_path)
    ds = make_datasette(hub_config)
    admin = Client(ds)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    for name, groups in (("a-1", ["team-a"]), ("a-2", ["team-a"]), ("b-1", ["team-b"]), ("c-1", [])):
        assert ingest(admin, grouped(name, groups), hub_config.get("agent.token")).status_code == 201
    ctx = hub.context(ds)
    weak = hash_password(PASSWORD, iterations=1000)
    ctx.accounts.create_user("tina", weak, "viewer", servers=[], groups=["team-a"])
    ctx.accounts.create_user("ann", weak, "analyst")

    def user(name):
        client = Client(ds)
        assert client.login(name, PASSWORD).status_code == 302
        return client

    return admin, ctx, user


def test_item4_token_created_on_account_shown_once_hashed_at_rest_with_expiry_and_last_use(lab, hub_config):
    admin, ctx, user = lab
    tina = user("tina")
    answer, token = create_token(tina, "job launcher", "30")
    assert answer.status_code == 200 and token, answer.text
    # Shown once: the next /account lists it by name and first characters, never the token itself.
    again = tina.get("/account").text
    assert token not in again and "job launcher" in again and f"smu_{token[4:12]}…" in again
    # auth.db keeps its SHA-256 only: the token is nowhere in the file's rows.
    conn = sqlite3.connect(hub_config.auth_db_path)
    dump = "\n".join(conn.iterdump())
    assert token not in dump and token[4:] not in dump
    row = conn.execute("SELECT token_hash, username, name, created_at, expires_at, last_used_at FROM api_tokens").fetchone()
    assert row[0] == hashlib.sha256(token.encode()).hexdigest() and row[1:3] == ("tina", "job launcher")
    assert row[4] - row[3] == 30 * 86400 and row[5] is None
    assert "never" in again  # last used: never
    # Used once: last_used_at and the client address are recorded and shown.
    assert Client(admin.ds).get("/api/fleet", headers=bearer(token)).status_code == 200
    used = conn.execute("SELECT last_used_at, last_used_from FROM api_tokens").fetchone()
    assert used[0] is not None and abs(used[0] - time.time()) < 60 and used[1]
    assert time.strftime("%Y-%m-%d", time.gmtime(used[0])) in tina.get("/account").text
    # Bad input: a precise 400, nothing stored.
    for name, days, message in (("", "30", "A token name is"), ("x", "12", "Pick an expiry")):
        bad = tina.post("/account", data={"csrftoken": csrf(tina), "action": "create_token", "name": name,
                                          "days": days})
        assert bad.status_code == 400 and message in bad.text
    assert conn.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == 1
    # The admin sees every user's tokens on /admin (never the token).
    page = admin.get("/admin").text
    assert 'id="api-tokens"' in page and "job launcher" in page and "tina" in page and token not in page


def test_item4_scripts_read_json_with_a_bearer_token_and_no_cookie_jar(lab):
    admin, ctx, user = lab
    _, token = create_token(user("ann"), "report")
    script = Client(admin.ds)  # no cookies at all
    assert script.get("/monitor/free_gpus.json?_shape=array").status_code == 401
    fleet = script.get("/api/fleet", headers=bearer(token))
    assert fleet.status_code == 200 and len(fleet.json()["servers"]) == 4
    free = script.get("/monitor/free_gpus.json?_shape=array&count=2", headers=bearer(token))
    assert free.status_code == 200 and {r["server"] for r in free.json()} == {"a-1", "a-2", "b-1", "c-1"}
    hours = script.get("/monitor/gpu_hours.json?_shape=array&by=user", headers=bearer(token))
    assert hours.status_code == 200 and isinstance(hours.json(), list)
    assert script.get("/monitor/gpu_hours.csv?by=server", headers=bearer(token)).status_code == 200
    assert script.cookies == {}  # nothing to keep between calls


def test_item4_revoked_expired_wrong_and_orphaned_tokens_get_401(lab, hub_config):
    admin, ctx, user = lab
    tina = user("tina")
    script = Client(admin.ds)
    _, token = create_token(tina)
    assert script.get("/api/fleet", headers=bearer(token)).status_code == 200
    token_id = ctx.accounts.api_tokens.list("tina")[0]["id"]
    revoked = tina.post("/account", data={"csrftoken": csrf(tina), "action": "revoke_token", "token_id": str(token_id)})
    assert revoked.status_code == 200 and "revoked" in revoked.text
    answer = script.get("/api/fleet", headers=bearer(token))
    assert answer.status_code == 401 and answer.json()["error"] == "API token revoked"
    assert "invalid_token" in answer.headers["www-authenticate"]
    # Expired: made 8 days ago with a 7-day expiry.
    _, old = ctx.accounts.api_tokens.create("tina", "user", "old", days=7, now=time.time() - 8 * 86400)
    assert script.get("/api/fleet", headers=bearer(old)).json()["error"] == "API token expired"
    # Wrong: right shape, unknown; and a truncated one.
    for wrong in ("smu_" + "A" * 43, token[:-1], "smu_"):
        answer = script.get("/monitor/servers.json", headers=bearer(wrong))
        assert answer.status_code == 401 and answer.json()["error"] == "API token unknown", wrong
    # A deleted user's tokens die with it, also for a new user later made with the same name.
    _, live = create_token(tina)
    ctx.accounts.delete_user("tina")
    assert script.get("/api/fleet", headers=bearer(live)).status_code == 401
    ctx.accounts.create_user("tina", hash_password(PASSWORD, iterations=1000), "admin")
    assert script.get("/api/fleet", headers=bearer(live)).json()["error"] == "API token revoked"


def test_item4_another_users_token_cannot_be_revoked_and_admin_revokes_any(lab):
    admin, ctx, user = lab
    tina, ann = user("tina"), user("ann")
    _, token = create_token(tina)
    token_id = ctx.accounts.api_tokens.list("tina")[0]["id"]
    script = Client(admin.ds)
    denied = ann.post("/account", data={"csrftoken": csrf(ann), "action": "revoke_token", "token_id": str(token_id)})
    assert denied.status_code == 403 and "not a live token of yours" in denied.text
    assert script.get("/api/fleet", headers=bearer(token)).status_code == 200
    # Another user's token is that user's, not the caller's: ann's session plus tina's token is tina.
    assert len(ann.get("/api/fleet", headers=bearer(token)).json()["servers"]) == 2
    # Only admins revoke others' tokens, on /admin.
    assert ann.post(f"/admin/api-tokens/{token_id}/revoke", data={"csrftoken": csrf(ann)}).status_code == 403
    assert script.get("/api/fleet", headers=bearer(token)).status_code == 200
    done = admin.post(f"/admin/api-tokens/{token_id}/revoke", data={"csrftoken": csrf(admin, "/admin")})
    assert done.status_code == 302
    assert script.get("/api/fleet", headers=bearer(token)).status_code == 401
    assert ctx.accounts.api_tokens.list("tina")[0]["revoked_by"] == admin.ds._server_monitor.admin_username


def test_item4_group_scoped_viewers_token_never_sees_another_groups_server(lab):
    admin, ctx, user = lab
    _, token = create_token(user("tina"))
    _, admin_token = create_token(admin, "admin exporter")
    script = Client(admin.ds)
    ids = {s["name"]: s["server_id"] for s in admin.get("/monitor/servers.json?_shape=array").json()}

    def seen(tok):
        fleet = script.get("/api/fleet?fresh=1", headers=bearer(tok)).json()
        names = sorted(s["name"] for s in fleet["servers"])
        assert sorted(s["name"] for s in script.get("/api/servers", headers=bearer(tok)).json()) == names
        for query in ("servers", "gpus", "free_gpus", "disks"):
            rows = script.get(f"/monitor/{query}.json?_shape=array", headers=bearer(tok)).json()
            assert {r.get("server", r.get("name")) for r in rows} <= set(names), (query, rows)
        free = script.get("/monitor/free_gpus.json?_shape=array", headers=bearer(tok)).json()
        assert sorted({r["server"] for r in free}) == names
        return names

    assert seen(token) == ["a-1", "a-2"]
    assert seen(admin_token) == ["a-1", "a-2", "b-1", "c-1"]
    assert script.get(f"/api/servers/{ids['b-1']}", headers=bearer(token)).status_code == 404
    assert script.get(f"/monitor/server_history.json?_shape=array&server_id={ids['b-1']}",
                      headers=bearer(token)).json() == []
    # /metrics is for the Prometheus token and admins today: a viewer's token gets 403, an admin's reads it.
    assert script.get("/metrics", headers=bearer(token)).status_code == 403
    metrics = script.get("/metrics", headers=bearer(admin_token))
    assert metrics.status_code == 200 and 'Hostname="b-1"' in metrics.text
    # SQL stays the analysts': a viewer's token cannot run it.
    assert script.get("/monitor.json?sql=select+name+from+servers", headers=bearer(token)).status_code == 403


def test_item4_token_cannot_write_nor_open_admin_or_account_pages(lab):
    admin, ctx, user = lab
    _, token = create_token(admin, "admin's script")
    script = Client(admin.ds)
    ids = {s["name"]: s["server_id"] for s in admin.get("/monitor/servers.json?_shape=array").json()}
    invites = len(ctx.accounts.invites())
    form = {"csrftoken": "x", "role": "admin", "max_uses": "1", "hours": "1", "scope": "all"}
    for method, path, kw in (
            ("POST", "/admin/invites", {"data": form}),
            ("POST", "/monitor/admin_set_server", {"data": {"server_id": str(ids["a-1"]), "status": "maintenance"}}),
            ("POST", "/account", {"data": {"action": "create_token", "name": "more", "days": "7"}}),
            ("DELETE", f"/api/servers/{ids['c-1']}", {}),
            ("POST", "/api/alerts/1/ack", {"json": {}}),
            ("PUT", "/api/fleet", {}),
            ("GET", "/admin", {}), ("GET", "/account", {}), ("GET", "/-/metadata.json", {}),
            ("GET", "/monitor/admin_set_server", {}), ("GET", "/monitor/admin_set_server.json", {}),
            ("GET", "/~6Donitor/admin_set_server.json", {}), ("POST", "/logout", {})):
        answer = script.request(method, path, headers=bearer(token), **kw)
        assert answer.status_code == 403, (method, path, answer.status_code, answer.text[:200])
    assert len(ctx.accounts.invites()) == invites
    assert len(ctx.accounts.api_tokens.list()) == 1
    assert sorted(ids) == sorted(s["name"] for s in admin.get("/monitor/servers.json?_shape=array").json())
    assert [s["status"] for s in admin.get("/monitor/servers.json?_shape=array").json()
            if s["name"] == "a-1"] != ["maintenance"]
    # Reads still work with the same token.
    assert script.get("/api/fleet", headers=bearer(token)).status_code == 200


def test_item4_token_requests_are_rate_limited_per_token(hub_config):
    configure(hub_config, api_token_requests_per_minute=5)
    from server_monitor.core import config as config_mod
    from server_monitor.storage import schema

    cfg = config_mod.load(hub_config.path)
    schema.migrate(cfg.db_path)
    ds = make_datasette(cfg)
    ctx = hub.context(ds)
    _, first = ctx.accounts.api_tokens.create("admin", "config", "busy script")
    _, second = ctx.accounts.api_tokens.create("admin", "config", "other script")
    script = Client(ds)
    answers = [script.get("/monitor/servers.json", headers=bearer(first)).status_code for _ in range(6)]
    assert answers == [200] * 5 + [429]
    limited = script.get("/monitor/servers.json", headers=bearer(first))
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert "too many requests" in limited.json()["error"]
    assert script.get("/monitor/servers.json", headers=bearer(second)).status_code == 200  # per token
    # Bad config values are refused with one line naming the key.
    configure(hub_config, api_token_requests_per_minute=0)
    with pytest.raises(config_mod.ConfigError, match=r"auth\.api_token_requests_per_minute must be an integer >= 1"):
        config_mod.load(hub_config.path)


def test_item4_token_route_matrix_reads_like_its_owner_and_never_opens_admin_pages(datasette, hub_config):
    """Every registered route (tests/test_access.py MATRIX) with a token of each role: the owner's
    session answer, except admin, account, login/logout/register and /-/ pages: 403 for any token."""
    from test_access import MATRIX, ROLES, build_hub

    refused = ("/admin", "/account", "/-/", "/logout", "/login", "/register", "/monitor/admin_", "/_internal")

    clients = build_hub(datasette, hub_config)
    ctx = clients["ctx"]
    owners = {"viewer": ("vera", "user"), "scoped": ("scott", "user"), "analyst": ("ana", "user"),
              "admin": (ctx.admin_username, "config")}
    script = Client(datasette)
    mismatches = []
    for role, (name, source) in owners.items():
        _, token = ctx.accounts.api_tokens.create(name, source, "matrix")
        for path, expected in MATRIX.items():
            want = 403 if path.startswith(refused) and path != "/-/health" \
                else expected[ROLES.index(role)]
            got = script.get(path, headers=bearer(token)).status_code
            if got != want:
                mismatches.append(f"{role:8} {path}: got {got}, want {want}")
    assert mismatches == []


def test_item4_last_used_address_behind_a_trusted_proxy_is_the_client_it_saw(hub_config):
    configure(hub_config, trusted_proxy_header="x-forwarded-for")
    from server_monitor.core import config as config_mod
    from server_monitor.storage import schema

    cfg = config_mod.load(hub_config.path)
    schema.migrate(cfg.db_path)
    ds = make_datasette(cfg)
    ctx = hub.context(ds)
    _, token = ctx.accounts.api_tokens.create("admin", "config", "behind nginx")
    answer = Client(ds).get("/api/fleet", headers=dict(bearer(token), **{"X-Forwarded-For": "6.6.6.6, 10.1.2.3"}))
    assert answer.status_code == 200
    assert ctx.accounts.api_tokens.list()[0]["last_used_from"] == "10.1.2.3"


def test_item4_group_scoped_viewers_token_gets_gpu_hours_of_its_servers_only(hub_config):
    from conftest import file_connection

    from server_monitor.storage import schema
    from server_monitor.storage.contract import validate_report
    from server_monitor.storage.rollup import Maintenance
    from server_monitor.storage.store import store_report

    schema.migrate(hub_config.db_path)
    conn = file_connection(hub_config.db_path)
    t0 = (int(time.time()) // 3600 - 3) * 3600
    for i in range(120):  # one hour, both GPUs of each host held (processes of user0 and user1)
        ts = t0 + i * 30
        for name, group in (("a-1", "team-a"), ("b-1", "team-b")):
            report = sample_report(name, gpus=2, processes=2, sample_time=ts)
            report["groups"], report["sent_at"] = [group], ts
            store_report(conn, validate_report(report), ts + 1)
    conn.close()
    Maintenance(hub_config.db_path, now=lambda: t0 + 3 * 3600, pause=0).run_once()
    ds = make_datasette(hub_config)
    ctx = hub.context(ds)
    ctx.accounts.create_user("tina", hash_password(PASSWORD, iterations=1000), "viewer", servers=[], groups=["team-a"])
    _, viewer = ctx.accounts.api_tokens.create("tina", "user", "report")
    _, admin = ctx.accounts.api_tokens.create(ctx.admin_username, "config", "report")
    script = Client(ds)

    def hours(token, query="gpu_hours"):
        answer = script.get(f"/monitor/{query}.json?_shape=array&by=server&since={t0}&until={t0 + 2 * 3600}",
                            headers=bearer(token))
        assert answer.status_code == 200, answer.text
        return {row["owner"]: row["gpu_hours"] for row in answer.json()}

    assert hours(admin) == pytest.approx({"a-1": 2.0, "b-1": 2.0}, abs=0.01)
    assert hours(viewer) == pytest.approx({"a-1": 2.0}, abs=0.01)
    assert set(hours(viewer, "gpu_hours_daily")) == {"a-1"}



def test_F10_account_shows_a_group_scoped_viewer_by_group_and_names_not_raw_ids(lab, hub_config):
    """Newcomer finding 10: /account listed a group-scoped viewer's scope as the raw server ids
    the group expands to. Now: the host groups as stored, how many servers that is now, and
    servers chosen one by one by name (the /admin lists' scope_summary)."""
    admin, ctx, user = lab
    tina = user("tina")
    page = tina.get("/account").text
    assert re.search(r'<span id="account-scope">([^<]*)</span>', page).group(1) == "host group team-a (2 servers now)"
    assert "servers: 1" not in page
    b1 = sqlite3.connect(hub_config.db_path).execute("SELECT id FROM servers WHERE hostname = 'b-1'").fetchone()[0]
    ctx.accounts.update_user("tina", role="viewer", servers=[b1], groups=["team-a"])
    page = tina.get("/account").text
    assert re.search(r'<span id="account-scope">([^<]*)</span>', page).group(1) == \
        "host group team-a + 1 server: b-1 (3 servers now)"


def test_F9_account_try_it_line_uses_the_hubs_real_address(lab, hub_config):
    """Newcomer finding 9: the "Try it" line under a new token said http://HUB:5100. Now the
    request's own address, or server.public_url when it is set (the Host header can be forged)."""
    admin, ctx, user = lab
    tina = user("tina")
    answer, token = create_token(tina)
    line = re.search(r"<p>Try it: <code>(.*?)</code></p>", answer.text).group(1)
    assert "HUB" not in line and "http://localhost/monitor/free_gpus.json?_shape=array" in line
    hub.context(admin.ds).config.data["server"]["public_url"] = "https://monitor.example.org/"
    answer, token = create_token(tina, "second", headers={"Host": "evil.example"})
    line = re.search(r"<p>Try it: <code>(.*?)</code></p>", answer.text).group(1)
    assert "https://monitor.example.org/monitor/free_gpus.json?_shape=array" in line
