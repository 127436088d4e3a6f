"""Issue 26 items 3 and 1: notifications through Apprise (named targets, severity routing, the
old webhook/SMTP settings, failures in /admin and /-/health, bounded delivery) and idle-GPU
nudges and weekly digests to the holders. Every sink is real and on loopback: an HTTP server
(tests/test_alerts.py ``Receiver``) and an SMTP server (``SmtpSink``)."""

import email
import email.policy
import re
import socket
import sqlite3
import threading
import time

import apprise
import pytest
import yaml
from browser import push
from test_alerts import Receiver, SmtpSink
from test_fleet_views import host
from test_hub_datasette import Client
from test_user_page import _client, _report, _rows

from server_monitor.auth.contacts import NotifyStore
from server_monitor.core import config as config_mod
from server_monitor.jobs import alerts, notify, nudge
from server_monitor.storage.rollup import Maintenance

HOSTILE = 'gpu-07\nBcc: attacker@evil.example\r\u2028<!channel> @everyone <at user_id="all"></at> [x](https://evil.example)'


def _alert(message, severity="critical", **extra):
    return dict({"rule": "gpu_failure", "severity": severity, "server_id": 1, "subject": "error", "message": message},
                **extra)


def _port(receiver):
    return receiver.server.server_port


def _mail(sink, index=-1):
    return email.message_from_string(sink.messages[index], policy=email.policy.default)


def test_item3_named_targets_route_by_severity_to_real_sinks(tmp_path):
    """Apprise delivers to a JSON sink and an SMTP sink; severities pick the targets, an alert's
    ``targets`` names override them, an unknown name is a recorded failure."""
    receiver, sink = Receiver(), SmtpSink()
    try:
        port = _port(receiver)
        ncfg = {"targets": [
            {"name": "oncall", "url": f"json://127.0.0.1:{port}/oncall", "severities": ["critical"]},
            {"name": "chat", "url": f"json://127.0.0.1:{port}/chat", "severities": ["warning"]},
            {"name": "mail", "url": f"mailto://127.0.0.1:{sink.port}?from=monitor@example.org&to=admins@example.org"}]}
        store = NotifyStore(str(tmp_path / "auth.db"))
        notifier = notify.Notifier(dict(alerts.DEFAULTS), ncfg, store)
        assert notifier.send("firing", _alert("node-1: GPU 0 at 91 °C or more for 5 min", "warning"))
        assert notifier.send("firing", _alert("node-2: nvidia-smi fails", "critical"))
        assert [b["title"] for b in receiver.of("/chat")] == ["[FIRING] [warning] node-1: GPU 0 at 91 °C or more for 5 min"]
        assert [b["title"] for b in receiver.of("/oncall")] == ["[FIRING] [critical] node-2: nvidia-smi fails"]
        assert [_mail(sink, i)["Subject"] for i in range(2)] == [
            "[FIRING] [warning] node-1: GPU 0 at 91 °C or more for 5 min", "[FIRING] [critical] node-2: nvidia-smi fails"]
        assert _mail(sink)["To"] == "admins@example.org"
        # The alert rule names its targets: only those, whatever the severity.
        assert notifier.send("firing", _alert("node-3: disk / is 97 % full", "critical", targets=["chat"]))
        assert len(receiver.of("/chat")) == 2 and len(receiver.of("/oncall")) == 1 and len(sink.messages) == 2
        assert notifier.send("firing", _alert("node-4: x", targets=["nope"])) is False
        assert store.failures()[0]["target"] == "nope"
        assert store.status()["chat"]["last_ok_at"] is not None
    finally:
        receiver.server.shutdown()
        sink.sock.close()


def test_item3_old_webhook_and_smtp_settings_map_to_apprise_services():
    """``alerts.webhooks`` Slack/Feishu/Lark hooks become Apprise's own services; the generic JSON
    body and Slack-format hooks on other hosts stay on the webhook code; ``alerts.smtp`` is a mailto URL."""
    targets = notify.legacy_targets({
        "webhooks": [{"url": "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
                      "format": "slack"},
                     {"url": "https://open.feishu.cn/open-apis/bot/v2/hook/2a0f1c4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
                      "format": "feishu"},
                     {"url": "https://open.larksuite.com/open-apis/bot/v2/hook/2a0f1c4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
                      "format": "lark"},
                     {"url": "https://chat.example.org/hooks/abc", "format": "slack"},
                     {"url": "https://example.org/hook", "format": "generic", "name": "ticketing"}],
        "smtp": {"host": "smtp.example.org", "port": 587, "starttls": True, "username": "monitor", "password": "p@ss/w:rd",
                 "from": "monitor@example.org", "to": ["a@example.org", "b@example.org"]}})
    assert [(t.name, t.fmt) for t in targets] == [("webhook-1", None), ("webhook-2", None), ("webhook-3", None),
                                                  ("webhook-4", "slack"), ("ticketing", "generic"), ("email", None)]
    kinds = [type(apprise.Apprise.instantiate(t.url)).__name__ for t in targets if t.fmt is None]
    assert kinds == ["NotifySlack", "NotifyFeishu", "NotifyLark", "NotifyEmail"]
    slack = apprise.Apprise.instantiate(targets[0].url)
    assert (slack.token_a, slack.token_b, slack.token_c) == ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ")
    assert not slack.include_footer and not slack.include_image
    mail = apprise.Apprise.instantiate(targets[-1].url)
    assert (mail.smtp_host, mail.port, mail.secure_mode, mail.user, mail.password) == (
        "smtp.example.org", 587, "starttls", "monitor", "p@ss/w:rd")
    assert sorted(mail.targets[i][1] for i in range(2)) == ["a@example.org", "b@example.org"]


def test_item3_hostile_agent_text_stays_one_safe_line_over_apprise(tmp_path):
    """L9/M3 through Apprise: no forged line, no mention or markup in chat, no injected mail header."""
    receiver, sink = Receiver(), SmtpSink()
    try:
        ncfg = {"targets": [{"name": "chat", "url": f"json://127.0.0.1:{_port(receiver)}/chat"},
                            {"name": "mail", "url": f"mailto://127.0.0.1:{sink.port}?from=m@example.org&to=a@example.org"}]}
        assert notify.Notifier(dict(alerts.DEFAULTS), ncfg, None).send("firing", _alert(HOSTILE + ": nvidia-smi fails"))
        (chat,) = receiver.of("/chat")
        # The title is one line; the body's lines are the hub's own (message, rule), none forged.
        assert "\n" not in chat["title"] and len(chat["message"].split("\n")) == 2
        assert chat["message"].split("\n")[1] == "Rule: gpu_failure · severity critical"
        for text in (chat["title"], chat["message"]):
            assert "\r" not in text and "\u2028" not in text
            assert "<" not in text and ">" not in text and "@everyone" not in text and "@evil" not in text
        assert chat["title"].startswith("[FIRING] [critical] gpu-07 Bcc: attacker\uff20evil.example")
        mail = _mail(sink)
        assert mail["Subject"] == ("[FIRING] [critical] gpu-07 Bcc: attacker@evil.example <!channel> @everyone"
                                   ' <at user_id="all"></at> [x](https://evil.example): nvidia-smi fails')
        assert mail["Bcc"] is None and not any(line.lower().startswith("bcc:") for line in sink.messages[0].splitlines())
    finally:
        receiver.server.shutdown()
        sink.sock.close()


class Silent:
    """A TCP server on loopback that accepts connections and never answers (a hung webhook)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


def test_item3_a_rule_that_names_targets_gets_its_resolved_notice_there_too(tmp_path, monkeypatch):
    """Contract with the alert rules: an alert carrying ``targets`` is delivered there, and so is
    its resolved notice (the engine keeps the names; the alerts table does not)."""
    from server_monitor.storage import schema

    receiver = Receiver()
    try:
        path = str(tmp_path / "monitor.db")
        schema.migrate(path)
        port = _port(receiver)
        ncfg = {"targets": [{"name": "team-a", "url": f"json://127.0.0.1:{port}/team-a", "severities": ["warning"]},
                            {"name": "all", "url": f"json://127.0.0.1:{port}/all"}]}
        engine = alerts.AlertEngine(path, dict(alerts.DEFAULTS), notify.Notifier(dict(alerts.DEFAULTS), ncfg, None))
        firing = {"custom:1:x": _alert("node-1: rule of team a", "critical", targets=["team-a"], since=None)}
        # A rule (the alert-rules work owns them) that names its targets; the engine and delivery are real.
        monkeypatch.setattr(alerts, "evaluate", lambda conn, now, cfg, rules=(), overrides=None: {k: dict(v) for k, v in firing.items()})
        assert engine.run_once(1_000_000)["fired"] == ["custom:1:x"]
        firing.clear()
        assert engine.run_once(1_000_060)["resolved"] == ["custom:1:x"]
        assert [b["title"].split("]")[0] for b in receiver.of("/team-a")] == ["[FIRING", "[RESOLVED"]
        assert receiver.of("/all") == []
    finally:
        receiver.server.shutdown()


def test_item3_a_hung_target_costs_one_timeout_per_pass_and_the_rest_wait(tmp_path):
    """Delivery is bounded: a target that never answers holds a pass for at most
    ``pass_budget_s``; the notices left are not marked sent (retried next pass) and the
    hung deliveries are recorded as failures."""
    silent, receiver = Silent(), Receiver()
    try:
        store = NotifyStore(str(tmp_path / "auth.db"))
        ncfg = {"timeout_s": 1, "pass_budget_s": 1.5, "targets": [{"name": "hung", "url": f"json://127.0.0.1:{silent.port}/x"}]}
        notifier = notify.Notifier(dict(alerts.DEFAULTS), ncfg, store)
        notifier.begin_pass()
        started = time.monotonic()
        results = [notifier.send("firing", _alert(f"node-{i}: nvidia-smi fails")) for i in range(20)]
        elapsed = time.monotonic() - started
        assert results == [False] * 20
        assert elapsed < 3, elapsed  # unbounded: 20 x the 1 s timeout at least
        deadline = time.time() + 10
        while not store.failures() and time.time() < deadline:
            time.sleep(0.1)
        assert store.failures()[0]["target"] == "hung"
    finally:
        silent.sock.close()
        receiver.server.shutdown()


@pytest.fixture
def notify_hub(hub_config, request):
    """A hub whose config has a broken target (secret in its URL) and e-mail through a loopback sink."""
    receiver, sink = Receiver(), SmtpSink()
    data = yaml.safe_load(open(hub_config.path))
    data["alerts"] = {"dashboard_url": "https://monitor.example.org/",
                      "smtp": {"host": "127.0.0.1", "port": sink.port, "from": "monitor@example.org", "to": "admins@example.org"}}
    data["notifications"] = {"timeout_s": 2, "targets": [
        {"name": "broken", "url": "json://hookuser:s3cr3t-passw0rd@127.0.0.1:9/hook-s3cr3t-path", "severities": ["critical"]}]}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    hub_config.data = config_mod.load(hub_config.path).data
    admin = request.getfixturevalue("admin")
    admin.receiver, admin.sink = receiver, sink
    yield admin
    receiver.server.shutdown()
    sink.sock.close()


def _csrf(client, path="/admin"):
    return re.search(r'name="csrftoken" value="([^"]+)"', client.get(path).text).group(1)


def test_item3_admin_targets_send_test_and_failures_in_admin_and_health(notify_hub, hub_config):
    """An admin adds a target (kept in auth.db, not monitor.db), "send test" reaches the HTTP sink;
    the broken target's failed test is listed on /admin and counted by /-/health, secrets cut."""
    admin = notify_hub
    url = f"json://127.0.0.1:{_port(admin.receiver)}/lab-chat"
    token = _csrf(admin)
    assert admin.post("/admin/notify/targets", data={"csrftoken": token, "name": "lab-chat", "url": url,
                                                     "severities": "warning", "action": "add"}).status_code == 302
    bad = admin.post("/admin/notify/targets", data={"csrftoken": token, "name": "bad", "url": "https://example.org/x"})
    assert bad.status_code == 400 and "Apprise does not understand" in bad.text
    assert NotifyStore(hub_config.auth_db_path).targets()[0]["url"] == url
    assert b"lab-chat" not in open(hub_config.db_path, "rb").read()
    sent = admin.post("/admin/notify/test", data={"csrftoken": token, "name": "lab-chat"})
    assert sent.status_code == 302 and "ntest=ok" in sent.headers["location"]
    assert [b["title"] for b in admin.receiver.of("/lab-chat")] == [
        "[TEST] [info] Test notice from Server Monitor, sent by " + hub_config.get("auth.username") + " from /admin"]
    # The e-mail target of alerts.smtp is listed and testable too.
    assert "ntest=ok" in admin.post("/admin/notify/test", data={"csrftoken": token, "name": "email"}).headers["location"]
    assert _mail(admin.sink)["Subject"].startswith("[TEST] [info] Test notice")
    failed = admin.post("/admin/notify/test", data={"csrftoken": token, "name": "broken"})
    assert "ntest=failed" in failed.headers["location"]
    page = admin.get(failed.headers["location"]).text
    assert "Test notice to <strong>broken</strong> failed" in page
    failures = page[page.index('id="notify-failures"'):]
    assert "broken" in failures and "s3cr3t" not in page  # neither the password nor the path
    health = Client(admin.ds).get("/-/health").json()  # anonymous
    assert health["ok"] is True and health["notifications"]["failures"] == 1
    assert health["notifications"]["last_failure_target"] == "broken" and "s3cr3t" not in str(health)


def test_item3_only_admins_manage_targets(notify_hub, hub_config):
    from server_monitor.auth.accounts import Accounts
    from datasette_auth_passwords.utils import hash_password

    Accounts(hub_config.auth_db_path).create_user("vera", hash_password("vera-password-1", iterations=1000), "viewer")
    viewer = Client(notify_hub.ds)
    assert viewer.login("vera", "vera-password-1").status_code == 302
    token = _csrf(viewer, "/account")
    for path in ("/admin/notify/targets", "/admin/notify/test", "/admin/notify/contacts"):
        assert viewer.post(path, data={"csrftoken": token, "name": "x", "url": "json://127.0.0.1/x"}).status_code == 403
    assert NotifyStore(hub_config.auth_db_path).targets() == []


def _idle_host(admin, name="idler", user="alice", hours=3):
    """A server whose GPU 0 is held (30 GB) at 0 % by ``user`` for ``hours`` h; returns the GPU id."""
    now = int(time.time())
    host(admin, name, 1, used_mib={0: 30000}, busy=(0,), util=0)
    conn = sqlite3.connect(admin.db)
    conn.execute("update gpu_processes set user = ?", (user,))
    (gpu,) = conn.execute("select id from gpus").fetchone()
    conn.executemany("insert or ignore into gpu_samples (gpu_id, ts, utilization_gpu, memory_used_mib) values (?,?,?,?)",
                     [(gpu, now - i * 60, 0, 30000) for i in range(1, hours * 60)])
    conn.commit()
    return gpu


def _nudger(hub_config, **ncfg):
    config = config_mod.load(hub_config.path)
    config.data.setdefault("notifications", {}).update(ncfg)
    cfg = alerts.settings(config)
    return nudge.Nudger(config, cfg, notify.Notifier.from_config(config, cfg))


def test_item1_idle_gpu_nudges_its_holder_by_mail_and_chat_with_cadence_and_quiet_hours(notify_hub, hub_config):
    """alice holds a GPU idle for 3 h: she gets one e-mail (through alerts.smtp) and one chat
    message, nothing more until the repeat period, nothing in quiet hours; the idle panel's
    query says who was nudged when. A hostile server name stays one safe line."""
    admin = notify_hub
    gpu = _idle_host(admin)
    conn = sqlite3.connect(admin.db)
    conn.execute("update servers set display_name = ?", ("idler\n[FIRING] forged <!channel> @everyone",))
    conn.commit()
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("alice", "alice@example.org", f"json://127.0.0.1:{_port(admin.receiver)}/alice", digest=False)
    store.set_contact("bob", "bob@example.org")  # holds nothing: never nudged
    hour = time.localtime().tm_hour
    assert _nudger(hub_config, quiet_hours=[hour, (hour + 1) % 24]).run_once()["nudged"] == []
    assert admin.sink.messages == [] and admin.receiver.of("/alice") == []
    assert _nudger(hub_config, quiet_hours=None).run_once()["nudged"] == ["alice"]
    mail = _mail(admin.sink)
    assert mail["To"] == "alice@example.org"
    assert mail["Subject"] == "[IDLE GPU] alice: 1 GPU held idle on idler [FIRING] forged <!channel> @everyone"
    body = mail.get_content()
    assert "idler [FIRING] forged <!channel> @everyone GPU 0: 30000 MiB held at 0 % utilization for" in body
    assert "Your GPUs, GPU-hours and idle GPU-hours: https://monitor.example.org/users/alice" in body
    (chat,) = admin.receiver.of("/alice")
    assert "\n" not in chat["title"] and "<" not in chat["title"] and "@everyone" not in chat["message"]
    assert chat["message"].splitlines()[0].startswith("idler [FIRING] forged \uff1c!channel\uff1e \uff20everyone GPU 0")
    # Within the repeat period: nothing new.
    assert _nudger(hub_config, quiet_hours=None).run_once()["nudged"] == []
    assert len(admin.sink.messages) == 1
    # Past it (here: a repeat period of 0.72 s; times are whole seconds), a reminder.
    time.sleep(1.1)
    assert _nudger(hub_config, quiet_hours=None, nudge_repeat_hours=0.0002).run_once()["nudged"] == ["alice"]
    assert len(admin.sink.messages) == 2
    assert conn.execute("select holder, nudges from idle_nudges where gpu_id = ?", (gpu,)).fetchall() == [("alice", 2)]
    (row,) = admin.get("/monitor/idle_holders.json?_shape=array").json()
    assert row["nudged"] == "alice" and abs(row["nudged_at"] - time.time()) < 30


def test_item1_nudge_failure_is_recorded_and_nothing_marked(notify_hub, hub_config):
    """A holder whose contact cannot be reached: the failure is recorded, the GPU is not marked
    nudged (the next pass tries again)."""
    admin = notify_hub
    _idle_host(admin, user="carol")
    NotifyStore(hub_config.auth_db_path).set_contact("carol", None, "json://127.0.0.1:9/carol")
    assert _nudger(hub_config, quiet_hours=None).run_once()["nudged"] == []
    assert NotifyStore(hub_config.auth_db_path).failures()[0]["target"] == "contact:carol:url"
    assert sqlite3.connect(admin.db).execute("select count(*) from idle_nudges").fetchone() == (0,)


def test_item3_admin_delivery_failures_and_contacts_mark_holder_names_for_their_page_link(notify_hub, hub_config):
    """/admin's failure list and contact list mark a contact's holder (data-holder, which
    static/common.js turns into a link to /users/<name>), escaped; other targets stay plain text."""
    admin = notify_hub
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("carol<b>", "carol@example.org")
    store.record_failure("contact:carol<b>:email", "SMTP refused")
    store.record_failure("broken", "connection refused")
    page = admin.get("/admin").text
    failures = page[page.index('id="notify-failures"'):page.index('id="contacts"')]
    assert 'contact:<span class="holder" data-holder="carol&lt;b&gt;">carol&lt;b&gt;</span>:email' in failures
    assert "<td>broken</td>" in failures
    contacts = page[page.index('id="contact-table"'):]
    assert '<span class="holder" data-holder="carol&lt;b&gt;">carol&lt;b&gt;</span>' in contacts


def test_item1_weekly_digest_for_users_and_admins(notify_hub, hub_config):
    """Opted-in holders get their GPU-hours, idle GPU-hours and top jobs of the per-user page's table
    (gpu_usage_user_1d) and a link to their page; the admin also the fleet's utilization and the top
    idle holders (nobody with 0 idle hours); once a week."""
    admin = notify_hub
    host(admin, "node-1", 2, used_mib={0: 1000, 1: 1000}, busy=(0, 1))
    conn = sqlite3.connect(admin.db)
    gpu0, gpu1 = [r[0] for r in conn.execute("select id from gpus order by gpu_index")]
    hour = int(time.time()) // 3600 * 3600 - 7200
    day = hour // 86400 * 86400
    # alice: 10 GPU-hours (job-1 6 h, job-2 4 h), 3 of them idle; bob: 2 GPU-hours at 100 %, none idle.
    rows = [(hour, 1, gpu0, "alice", "job-1", 6 * 3600, 0, 6 * 3600 * 20, 6 * 3600, 6 * 3600, 3 * 3600),
            (hour, 1, gpu1, "alice", "job-2", 4 * 3600, 0, 4 * 3600 * 20, 4 * 3600, 4 * 3600, 0),
            (hour - 3600, 1, gpu0, "bob", "", 2 * 3600, 0, 2 * 3600 * 100, 2 * 3600, 2 * 3600, 0)]
    conn.executemany("insert into gpu_usage_1h (hour, server_id, gpu_id, user, container, gpu_seconds, vram_mib_seconds,"
                     " util_seconds, util_known_seconds, held_seconds, idle_seconds) values (?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany("insert into gpu_usage_user_1d (user, day, server_id, container, gpu_seconds, idle_seconds,"
                     " vram_mib_seconds, util_seconds, util_known_seconds, gpus, first_hour, last_hour)"
                     " values (?,?,?,?,?,?,?,?,?,1,?,?)",
                     [(r[3], day, r[1], r[4], r[5], r[10], r[6], r[7], r[8], r[0], r[0]) for r in rows])
    conn.commit()
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("alice", "alice@example.org", digest=True)
    store.set_contact("bob", "bob@example.org", digest=False)
    store.set_contact(hub_config.get("auth.username"), "boss@example.org", digest=True)
    today = time.localtime().tm_wday
    assert _nudger(hub_config, nudges=False, digest_weekday=(today + 1) % 7, digest_hour=0).run_once()["digests"] == []
    sent = _nudger(hub_config, nudges=False, digest_weekday=today, digest_hour=0).run_once()["digests"]
    assert sorted(sent) == sorted(["alice", hub_config.get("auth.username")])
    mails = {_mail(admin.sink, i)["To"]: _mail(admin.sink, i) for i in range(len(admin.sink.messages))}
    alice = mails["alice@example.org"].get_content()
    assert mails["alice@example.org"]["Subject"] == "[DIGEST] GPU use of alice, last 7 days"
    since = time.strftime("%Y-%m-%d", time.gmtime(nudge.week_start(time.time())))
    assert f"Your GPU-hours since {since} (UTC days): 10.0 (idle GPU-hours: 3.0)" in alice
    assert alice.index("job-1: 6.0 GPU-hours") < alice.index("job-2: 4.0 GPU-hours") and "Fleet" not in alice
    assert "https://monitor.example.org/users/alice" in alice
    boss = mails["boss@example.org"].get_content()
    assert "Fleet: 12.0 GPU-hours held, average utilization 33.3 %" in boss
    assert "Top idle holders: alice 3.0 idle GPU-hours" in boss.splitlines()
    assert _nudger(hub_config, nudges=False, digest_weekday=today, digest_hour=0).run_once()["digests"] == []


def test_item1_digest_and_user_page_agree_on_gpu_hours_and_idle_hours_over_http(hub_process, hub_config):
    """One real fleet pushed over HTTP, GPU-hours computed by the hub's own maintenance: alice holds
    GPU 0 at 0 % (idle) and GPU 1 at 30 % (busy, not idle: above features.idle_max_util) for 4 hourly
    reports. Her weekly digest (sent through a real SMTP sink) and her page's queries over HTTP
    (user_gpu_hours_daily for the same 7 days, user_jobs) give the same GPU-hours (8.0), idle
    GPU-hours (4.0; held × (1 − utilization) would say 6.8) and jobs; the admin's top idle holders
    give her the same idle hours; the digest links her page under alerts.dashboard_url."""
    now = int(time.time())
    for k in range(3, -1, -1):
        push(hub_process, hub_config, _report("alpha", now - k * 3600, [(0, "alice", "job 42"), (1, "alice", "job 42")],
                                              [0, 30]))
        push(hub_process, hub_config, _report("beta", now - k * 3600, [(0, "bob", "lab-b")], [50]))
    Maintenance(hub_config.db_path, pause=0).run_once()
    sink = SmtpSink()
    try:
        store = NotifyStore(hub_config.auth_db_path)
        store.set_contact("alice", "alice@example.org", digest=True)
        store.set_contact(hub_config.get("auth.username"), "boss@example.org", digest=True)
        config = config_mod.load(hub_config.path)
        config.data["alerts"] = {"dashboard_url": "https://gpu.lab.example/", "smtp": {
            "host": "127.0.0.1", "port": sink.port, "from": "monitor@example.org", "to": "admins@example.org"}}
        config.data["notifications"] = {"nudges": False, "digest_weekday": time.localtime().tm_wday, "digest_hour": 0}
        cfg = alerts.settings(config)
        sent = nudge.Nudger(config, cfg, notify.Notifier.from_config(config, cfg)).run_once()["digests"]
        assert sorted(sent) == sorted(["alice", hub_config.get("auth.username")])
        mails = {_mail(sink, i)["To"]: _mail(sink, i).get_content() for i in range(len(sink.messages))}
    finally:
        sink.sock.close()
    digest = mails["alice@example.org"]
    gpu_hours, idle_hours = map(float, re.search(r"GPU-hours[^:\n]*: ([\d.]+) \(idle GPU-hours: ([\d.]+)\)", digest).groups())
    page = _client(hub_process, hub_config.get("auth.username"), hub_config.password)
    daily = _rows(page, "user_gpu_hours_daily", user="alice", days=7)
    assert (gpu_hours, idle_hours) == (round(sum(d["gpu_hours"] for d in daily), 1),
                                       round(sum(d["idle_gpu_hours"] for d in daily), 1)) == (8.0, 4.0)
    jobs = _rows(page, "user_jobs", user="alice", days=7)
    assert [(j["container"], j["gpu_hours"]) for j in jobs] == [("job 42", 8.0)]
    assert "  job 42: 8.0 GPU-hours" in digest
    assert "https://gpu.lab.example/users/alice" in digest
    assert "alice 4.0 idle GPU-hours" in mails["boss@example.org"]


def test_item1_user_sets_own_contact_on_account_public_services_only(notify_hub, hub_config):
    """A user edits their own contact on /account; a URL to an address inside the lab (json://,
    any kind outside notifications.contact_schemes) is refused, the stored URL is kept hidden."""
    from server_monitor.auth.accounts import Accounts
    from datasette_auth_passwords.utils import hash_password

    Accounts(hub_config.auth_db_path).create_user("dave", hash_password("dave-password-1", iterations=1000), "viewer")
    user = Client(notify_hub.ds)
    assert user.login("dave", "dave-password-1").status_code == 302
    token = _csrf(user, "/account")
    refused = user.post("/account/contact", data={"csrftoken": token, "email": "dave@example.org",
                                                  "url": "json://10.0.0.5:8080/internal"})
    assert refused.status_code == 400 and "not allowed here" in refused.text
    inside = user.post("/account/contact", data={"csrftoken": token, "url": "ntfys://10.0.0.5/topic"})
    assert inside.status_code == 400 and "ntfy.sh only" in inside.text
    assert user.post("/account/contact", data={"csrftoken": token, "email": "dave@example.org",
                                               "url": "ntfys://ntfy.sh/dave-gpus", "digest": "on"}).status_code == 302
    assert user.post("/account/contact", data={"csrftoken": token, "email": "bad\r\nBcc: x@y"}).status_code == 400
    stored = NotifyStore(hub_config.auth_db_path).contact("dave")
    assert (stored["email"], stored["url"], stored["digest"]) == ("dave@example.org", "ntfys://ntfy.sh/dave-gpus", 1)
    # Saving again with the URL field empty keeps the URL; the page never shows it.
    assert user.post("/account/contact", data={"csrftoken": token, "email": "d@example.org"}).status_code == 302
    assert NotifyStore(hub_config.auth_db_path).contact("dave")["url"] == "ntfys://ntfy.sh/dave-gpus"
    page = user.get("/account").text
    assert 'value="d@example.org"' in page and "dave-gpus" not in page


def test_item2_admin_edits_a_target_name_severities_and_url_kept_secret_unless_replaced(notify_hub, hub_config):
    """An admin edits a target on /admin: the form shows the name and severities, the URL only
    shortened (never its secret path); saving with the URL field empty renames it and changes its
    severities but keeps the URL (and its delivery status); a new URL replaces it; a taken name or
    a bad URL is a 400 that changes nothing; config targets have no edit."""
    admin = notify_hub
    store = NotifyStore(hub_config.auth_db_path)
    secret = f"json://127.0.0.1:{_port(admin.receiver)}/hook-s3cr3t-path"
    token = _csrf(admin)
    assert admin.post("/admin/notify/targets", data={"csrftoken": token, "name": "lab-chat", "url": secret,
                                                     "severities": "warning", "action": "add"}).status_code == 302
    store.add_target("other", "json://127.0.0.1:9/other")
    store.record_ok("lab-chat", at=1_700_000_000)
    page = admin.get("/admin").text
    assert 'href="/admin?nedit=lab-chat#notify-edit">Edit</a>' in page
    assert "nedit=broken" not in page  # the config target is edited in config.yaml
    form = admin.get("/admin?nedit=lab-chat").text
    form = form[form.index('id="notify-edit"'):form.index('id="notify-add"')]
    assert 'name="new_name"' in form and 'value="lab-chat"' in form and "s3cr3t" not in form
    assert f'placeholder="kept: json://127.0.0.1:{_port(admin.receiver)}/…"' in form
    assert 'value="warning" checked' in form and 'value="critical" >' in form
    # Rename + severities, URL field empty: the URL stays.
    assert admin.post("/admin/notify/targets", data={"csrftoken": token, "action": "update", "name": "lab-chat",
                                                     "new_name": "gpu-chat", "url": "",
                                                     "severities": ["critical", "warning"]}).status_code == 302
    (edited,) = [t for t in store.targets() if t["name"] != "other"]
    assert (edited["name"], edited["url"], edited["severities"]) == ("gpu-chat", secret, ["critical", "warning"])
    assert store.status()["gpu-chat"]["last_ok_at"] == 1_700_000_000 and "lab-chat" not in store.status()
    # A taken name, a bad URL, an unknown target: 400, nothing changed.
    for data, text in (({"new_name": "other"}, "exists already"), ({"new_name": "gpu-chat", "url": "https://example.org/x"},
                       "Apprise does not understand"), ({"name": "nope", "new_name": "nope"}, "No target named")):
        answer = admin.post("/admin/notify/targets", data=dict({"csrftoken": token, "action": "update", "name": "gpu-chat",
                                                                "url": ""}, **data))
        assert answer.status_code == 400 and text in answer.text
    assert [t["url"] for t in store.targets() if t["name"] == "gpu-chat"] == [secret]
    # A new URL replaces the stored one; "send test" reaches it under the new name.
    fresh = f"json://127.0.0.1:{_port(admin.receiver)}/new-path"
    assert admin.post("/admin/notify/targets", data={"csrftoken": token, "action": "update", "name": "gpu-chat",
                                                     "new_name": "gpu-chat", "url": fresh}).status_code == 302
    assert [(t["url"], t["severities"]) for t in store.targets() if t["name"] == "gpu-chat"] == [(fresh, None)]
    assert "ntest=ok" in admin.post("/admin/notify/test", data={"csrftoken": token, "name": "gpu-chat"}).headers["location"]
    assert len(admin.receiver.of("/new-path")) == 1 and admin.receiver.of("/hook-s3cr3t-path") == []


def test_item2_admin_contacts_list_pages_and_searches_past_500(notify_hub, hub_config):
    """1,210 contacts: /admin lists 50 a page with "1–50 of 1,210" and a Next link through to the
    last ones (the old list stopped at 500); the search finds a holder by name or e-mail (never by
    the secret URL) and keeps the other lists' search in its links."""
    admin = notify_hub
    conn = sqlite3.connect(hub_config.auth_db_path)
    conn.executemany("insert into notify_contacts (holder, email, url, digest, updated_at) values (?,?,?,0,1)",
                     [(f"user{n:04d}", f"u{n}@example.org", f"json://127.0.0.1:9/secret-{n}") for n in range(1210)])
    conn.commit()
    page = admin.get("/admin").text
    table = page[page.index('id="contact-table"'):]
    assert table.count('data-holder="') == 50 and 'data-holder="user0000"' in table
    assert "1–50 of 1,210" in table and 'href="/admin?cp=2#contacts" rel="next"' in table
    last = admin.get("/admin?cp=25").text
    last = last[last.index('id="contact-table"'):]
    assert 'data-holder="user1209"' in last and "1201–1210 of 1,210" in last and 'rel="next"' not in last
    # Paging keeps the other lists' search, not a one-shot edit form or test result.
    second = admin.get("/admin?nedit=x&ntest=ok&nt=broken&uq=a").text
    assert 'href="/admin?uq=a&amp;cp=2#contacts" rel="next"' in second
    found = admin.get("/admin?cq=u1207@&uq=x").text
    found = found[found.index('id="contact-table"'):]
    assert found.count('data-holder="') == 1 and 'data-holder="user1207"' in found
    assert admin.get("/admin?cq=secret-12").text.count('data-holder="') == 0
    assert "No contact matches." in admin.get("/admin?cq=nobody-here").text


def test_item1_digest_reaches_every_opted_in_contact_past_500(notify_hub, hub_config):
    """The weekly digest goes to every contact that wants it, not only the first 500 by name."""
    admin = notify_hub
    conn = sqlite3.connect(hub_config.auth_db_path)
    conn.executemany("insert into notify_contacts (holder, email, digest, updated_at) values (?,?,0,1)",
                     [(f"user{n:04d}", f"u{n}@example.org") for n in range(600)])
    conn.execute("update notify_contacts set digest = 1 where holder = 'user0599'")
    conn.commit()
    today = time.localtime().tm_wday
    assert _nudger(hub_config, nudges=False, digest_weekday=today, digest_hour=0).run_once()["digests"] == ["user0599"]
    assert _mail(admin.sink)["To"] == "u599@example.org"


def test_F6_severity_sets_the_apprise_type_title_is_a_summary_body_has_details_and_link(tmp_path):
    """Newcomer finding 6: every notice went out as Apprise type ``info`` with the title repeated
    as body. Now critical → failure, warning → warning, info → info, resolved → success; the
    body carries the start time and the dashboard/history links (``server.public_url`` when
    ``alerts.dashboard_url`` is unset); hostile agent text stays neutral in both."""
    receiver = Receiver()
    try:
        ncfg = {"targets": [{"name": "chat", "url": f"json://127.0.0.1:{_port(receiver)}/chat"}]}
        notifier = notify.Notifier(dict(alerts.DEFAULTS), ncfg, NotifyStore(str(tmp_path / "auth.db")))
        notifier.public_url = "https://monitor.example.org/"
        start = 1_800_000_000
        for severity in ("critical", "warning", "info"):
            assert notifier.send("firing", _alert(f"node-1: {severity} thing", severity, started_at=start))
        assert notifier.send("resolved", _alert("node-1: critical thing", started_at=start, resolved_at=start + 600))
        got = receiver.of("/chat")
        assert [b["type"] for b in got] == ["failure", "warning", "info", "success"]
        assert got[0]["title"] == "[FIRING] [critical] node-1: critical thing"
        body = got[0]["message"]
        assert body != got[0]["title"] and "[FIRING]" not in body
        assert body.splitlines() == ["node-1: critical thing", "Rule: gpu_failure · severity critical",
                                     "Since: 2027-01-15 08:00 UTC", "Dashboard: https://monitor.example.org/",
                                     "History: https://monitor.example.org/servers/1/history"]
        assert "Resolved: 2027-01-15 08:10 UTC" in got[3]["message"]
        # Hostile agent text: neutral in title and body, and it forges no line of the body.
        assert notifier.send("firing", _alert(HOSTILE, "warning"))
        last = receiver.of("/chat")[-1]
        for text in (last["title"], last["message"]):
            assert "<" not in text and "@everyone" not in text and "\r" not in text and "\u2028" not in text
        assert [line.split(":")[0] for line in last["message"].split("\n")] == [
            "gpu-07 Bcc", "Rule", "Dashboard", "History"]
    finally:
        receiver.server.shutdown()


def test_F2_admin_contact_edit_keeps_what_the_user_saved_on_account(notify_hub, hub_config):
    """Newcomer finding 2: the user saves e-mail, URL and digest on /account; an admin who then
    saves that holder with only a new URL on /admin kept nothing else. Now empty fields and
    "unchanged" keep the stored values, Edit shows them (the URL hidden), and clearing a shown
    e-mail is a deliberate change."""
    from server_monitor.auth.accounts import Accounts
    from datasette_auth_passwords.utils import hash_password

    Accounts(hub_config.auth_db_path).create_user("erin", hash_password("erin-password-1", iterations=1000), "viewer")
    user = Client(notify_hub.ds)
    assert user.login("erin", "erin-password-1").status_code == 302
    assert user.post("/account/contact", data={"csrftoken": _csrf(user, "/account"), "email": "erin@example.org",
                                               "url": "ntfys://ntfy.sh/erin-s3cr3t-topic", "digest": "on"}).status_code == 302
    admin, store = notify_hub, NotifyStore(hub_config.auth_db_path)
    token = _csrf(admin)
    # The blank form (what the newcomer used): holder and a URL only.
    saved = admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "erin",
                                                       "url": "json://127.0.0.1:9/erin", "digest": "keep"})
    assert saved.status_code == 302
    stored = store.contact("erin")
    assert (stored["email"], stored["url"], stored["digest"]) == ("erin@example.org", "json://127.0.0.1:9/erin", 1)
    # Edit shows the stored values; the URL only shortened.
    page = admin.get(saved.headers["location"]).text
    form = page[page.index('id="contact-form"'):page.index("</form>", page.index('id="contact-form"'))]
    assert 'value="erin@example.org"' in form and 'name="shown" value="erin"' in form
    assert '<option value="on" selected>yes</option>' in form and "json://127.0.0.1" in form and "/erin" not in form
    # In the edit form an emptied e-mail is a deliberate change; digest off; the URL kept.
    assert admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "erin", "shown": "erin",
                                                      "email": "", "url": "", "digest": "off"}).status_code == 302
    stored = store.contact("erin")
    assert (stored["email"], stored["url"], stored["digest"]) == (None, "json://127.0.0.1:9/erin", 0)
    # A new holder from the blank form: what is given, digest off unless asked.
    assert admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "frank",
                                                      "email": "f@example.org", "digest": "keep"}).status_code == 302
    assert (store.contact("frank")["email"], store.contact("frank")["digest"]) == ("f@example.org", 0)
    # remove_url with no e-mail left removes the contact, as before.
    assert admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "erin", "shown": "erin",
                                                      "remove_url": "on"}).status_code == 302
    assert store.contact("erin") is None
