"""Regression tests for the security review of ba1fb60 (docs/security.md lists them).

Each test names its finding (M1-M4, L1-L10, I1-I10) in the docstring and fails on ba1fb60.
"""

import email
import email.policy
import re
import time

import pytest
from reports import sample_report
from test_alerts import Receiver, SmtpSink
from test_hub_datasette import Client

from server_monitor import alerts, schema
from server_monitor.contract import validate_report
from server_monitor.store import store_report

HOSTILE_HOST = "gpu-07\nBcc: attacker@evil.example"
MARKUP_HOST = '<!channel> <at user_id="all"></at> re-login: <https://evil.example/login|https://monitor.example.org/>'


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
    from server_monitor import hub

    client = Client(datasette)
    assert client.get("/-/health").json() == {"ok": True}
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
    from server_monitor import hub

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

    from server_monitor import hub

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

    from server_monitor import hub

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
    from server_monitor.accounts import AccountError, check_password

    with pytest.raises(AccountError):
        check_password(password, "vera-the-user")
    check_password("correct horse battery", "vera-the-user")  # a passphrase passes
