"""Regression tests for the security review of ba1fb60 (docs/security.md lists them).

Each test names its finding (M1-M4, L1-L10, I1-I10) in the docstring and fails on ba1fb60.
"""

import email
import email.policy
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
