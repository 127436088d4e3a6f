"""Alert rules made in /admin (issue 26 item 2), scoped by host group (issue 24 item 1), and the
host-offline alert that follows the agent's own reporting interval.

The engine tests run the hub's AlertEngine on a real monitor.db grown through the ingest write
path (validate_report + store_report); the HTTP tests drive /admin/rules through Datasette with
a logged-in admin (CSRF token from the page) and a viewer.
"""

import json
import re
import time

import pytest
from datasette_auth_passwords.utils import hash_password
from reports import sample_report
from test_hub_datasette import Client, ingest

from server_monitor.jobs import alerts
from server_monitor.storage import alert_rules, schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report


class Recorder:
    """A Notifier stand-in that keeps what it was asked to send (delivery is the notify branch's)."""

    def __init__(self):
        self.sent = []

    def send(self, event, alert):
        self.sent.append((event, dict(alert)))
        return True


class Cfg:
    def __init__(self, **values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


@pytest.fixture
def hub(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    recorder = Recorder()
    engine = alerts.AlertEngine(path, alerts.settings(Cfg()), notifier=recorder)
    conn = schema.connect(path)
    yield engine, recorder, conn
    conn.close()


def put(conn, report, received):
    store_report(conn, validate_report(report), received)


def host(name, t, groups=None, temperature=None, utilization=None, capture="h100-80gb", interval=None, gpus=1):
    report = sample_report(name, gpus=gpus, processes=0, sample_time=t, capture=capture)
    report["sent_at"] = t  # sent when sampled (no replay, no clock skew)
    if groups is not None:
        report["groups"] = groups
    if interval is not None:
        report["interval"] = interval
    for gpu in report["gpus"]:
        if temperature is not None:
            gpu["temperature.gpu"] = temperature
        if utilization is not None:
            gpu["utilization.gpu"] = utilization
    return report


def make_rule(conn, **form):
    fields = alert_rules.parse(dict({"severity": "warning", "enabled": "on"}, **form))
    with conn:
        return alert_rules.create(conn, fields, "admin")


def rule_keys(result, rule_id):
    return sorted(k for k in result["fired"] if k.startswith(f"rule{rule_id}:"))


def server_id(conn, name):
    return conn.execute("SELECT id FROM servers WHERE hostname = ?", (name,)).fetchone()[0]


# ---- evaluation -------------------------------------------------------------------------------

def test_item2_rule_scoped_to_group_covers_a_new_server(hub):
    engine, recorder, conn = hub
    now = int(time.time())
    put(conn, host("a-01", now, groups=["cluster-a"], temperature=80), now)
    put(conn, host("b-01", now, groups=["cluster-b"], temperature=80), now)
    rule = make_rule(conn, name="hot in A", kind="gpu_temperature", threshold="75", scope="group",
                     scope_group="cluster-a", severity="critical", targets="team-a, oncall")
    first = engine.run_once(now)
    assert [k.split(":")[1] for k in rule_keys(first, rule)] == [str(server_id(conn, "a-01"))]
    # A server that joins the group later is covered on the next pass, with no edit of the rule;
    # one of another group never is.
    put(conn, host("a-02", now + 30, groups=["cluster-a"], temperature=81), now + 30)
    put(conn, host("b-02", now + 30, groups=["cluster-b"], temperature=99), now + 30)
    second = engine.run_once(now + 30)
    assert [k.split(":")[1] for k in rule_keys(second, rule)] == [str(server_id(conn, "a-02"))]
    fired = [a for e, a in recorder.sent if a.get("rule_id") == rule]
    assert {a["server_id"] for a in fired} == {server_id(conn, "a-01"), server_id(conn, "a-02")}
    # The rule's severity and targets travel with each alert (the Notifier routes by them).
    assert all(a["severity"] == "critical" and a["targets"] == ["team-a", "oncall"] for a in fired)
    assert all("[rule hot in A]" in a["message"] for a in fired)
    stored = conn.execute("SELECT DISTINCT server_id FROM alerts WHERE rule_id = ?", (rule,)).fetchall()
    assert {s for (s,) in stored} == {server_id(conn, "a-01"), server_id(conn, "a-02")}


def test_item2_rule_duration_waits_until_the_condition_held_that_long(hub):
    engine, recorder, conn = hub
    t0 = int(time.time()) - 3600
    rule = make_rule(conn, name="idle 10 min", kind="gpu_idle_held", threshold="5", duration_minutes="10")
    for minute in range(0, 6):
        put(conn, host("idle-1", t0 + 60 * minute, utilization=0), t0 + 60 * minute)
    assert rule_keys(engine.run_once(t0 + 300), rule) == []  # idle for 5 of the 10 minutes
    for minute in range(6, 12):
        put(conn, host("idle-1", t0 + 60 * minute, utilization=0), t0 + 60 * minute)
    assert rule_keys(engine.run_once(t0 + 660), rule) == [f"rule{rule}:{server_id(conn, 'idle-1')}:gpu1"]
    row = conn.execute("SELECT started_at, message FROM alerts WHERE rule_id = ?", (rule,)).fetchone()
    assert row[0] == t0  # the onset read from history, not the time it was first seen
    assert "held idle" in row[1] and "for 10 min" in row[1]
    # One busy sample ends it; it fires again only after 10 more idle minutes.
    put(conn, host("idle-1", t0 + 720, utilization=60), t0 + 720)
    assert engine.run_once(t0 + 720)["resolved"] == [f"rule{rule}:{server_id(conn, 'idle-1')}:gpu1"]
    for minute in range(13, 20):
        put(conn, host("idle-1", t0 + 60 * minute, utilization=0), t0 + 60 * minute)
    assert rule_keys(engine.run_once(t0 + 19 * 60), rule) == []


def test_item2_unknown_utilization_is_never_held_idle(hub):
    engine, _, conn = hub
    now = int(time.time())
    make_rule(conn, name="idle now", kind="gpu_idle_held", threshold="5")
    report = host("mig-1", now)
    report["gpus"][0]["utilization.gpu"] = None  # MIG / [N/A]: unknown, not 0 %
    put(conn, report, now)
    assert engine.run_once(now)["fired"] == []


def test_item2_disabled_rule_never_fires_and_disabling_ends_its_alerts_quietly(hub):
    engine, recorder, conn = hub
    now = int(time.time())
    put(conn, host("hot-1", now, temperature=90), now)
    off = make_rule(conn, name="off", kind="gpu_temperature", threshold="50", enabled="")
    on = make_rule(conn, name="on", kind="gpu_temperature", threshold="50", enabled="on")
    first = engine.run_once(now)
    assert rule_keys(first, off) == [] and len(rule_keys(first, on)) == 1
    with conn:
        alert_rules.set_enabled(conn, on, False, "admin")
    sent = len(recorder.sent)
    assert len(engine.run_once(now + 60)["resolved"]) == 1
    assert recorder.sent[sent:] == []  # the rule went, the condition did not clear: no "resolved"
    assert not conn.execute("SELECT count(*) FROM alerts WHERE rule_id = ?", (off,)).fetchone()[0]


def test_item2_config_defaults_still_fire_beside_rules(hub):
    engine, recorder, conn = hub
    now = int(time.time())
    for minute in range(7):
        put(conn, host("hot-2", now - 360 + 60 * minute, temperature=90), now - 360 + 60 * minute)
    rule = make_rule(conn, name="warm", kind="gpu_temperature", threshold="70", severity="info")
    fired = engine.run_once(now)["fired"]
    sid = server_id(conn, "hot-2")
    # The built-in rule of config.yaml (85 °C for 5 min) fires as before, with its own key,
    # severity and no targets; the rule made in /admin fires beside it.
    assert f"gpu_temperature:{sid}:gpu1" in fired and f"rule{rule}:{sid}:gpu1" in fired
    builtin = [a for e, a in recorder.sent if a["rule"] == "gpu_temperature" and "rule_id" not in a]
    assert builtin and builtin[0]["severity"] == "warning" and "targets" not in builtin[0]
    assert [r["rule"] for r in alerts.builtin_rules(engine.cfg)][:1] == ["host_offline"]


def test_item2_gpu_model_filter_memory_and_server_scope(hub):
    engine, _, conn = hub
    now = int(time.time())
    put(conn, host("h100-1", now), now)
    put(conn, host("h200-1", now, capture="h200"), now)
    put(conn, host("h200-2", now, capture="h200"), now)
    # The captures' memory.used / memory.total: the memory rule at 1 % fires for every GPU.
    model = make_rule(conn, name="h200 memory", kind="gpu_memory", threshold="1", gpu_model="h200")
    one = make_rule(conn, name="one host", kind="gpu_memory", threshold="1", scope="server",
                    scope_server_id=str(server_id(conn, "h100-1")))
    fired = engine.run_once(now)["fired"]
    assert sorted(k.split(":")[1] for k in rule_keys({"fired": fired}, model)) == sorted(
        str(server_id(conn, n)) for n in ("h200-1", "h200-2"))
    assert [k.split(":")[1] for k in rule_keys({"fired": fired}, one)] == [str(server_id(conn, "h100-1"))]


def test_item2_host_offline_and_health_rules_on_a_group(hub):
    engine, _, conn = hub
    now = int(time.time())
    put(conn, host("gone-a", now - 1200, groups=["rack-1"]), now - 1200)
    put(conn, host("gone-b", now - 1200, groups=["rack-2"]), now - 1200)
    broken = host("bad-a", now, groups=["rack-1"])
    broken["gpus"][0]["ecc.errors.uncorrected.volatile.total"] = 3
    put(conn, broken, now)
    offline = make_rule(conn, name="rack-1 down", kind="host_offline", threshold="10", scope="group",
                        scope_group="rack-1", severity="critical")
    health = make_rule(conn, name="rack-1 health", kind="gpu_health", scope="group", scope_group="rack-1")
    fired = engine.run_once(now)["fired"]
    assert rule_keys({"fired": fired}, offline) == [f"rule{offline}:{server_id(conn, 'gone-a')}:"]
    assert [k.split(":", 1)[1] for k in rule_keys({"fired": fired}, health)] == [
        f"{server_id(conn, 'bad-a')}:gpu3"]


# ---- the host-offline alert and the agent's reporting interval ---------------------------------

def test_item2_offline_alert_waits_for_the_agents_own_interval(hub):
    engine, _, conn = hub
    now = int(time.time())
    put(conn, host("slow-agent", now - 360, interval=300), now - 360)  # reports every 5 min, last 6 min ago
    put(conn, host("fast-agent", now - 360, interval=30), now - 360)
    fired = engine.run_once(now)["fired"]
    # Before: both "offline" after 5 min. Now the 300 s agent is offline only after 4 of its
    # intervals (20 min); the 30 s agent still after alerts.host_offline_minutes.
    assert fired == [f"host_offline:{server_id(conn, 'fast-agent')}:"]
    assert engine.run_once(now + 1200 - 360 + 1)["fired"] == [f"host_offline:{server_id(conn, 'slow-agent')}:"]
    message = conn.execute("SELECT message FROM alerts WHERE key = ?",
                           (f"host_offline:{server_id(conn, 'slow-agent')}:",)).fetchone()[0]
    assert "it reports every 300 s" in message
    assert alerts.offline_after_s(5, 300) == 1200 and alerts.offline_after_s(5, 30) == 300


# ---- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("form, field", [
    ({"kind": "gpu_temperature", "threshold": "hot"}, "threshold"),
    ({"kind": "gpu_temperature", "threshold": "500"}, "threshold"),
    ({"kind": "gpu_temperature", "threshold": "nan"}, "threshold"),
    # float() takes each of these; a threshold is an ASCII decimal number as typed, nothing else
    ({"kind": "gpu_temperature", "threshold": "8_0"}, "threshold"),
    ({"kind": "gpu_temperature", "threshold": "\u0668\u0668"}, "threshold"),  # Arabic-Indic 88
    ({"kind": "gpu_temperature", "threshold": "-inf"}, "threshold"),
    ({"kind": "gpu_temperature", "threshold": "1e999"}, "threshold"),
    ({"kind": "cpu_magic"}, "kind"),
    ({"kind": "host_offline", "duration_minutes": "5"}, "duration_minutes"),
    ({"kind": "gpu_memory", "duration_minutes": "-1"}, "duration_minutes"),
    ({"kind": "gpu_memory", "duration_minutes": "\u00b2"}, "duration_minutes"),  # a digit to isdigit(), not to int()
    ({"kind": "gpu_memory", "scope": "server", "scope_server_id": "9" * 30}, "scope_server_id"),
    ({"kind": "gpu_memory", "severity": "page-me"}, "severity"),
    ({"kind": "gpu_memory", "scope": "group", "scope_group": "bad name!"}, "scope_group"),
    ({"kind": "gpu_memory", "scope": "server", "scope_server_id": "x"}, "scope_server_id"),
    ({"kind": "disk_full", "gpu_model": "H100"}, "gpu_model"),
    ({"kind": "gpu_health", "threshold": "3"}, "threshold"),
    ({"kind": "gpu_memory", "targets": "ok, <script>"}, "targets"),
    ({"kind": "gpu_memory", "name": "two\nlines"}, "name"),
])
def test_item2_bad_rule_input_names_the_field(form, field):
    with pytest.raises(alert_rules.RuleError) as err:
        alert_rules.parse(dict({"name": "r", "severity": "warning"}, **form))
    assert err.value.field == field and str(err.value).startswith(field + ":")


# ---- /admin/rules over HTTP --------------------------------------------------------------------

def csrf(client, path="/admin/rules"):
    return re.search(r'name="csrftoken" value="([^"]+)"', client.get(path).text).group(1)


def test_item2_rule_crud_and_dry_run_through_http_as_admin(admin, hub_config, datasette):
    from server_monitor.serving import hub

    # The rule's target must exist (the Notifier routes by name): one added as on /admin.
    hub.context(datasette).notify_store.add_target("team-a", "json://127.0.0.1:9/hook", ["critical"])
    now = time.time()
    for name, group, temp in (("gpu-a1", "cluster-a", 88), ("gpu-b1", "cluster-b", 88)):
        assert ingest(admin, host(name, now, groups=[group], temperature=temp), admin.token).status_code == 201
    token = csrf(admin)
    form = {"csrftoken": token, "name": "A hot", "kind": "gpu_temperature", "threshold": "80",
            "duration_minutes": "0", "severity": "critical", "scope": "group", "scope_group": "cluster-a",
            "targets": "team-a", "enabled": "on"}
    created = admin.post("/admin/rules", data=form)
    assert created.status_code == 302, created.text
    rule_id = int(re.search(r"saved=(\d+)", created.headers["location"]).group(1))
    page = admin.get("/admin/rules")
    assert page.status_code == 200 and "A hot" in page.text and "group cluster-a" in page.text
    assert 'id="builtin-table"' in page.text and "gpu_temperature" in page.text
    # Dry run: evaluated now, nothing stored or sent.
    tested = admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "test"})
    assert tested.status_code == 200
    assert "1</strong> alert would fire" in tested.text and "gpu-a1" in tested.text and "gpu-b1" not in tested.text
    db = schema.connect(admin.db)
    assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
    # Edit: the form is filled; the change is stored with who made it.
    assert 'value="A hot"' in admin.get(f"/admin/rules?edit={rule_id}").text
    edited = admin.post(f"/admin/rules/{rule_id}", data=dict(form, action="update", threshold="95"))
    assert edited.status_code == 302
    assert db.execute("SELECT threshold, updated_by FROM alert_rules WHERE id = ?", (rule_id,)).fetchone() == (
        95.0, hub_config.get("auth.username"))
    nothing = admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "test"})
    assert "Nothing would fire now." in nothing.text
    assert admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "disable"}).status_code == 302
    assert db.execute("SELECT enabled FROM alert_rules WHERE id = ?", (rule_id,)).fetchone() == (0,)
    assert admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "enable"}).status_code == 302
    assert db.execute("SELECT enabled FROM alert_rules WHERE id = ?", (rule_id,)).fetchone() == (1,)
    # Bad input: 400 with the page and a message naming the field, nothing stored.
    bad = admin.post("/admin/rules", data=dict(form, name="other", threshold="very hot"))
    assert bad.status_code == 400 and "threshold: " in bad.text and 'value="very hot"' in bad.text
    nowhere = admin.post("/admin/rules", data=dict(form, name="other", targets="team-a, team-z"))
    assert nowhere.status_code == 400 and "targets: no notification target is named &#39;team-z&#39;" in nowhere.text
    taken = admin.post("/admin/rules", data=dict(form))
    assert taken.status_code == 400 and "name: a rule named" in taken.text
    unknown_server = admin.post("/admin/rules", data=dict(form, name="x", scope="server", scope_server="nope"))
    assert unknown_server.status_code == 400 and "scope_server_id: choose an existing server" in unknown_server.text
    by_name = admin.post("/admin/rules", data=dict(form, name="one host", scope="server", scope_server="gpu-b1"))
    assert by_name.status_code == 302
    assert admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "explode"}).status_code == 400
    assert admin.post("/admin/rules/99999", data={"csrftoken": token, "action": "test"}).status_code == 404
    assert admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "delete"}).status_code == 302
    assert db.execute("SELECT count(*) FROM alert_rules WHERE id = ?", (rule_id,)).fetchone() == (0,)
    # Numbers no SQLite integer holds, or digits int() refuses: a message, never a 500.
    huge = "9" * 30
    assert admin.post(f"/admin/rules/{huge}", data={"csrftoken": token, "action": "test"}).status_code == 404
    assert admin.get(f"/admin/rules?edit={huge}").status_code == 404
    assert admin.get("/admin/rules?edit=%C2%B2").status_code == 404
    odd = admin.post("/admin/rules", data=dict(form, name="odd", scope="server", scope_server=huge))
    assert odd.status_code == 400 and "scope_server_id:" in odd.text
    odd = admin.post("/admin/rules", data=dict(form, name="odd", duration_minutes="\u00b2"))
    assert odd.status_code == 400 and "duration_minutes:" in odd.text
    # Without the CSRF token nothing is written.
    assert admin.post("/admin/rules", data=dict(form, csrftoken="", name="forged")).status_code == 403
    assert db.execute("SELECT count(*) FROM alert_rules WHERE name = 'forged'").fetchone() == (0,)
    db.close()


def logged_in_viewer(datasette):
    """A viewer account ``vera`` logged in to ``datasette`` (a Client), and its CSRF token."""
    from server_monitor.serving import hub

    hub.context(datasette).accounts.create_user("vera", hash_password("correct horse battery", iterations=1000),
                                                "viewer")
    viewer = Client(datasette)
    assert viewer.login("vera", "correct horse battery").status_code == 302
    return viewer, csrf(viewer, "/account")


def test_item2_rules_pages_refuse_viewers(datasette, admin):
    viewer, token = logged_in_viewer(datasette)
    assert viewer.get("/admin/rules").status_code == 403
    refused = viewer.post("/admin/rules", data={"csrftoken": token, "name": "mine", "kind": "gpu_memory",
                                               "severity": "info"})
    assert refused.status_code == 403
    assert viewer.post("/admin/rules/1", data={"csrftoken": token, "action": "delete"}).status_code == 403
    db = schema.connect(admin.db)
    assert db.execute("SELECT count(*) FROM alert_rules").fetchone() == (0,)
    db.close()


def test_item2_renamed_target_keeps_its_rules_and_a_target_in_use_is_not_deleted(admin, datasette):
    """A target renamed on /admin stays the target of the rules that named it (they would otherwise
    send to a name that no longer exists); deleting a target that rules name is refused, naming them."""
    from server_monitor.serving import hub

    hub.context(datasette).notify_store.add_target("team-a", "json://127.0.0.1:9/hook", ["critical"])
    token = csrf(admin)
    form = {"csrftoken": token, "name": "A hot", "kind": "gpu_temperature", "threshold": "80",
            "duration_minutes": "0", "severity": "critical", "scope": "all", "targets": "other-x, TEAM-A",
            "enabled": "on"}
    hub.context(datasette).notify_store.add_target("other-x", "json://127.0.0.1:9/other", [])
    assert admin.post("/admin/rules", data=form).status_code == 302
    renamed = admin.post("/admin/notify/targets", data={"csrftoken": token, "action": "update", "name": "team-a",
                                                         "new_name": "team-alpha", "url": ""})
    assert renamed.status_code == 302
    db = schema.connect(admin.db)
    assert json.loads(db.execute("SELECT targets FROM alert_rules WHERE name = 'A hot'").fetchone()[0]) == [
        "other-x", "team-alpha"]
    refused = admin.post("/admin/notify/targets", data={"csrftoken": token, "action": "delete", "name": "team-alpha"})
    assert refused.status_code == 400 and "A hot" in refused.text
    assert "team-alpha" in [t["name"] for t in hub.context(datasette).notify_store.targets()]
    rule_id = db.execute("SELECT id FROM alert_rules WHERE name = 'A hot'").fetchone()[0]
    assert admin.post(f"/admin/rules/{rule_id}", data={"csrftoken": token, "action": "delete"}).status_code == 302
    assert admin.post("/admin/notify/targets", data={"csrftoken": token, "action": "delete",
                                                     "name": "team-alpha"}).status_code == 302
    assert "team-alpha" not in [t["name"] for t in hub.context(datasette).notify_store.targets()]
    db.close()
