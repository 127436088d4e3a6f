"""Access control: a crawler over every registered route as anonymous, viewer, scoped
viewer, analyst and admin; login rate limit; invites; changes that apply at once."""

import re

import pytest
from datasette_auth_passwords.utils import hash_password
from reports import sample_report
from test_hub_datasette import Client, ingest

ROLES = ("anon", "viewer", "scoped", "analyst", "admin")
PASSWORD = "correct horse battery"

# path: statuses for (anon, viewer, scoped viewer [server 2 only], analyst, admin).
# 302 for anonymous pages is the redirect to /login; 401 the JSON refusal.
MATRIX = {
    "/": (302, 200, 200, 200, 200),
    "/.json": (401, 200, 200, 200, 200),
    "/favicon.ico": (200, 200, 200, 200, 200),
    "/static/dashboard.js": (200, 200, 200, 200, 200),
    "/-/static/app.css": (200, 200, 200, 200, 200),
    "/login": (200, 302, 302, 302, 302),
    "/register": (404, 404, 404, 404, 404),
    "/-/register": (404, 404, 404, 404, 404),
    "/account": (302, 200, 200, 200, 200),
    "/logout": (302, 200, 200, 200, 200),
    "/-/logout": (302, 200, 200, 200, 200),
    "/-/login": (302, 302, 302, 302, 302),
    "/-/password-tool": (302, 403, 403, 403, 404),
    "/servers/1/history": (302, 200, 200, 200, 200),
    "/free": (302, 200, 200, 200, 200),
    "/accounting": (302, 200, 200, 200, 200),
    "/users/user0": (302, 200, 200, 200, 200),
    "/users?name=..": (302, 200, 200, 200, 200),
    "/admin": (302, 403, 403, 403, 200),
    "/admin/invites": (302, 403, 403, 403, 405),
    "/admin/invites/1/revoke": (302, 403, 403, 403, 405),
    "/admin/users/someone": (302, 403, 403, 403, 405),
    "/admin/servers/1/delete": (302, 403, 403, 403, 405),
    "/admin/tokens": (302, 403, 403, 403, 405),
    "/admin/api-tokens/1/revoke": (302, 403, 403, 403, 405),
    "/admin/gpus": (302, 403, 403, 403, 405),
    "/admin/groups": (302, 403, 403, 403, 405),
    "/admin/notify/targets": (302, 403, 403, 403, 405),
    "/admin/notify/test": (302, 403, 403, 403, 405),
    "/admin/notify/contacts": (302, 403, 403, 403, 405),
    "/account/contact": (302, 405, 405, 405, 405),
    "/admin/scope-options": (302, 403, 403, 403, 200),
    "/admin/rules": (302, 403, 403, 403, 200),
    "/admin/rules/1": (302, 403, 403, 403, 405),
    "/admin/rules/builtin/gpu_temperature": (302, 403, 403, 403, 405),
    "/api/servers": (401, 200, 200, 200, 200),
    "/api/servers/1": (401, 200, 404, 200, 200),
    "/api/servers/1/history": (401, 200, 404, 200, 200),
    "/api/anything": (401, 404, 404, 404, 404),
    "/api/fleet": (401, 200, 200, 200, 200),
    "/api/alerts/1/ack": (401, 405, 405, 405, 405),
    "/api/silences": (401, 405, 405, 405, 405),
    "/api/silences/1": (401, 405, 405, 405, 405),
    "/monitor/gpus.csv": (401, 200, 200, 200, 200),
    "/metrics": (401, 403, 403, 403, 200),
    "/metrics/servers/1": (401, 403, 403, 403, 200),
    "/metrics/targets": (401, 403, 403, 403, 200),
    "/-/health": (200, 200, 200, 200, 200),
    "/monitor": (302, 403, 403, 200, 200),
    "/monitor.json": (401, 403, 403, 200, 200),
    "/monitor.db": (302, 403, 403, 403, 403),  # no download of a live database; use backups
    "/monitor?sql=select+1": (302, 403, 403, 200, 200),
    "/monitor.json?sql=select+1": (401, 403, 403, 200, 200),
    "/monitor/host_samples": (302, 403, 403, 200, 200),
    "/monitor/host_samples.json": (401, 403, 403, 200, 200),
    "/monitor/gpus/1": (302, 403, 403, 200, 200),
    "/monitor/gpus/1.json": (401, 403, 403, 200, 200),
    "/monitor/admin_set_server": (302, 403, 403, 403, 200),
    "/monitor/admin_set_server.json": (401, 403, 403, 403, 200),
    "/_internal": (302, 403, 403, 403, 200),
    "/_internal.json": (401, 403, 403, 403, 200),
    "/:memory:": (302, 301, 301, 301, 301),
    "/-/metadata": (302, 403, 403, 403, 200),
    "/-/metadata.json": (401, 403, 403, 403, 200),
    "/-/versions.json": (401, 403, 403, 403, 200),
    "/-/plugins.json": (401, 403, 403, 403, 200),
    "/-/settings.json": (401, 403, 403, 403, 200),
    "/-/config": (302, 403, 403, 403, 301),
    "/-/config.json": (401, 403, 403, 403, 301),
    "/-/threads.json": (401, 403, 403, 403, 200),
    "/-/databases.json": (401, 403, 403, 403, 200),
    "/-/actor.json": (401, 403, 403, 403, 200),
    "/-/auth-token": (302, 403, 403, 403, 403),
    "/-/permissions": (302, 403, 403, 403, 200),
    "/-/messages": (302, 403, 403, 403, 200),
    "/-/allow-debug": (302, 403, 403, 403, 200),
    "/-/patterns": (302, 403, 403, 403, 200),
}
# Every canned query except the admin ones: open to all logged-in users, HTML and JSON.
PUBLIC_QUERIES = ["servers", "gpus", "processes", "disks", "server_history", "gpu_history", "usage_by_user",
                  "containers", "probes", "announcements", "free_gpus", "idle_holders", "gpu_hours",
                  "alerts_active", "alerts_history", "fleet_servers", "fleet_gpus", "fleet_processes", "silences",
                  "gpu_holders_history", "server_alerts", "gpu_hours_daily", "xid_events", "fleet_mig",
                  "server_xids", "disk_history", "temperature_history", "user_gpus", "user_gpu_hours_daily",
                  "user_jobs", "host_groups"]
for name in PUBLIC_QUERIES:
    MATRIX[f"/monitor/{name}"] = (302, 200, 200, 200, 200)
    MATRIX[f"/monitor/{name}.json"] = (401, 200, 200, 200, 200)


@pytest.fixture
def hub(datasette, hub_config):
    """Two servers, and a client logged in for each role."""
    return build_hub(datasette, hub_config)


def build_hub(datasette, hub_config):
    """The ``hub`` fixture's value (also used by tests/test_attacks.py)."""
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    for name in ("one", "two"):
        assert ingest(admin, sample_report(name, gpus=1, processes=1), hub_config.get("agent.token")).status_code == 201
    ctx = __import__("server_monitor.serving.hub", fromlist=["context"]).context(datasette)
    password_hash = hash_password(PASSWORD, iterations=1000)
    ctx.accounts.create_user("vera", password_hash, "viewer")
    ctx.accounts.create_user("scott", password_hash, "viewer", servers=[2], see_processes=False)
    ctx.accounts.create_user("ana", password_hash, "analyst")
    clients = {"anon": Client(datasette), "admin": admin}
    for role, name in (("viewer", "vera"), ("scoped", "scott"), ("analyst", "ana")):
        clients[role] = Client(datasette)
        assert clients[role].login(name, PASSWORD).status_code == 302, role
    clients["ctx"] = ctx
    return clients


def test_every_route_is_in_the_matrix(datasette):
    routes = [pattern for pattern, _ in datasette._routes()]
    uncovered = [p.pattern for p in routes
                 if not any(p.match(path.split("?")[0]) for path in MATRIX)]
    assert uncovered == []


def test_route_matrix(hub):
    mismatches = []
    for path, expected in MATRIX.items():
        for role, want in zip(ROLES, expected):
            got = hub[role].get(path).status_code
            if got != want:
                mismatches.append(f"{role:8} {path}: got {got}, want {want}")
    assert mismatches == [], "\n".join(mismatches)


def test_scoped_viewer_sees_only_its_servers_and_no_processes(hub):
    scoped, viewer = hub["scoped"], hub["viewer"]
    assert [s["name"] for s in scoped.get("/monitor/servers.json?_shape=array").json()] == ["two"]
    assert {g["server"] for g in scoped.get("/monitor/gpus.json?_shape=array").json()} == {"two"}
    assert scoped.get("/monitor/processes.json?_shape=array").json() == []
    assert scoped.get("/monitor/usage_by_user.json?_shape=array").json() == []
    assert scoped.get("/monitor/server_history.json?_shape=array&server_id=1&hours=24").json() == []
    assert scoped.get("/monitor/gpu_history.json?_shape=array&server_id=1&hours=24").json() == []
    assert scoped.get("/monitor/server_alerts.json?_shape=array&server_id=1&hours=24").json() == []
    # Holders are processes: not even for its own server without see_processes.
    assert scoped.get("/monitor/gpu_holders_history.json?_shape=array&server_id=2&hours=24").json() == []
    assert len(viewer.get("/monitor/gpu_holders_history.json?_shape=array&server_id=1&hours=24").json()) == 1
    assert scoped.get("/monitor/gpu_hours_daily.json?_shape=array").json() == []
    assert [s["name"] for s in scoped.get("/api/servers").json()] == ["two"]
    assert scoped.get("/api/servers").json()[0]["gpus"][0]["processes"] == []
    # Magic parameters cannot be overridden from the query string.
    assert scoped.get("/monitor/servers.json?_shape=array&_scope_all=1").json()[0]["name"] == "two"
    assert len(viewer.get("/monitor/processes.json?_shape=array").json()) == 2


def test_server_xids_follow_the_viewer_scope(hub, hub_config):
    """The history page's XID list (server_xids) shows a scoped viewer only its servers' XIDs,
    and their pid / process name only with see_processes."""
    import time

    now = time.time()
    for name in ("one", "two"):
        report = sample_report(name, gpus=1, processes=0, sample_time=now)
        report["kmsg_state"] = "ok"
        report["xid_events"] = [{"xid": 79, "pci.bus_id": report["gpus"][0]["pci.bus_id"], "name": "GPU has fallen off the bus",
                                 "seq": 7, "usec": 1000, "time": now - 3600, "pid": 4242, "process_name": "python",
                                 "message": f"NVRM: Xid (PCI:0000:18:00): 79, pid=4242, {name}"}]
        assert ingest(hub["admin"], report, hub_config.get("agent.token")).status_code == 201
    scoped, viewer = hub["scoped"], hub["viewer"]
    assert scoped.get("/monitor/server_xids.json?_shape=array&server_id=1&hours=24").json() == []
    own = scoped.get("/monitor/server_xids.json?_shape=array&server_id=2&hours=24").json()
    assert [(e["xid"], e["gpu_index"], e["message"].endswith("two"), e["pid"]) for e in own] == [(79, 0, True, None)]
    seen = viewer.get("/monitor/server_xids.json?_shape=array&server_id=1&hours=24").json()
    assert [(e["xid"], e["name"], e["pid"], e["process_name"]) for e in seen] == [(79, "GPU has fallen off the bus", 4242, "python")]
    assert viewer.get("/monitor/server_xids.json?_shape=array&server_id=1&hours=0.5").json() == []  # an hour ago


def test_brute_force_gets_only_five_password_checks(hub, hub_config):
    attacker = hub["anon"]
    statuses = [attacker.login("vera", f"guess-{i}").status_code for i in range(100)]
    assert statuses.count(401) == 5  # checked and wrong
    assert statuses.count(429) == 95  # refused before any check
    # Even the right password is refused while the window lasts (for this user).
    assert attacker.login("vera", PASSWORD).status_code == 429
    page = attacker.get("/login")
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
    refused = attacker.post("/login", data={"username": "vera", "password": "x", "csrftoken": token})
    assert int(refused.headers["retry-after"]) > 0


def test_unknown_user_costs_a_check_too(hub, monkeypatch):
    """An unknown name is checked against a dummy hash with the library's default rounds (the
    cost of a real check), so it cannot be told apart by timing."""
    import inspect

    from datasette.plugins import pm

    sm_auth = pm.get_plugin("sm_auth.py")
    rounds = inspect.signature(hash_password).parameters["iterations"].default
    assert sm_auth._DUMMY_HASH.split("$")[:2] == ["pbkdf2_sha256", str(rounds)]
    checked = []
    real = sm_auth.verify_password
    monkeypatch.setattr(sm_auth, "verify_password", lambda password, stored: checked.append(stored) or real(password, stored))
    assert hub["anon"].login("nobody-here", "whatever").status_code == 401
    assert checked == [sm_auth._DUMMY_HASH]


def test_demote_and_delete_apply_on_the_next_request(hub):
    ctx, analyst = hub["ctx"], hub["analyst"]
    assert analyst.get("/monitor.json?sql=select+1").status_code == 200
    ctx.accounts.update_user("ana", role="viewer")
    assert analyst.get("/monitor.json?sql=select+1").status_code == 403
    ctx.accounts.update_user("ana", servers=[2])
    assert [s["name"] for s in analyst.get("/api/servers").json()] == ["two"]
    ctx.accounts.delete_user("ana")
    assert analyst.get("/api/servers").status_code == 401
    assert analyst.get("/").status_code == 302


def test_password_reset_ends_sessions(hub):
    ctx, viewer = hub["ctx"], hub["viewer"]
    assert viewer.get("/api/servers").status_code == 200
    ctx.accounts.set_password("vera", hash_password("a new password!", iterations=1000))
    assert viewer.get("/api/servers").status_code == 401


def test_basic_auth_is_not_a_way_in(hub, hub_config):
    import base64

    creds = base64.b64encode(f"{hub_config.get('auth.username')}:{hub_config.password}".encode()).decode()
    response = hub["anon"].get("/monitor.json", headers={"Authorization": f"Basic {creds}"})
    assert response.status_code == 401


def test_forged_or_old_datasette_cookie_is_ignored(hub, datasette):
    forged = datasette.sign({"a": {"id": "admin", "role": "admin"}}, "actor")
    response = hub["anon"].get("/-/metadata.json", cookies={"ds_actor": forged})
    assert response.status_code == 401


def test_invite_registration_and_reuse(hub):
    ctx, anon = hub["ctx"], hub["anon"]
    _, code = ctx.accounts.create_invite("analyst", hours=1, max_uses=1, created_by="admin")
    page = anon.get(f"/register?code={code}")
    assert page.status_code == 200
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
    form = {"code": code, "username": "newbie", "password": PASSWORD, "password2": PASSWORD, "csrftoken": token}
    response = anon.post("/register", data=form)
    assert response.status_code == 302
    assert anon.get("/monitor.json?sql=select+1").status_code == 200  # logged in, as analyst
    again = Client(anon.ds)
    page = again.get(f"/register?code={code}")
    assert page.status_code == 404 and "not valid" in page.text
    assert ctx.accounts.user("newbie")["role"] == "analyst"
    stored = ctx.accounts._conn().execute("select code_hash from invites").fetchone()[0]
    assert code not in stored


def test_twenty_concurrent_registrations_on_a_one_use_code(hub):
    from concurrent.futures import ThreadPoolExecutor

    ctx = hub["ctx"]
    _, code = ctx.accounts.create_invite("viewer", hours=1, max_uses=1)
    password_hash = hash_password(PASSWORD, iterations=1000)

    def attempt(i):
        try:
            ctx.accounts.register(code, f"racer{i}", password_hash)
            return True
        except Exception:
            return False

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    assert results.count(True) == 1
    assert sum(1 for u in ctx.accounts.users() if u["username"].startswith("racer")) == 1


def test_no_secret_or_hash_in_any_page(hub, hub_config):
    ctx = hub["ctx"]
    _, code = ctx.accounts.create_invite("viewer", hours=1)
    secrets_ = [hub_config.password, hub_config.get("auth.password_hash"), hub_config.get("agent.token"),
                hub_config.get("server.secret_key"), code, PASSWORD]
    secrets_ += [row[0] for row in ctx.accounts._conn().execute("select password_hash from users")]
    for path in list(MATRIX) + ["/admin"]:
        for role in ROLES:
            body = hub[role].get(path).text
            for secret in secrets_:
                assert secret not in body, (role, path)


def test_admin_panel_flows(hub):
    admin = hub["admin"]
    page = admin.get("/admin")
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
    created = admin.post("/admin/invites", data={"csrftoken": token, "role": "viewer", "max_uses": "2", "hours": "24",
                                                  "scope": "some", "servers": ["2"], "see_processes": "on"})
    assert created.status_code == 200
    url = re.search(r'id="invite-link" readonly value="([^"]+)"', created.text).group(1)
    assert re.fullmatch(r"https?://[^/]+/register\?code=[A-Za-z0-9_-]+", url), url  # absolute, usable as sent
    link = url.rsplit("=", 1)[1]
    assert hub["ctx"].accounts.invite_valid(link)
    invite = hub["ctx"].accounts.invites()[0]
    assert invite["servers"] == [2] and invite["max_uses"] == 2
    # A scope on an analyst invite does not apply: analysts see every server and process.
    admin.post("/admin/invites", data={"csrftoken": token, "role": "analyst", "max_uses": "1", "hours": "24",
                                       "scope": "some", "servers": ["2"]})
    assert hub["ctx"].accounts.invites()[0]["servers"] is None and hub["ctx"].accounts.invites()[0]["see_processes"] == 1
    # Role and scope change through the form.
    assert admin.post("/admin/users/vera", data={"csrftoken": token, "action": "update", "role": "analyst",
                                                 "scope": "all"}).status_code == 302
    assert hub["viewer"].get("/monitor.json?sql=select+1").status_code == 200
    reset = admin.post("/admin/users/vera", data={"csrftoken": token, "action": "reset"})
    new_password = re.search(r'id="reset-password" readonly value="([^"]+)"', reset.text).group(1)
    assert hub["viewer"].get("/").status_code == 302  # old session ended
    assert Client(admin.ds).login("vera", new_password).status_code == 302
    # Server status via the admin write canned query.
    done = admin.post("/monitor/admin_set_server", data={"csrftoken": token, "server_id": "1", "display_name": "Lab A",
                                                          "status": "maintenance", "status_note": "PSU swap"})
    assert done.status_code == 302
    server = [s for s in admin.get("/monitor/servers.json?_shape=array").json() if s["server_id"] == 1][0]
    assert (server["name"], server["status"], server["status_note"]) == ("Lab A", "maintenance", "PSU swap")
    # Viewers cannot run it, even with a valid CSRF token of their own.
    viewer = hub["scoped"]
    vtoken = re.search(r'name="csrftoken" value="([^"]+)"', viewer.get("/account").text).group(1)
    assert viewer.post("/monitor/admin_set_server", data={"csrftoken": vtoken, "server_id": "2", "display_name": "x",
                                                            "status": "fault", "status_note": ""}).status_code == 403
    # Announcement shows for everyone.
    admin.post("/monitor/admin_announce", data={"csrftoken": token, "level": "warning", "message": "Reboot at 18:00",
                                                "hours": "2"})
    assert [a["message"] for a in viewer.get("/monitor/announcements.json?_shape=array").json()] == ["Reboot at 18:00"]


def test_session_cookie_flags(datasette, hub_config):
    client = Client(datasette)
    response = client.login(hub_config.get("auth.username"), hub_config.password)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain http here; https sets Secure




def test_cookieless_login_post_is_refused(hub, hub_config):
    client = Client(hub["anon"].ds)
    response = client.post("/login", data={"username": hub_config.get("auth.username"), "password": hub_config.password})
    assert response.status_code == 403 and "sm_session" not in response.headers.get("set-cookie", "")


def test_every_canned_query_is_in_the_matrix():
    from server_monitor.serving.queries import ADMIN_QUERIES, QUERIES

    assert set(QUERIES) == set(PUBLIC_QUERIES) | ADMIN_QUERIES
    for name in ADMIN_QUERIES:
        assert f"/monitor/{name}" in MATRIX or name != "admin_set_server"


def test_parallel_logins_all_succeed_and_parallel_guesses_get_five_checks(hub, datasette):
    from concurrent.futures import ThreadPoolExecutor

    def good(i):
        return Client(datasette).login("ana", PASSWORD).status_code

    with ThreadPoolExecutor(12) as pool:  # a class logging in at once from one address
        assert set(pool.map(good, range(12))) == {302}

    def guess(i):
        return Client(datasette).login("vera", f"wrong-{i}").status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(guess, range(20)))
    assert statuses.count(401) == 5 and statuses.count(429) == 15


def test_refusals_for_scripts_are_json(hub):
    response = hub["viewer"].get("/monitor.json?sql=select+1")
    assert response.status_code == 403 and response.json()["ok"] is False
    response = hub["anon"].get("/monitor/gpus.csv")
    assert response.status_code == 401 and response.json()["error"] == "login required"
    near_miss = hub["anon"].post("/api/report/", content=b"{}", headers={"Authorization": "Bearer x"})
    assert near_miss.status_code == 404 and "agents post to /api/report" in near_miss.json()["error"]


def test_admin_issues_and_revokes_a_host_token(hub, hub_config):
    import json

    admin = hub["admin"]
    token = re.search(r'name="csrftoken" value="([^"]+)"', admin.get("/admin").text).group(1)
    page = admin.post("/admin/tokens", data={"csrftoken": token, "action": "issue", "server_id": "2"})
    value = re.search(r'id="new-token" readonly value="([^"]+)"', page.text).group(1)
    report = sample_report("two", gpus=1, processes=0, sample_time=__import__("time").time() - 120)
    send = lambda: admin.post("/api/report", content=json.dumps(report).encode(),  # noqa: E731
                              headers={"Authorization": f"Bearer {value}", "Content-Type": "application/json"})
    assert send().status_code == 201
    token_id = re.search(r'name="token_id" value="(\d+)"', admin.get("/admin").text).group(1)
    admin.post("/admin/tokens", data={"csrftoken": token, "action": "revoke", "token_id": token_id})
    assert send().status_code == 401


def test_expired_sessions_are_purged_at_login(hub, hub_config):
    conn = hub["ctx"].accounts.connection()
    conn.execute("UPDATE sessions SET expires_at = 0 WHERE username = 'vera'")
    assert hub["viewer"].get("/api/servers").status_code == 401  # expired
    Client(hub["anon"].ds).login("ana", PASSWORD)
    assert conn.execute("SELECT count(*) FROM sessions WHERE username = 'vera'").fetchone()[0] == 0
