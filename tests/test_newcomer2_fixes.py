"""Newcomer run 2 findings (2026-12-07, /work/wt/newcomer2-findings.md) on the server side:
F2 a time zone alone on /account, F3 GPU-hours ties in natural order, F4 e-mail contacts on a hub
without alerts.smtp, F9 rewritten host names, F10 odd input (zone case, trimmed searches, a
canned query's id that is not a number)."""

import logging
import sqlite3
import time

from reports import sample_report
from test_hub_datasette import Client, ingest
from test_notify import _csrf, _nudger, notify_hub  # noqa: F401  (fixture)
from test_notify_tz import _idle, _user

from server_monitor.auth.contacts import NotifyStore, check_tz


def host(client, name):
    """One report of ``name`` (any host name: sample_report's GPU UUIDs hold it) with one GPU."""
    assert ingest(client, sample_report(name, gpus=1, processes=1), client.token).status_code == 201, name


def _viewer(datasette, hub_config, name):
    _user(hub_config, name)
    client = Client(datasette)
    assert client.login(name, f"{name}-password-1").status_code == 302
    return client


def test_F2N_account_time_zone_alone_is_kept_and_the_page_says_so(admin, datasette, hub_config):
    """Finding 2: saving /account with only a time zone said "Contact saved." and stored nothing.
    Now the zone is kept (a contact with no address), the page says nothing is sent yet, and
    saving everything empty removes the contact and says that."""
    grace = _viewer(datasette, hub_config, "grace")
    store = NotifyStore(hub_config.auth_db_path)
    answer = grace.post("/account/contact", data={"csrftoken": _csrf(grace, "/account"), "email": "", "url": "",
                                                  "tz": "Asia/Tokyo"})
    assert answer.status_code == 302 and "contact=zone" in answer.headers["location"]
    stored = store.contact("grace")
    assert stored["tz"] == "Asia/Tokyo" and stored["email"] is None and stored["url"] is None
    page = grace.get("/account?contact=zone").text
    assert "Time zone saved" in page and "add an e-mail address or a chat URL" in page
    assert "Contact saved." not in page
    assert 'data-stored="1"' in page  # the "save the contact to keep it" note is no longer shown
    assert store.zones()["grace"] == "Asia/Tokyo"  # the idle panel's zones include it
    # An admin sees the holder in the list, with the zone.
    listed = admin.get("/admin#contacts").text
    assert 'data-holder="grace"' in listed and "Asia/Tokyo" in listed
    # Everything empty: removed, and said.
    answer = grace.post("/account/contact", data={"csrftoken": _csrf(grace, "/account"), "email": "", "tz": ""})
    assert "contact=removed" in answer.headers["location"]
    assert store.contact("grace") is None
    assert "you have no contact" in grace.get("/account?contact=removed").text


def test_F2N_zone_only_contact_gets_no_nudge_until_it_has_an_address(admin, hub_config):
    """A contact with only a zone is skipped by the nudge pass (no target, no failure); once an
    address is added the nudge goes out (here: no alerts.smtp, so the e-mail fails, recorded)."""
    _idle(admin, "zonenode", "hana")
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("hana", tz="Asia/Tokyo")
    nudger = _nudger(hub_config, quiet_hours=None)
    assert nudger.run_once()["nudged"] == []
    assert store.failures() == []
    store.edit_contact("hana", email="hana@example.org")
    assert store.contact("hana")["tz"] == "Asia/Tokyo"
    nudger.run_once()
    assert [f["target"] for f in store.failures()] == ["contact:hana:email"]


def test_F2N_no_smtp_warns_on_account_and_admin_and_the_idle_panel_says_the_nudge_failed(admin, datasette, hub_config):
    """Finding 4: on a hub without alerts.smtp an e-mail contact was taken without a word and
    every nudge failed silently ("Nudged –"). Now /account and /admin say the hub sends no
    e-mail, /admin marks the contact, and the dashboard carries the failed nudge to the panel."""
    assert not hub_config.get("alerts.smtp")
    ivan = _viewer(datasette, hub_config, "ivan")
    before = ivan.get("/account").text
    assert "This hub sends no e-mail (no alerts.smtp)" in before and "Add a chat URL or ask the admin" in before
    assert ivan.post("/account/contact", data={"csrftoken": _csrf(ivan, "/account"),
                                               "email": "ivan@example.org"}).status_code == 302
    assert "nothing reaches ivan@example.org" in ivan.get("/account?contact=saved").text
    listed = admin.get("/admin").text
    assert 'id="admin-contact-no-smtp"' in listed
    assert "ivan@example.org <span class=\"warn-text contact-no-smtp\">(no alerts.smtp: nothing is sent)" in listed
    # The nudge pass fails (recorded); the dashboard hands the failure to the idle panel.
    _idle(admin, "smtplessnode", "ivan")
    assert "data-failed=\"{}\"" in admin.get("/").text.replace("&#34;", '"')
    assert _nudger(hub_config, quiet_hours=None).run_once()["nudged"] == []
    store = NotifyStore(hub_config.auth_db_path)
    failed = store.failed_contacts()
    assert set(failed) == {"ivan"} and failed["ivan"] >= time.time() - 60
    page = admin.get("/").text.replace("&#34;", '"')
    assert f'data-failed="{{"ivan": {failed["ivan"]}}}"' in page
    # A later success clears it.
    store.record_ok("contact:ivan:email")
    assert store.failed_contacts() == {}


def test_F2N_smtp_hub_does_not_warn(notify_hub, hub_config):  # noqa: F811
    """With alerts.smtp set (tests/test_notify.py's loopback sink) nothing warns, and the
    dashboard's idle panel gets an empty map of failed nudges."""
    NotifyStore(hub_config.auth_db_path).set_contact("judy", "judy@example.org")
    page = notify_hub.get("/admin").text
    assert "admin-contact-no-smtp" not in page and "contact-no-smtp" not in page
    assert 'data-failed="{}"' in notify_hub.get("/").text


def test_F2N_time_zone_in_any_case_is_stored_canonically(admin, datasette, hub_config):
    """Finding 10: `europe/zurich` was refused. A name equal to one known zone but for case is
    stored in its canonical spelling; an unknown one is still a 400."""
    assert check_tz("europe/zurich") == "Europe/Zurich"
    assert check_tz(" ASIA/SHANGHAI ") == "Asia/Shanghai"
    assert check_tz("utc") == "UTC"
    kim = _viewer(datasette, hub_config, "kim")
    assert kim.post("/account/contact", data={"csrftoken": _csrf(kim, "/account"), "email": "kim@example.org",
                                              "tz": "europe/zurich"}).status_code == 302
    assert NotifyStore(hub_config.auth_db_path).contact("kim")["tz"] == "Europe/Zurich"
    assert kim.post("/account/contact", data={"csrftoken": _csrf(kim, "/account"), "email": "kim@example.org",
                                              "tz": "europe/zurichx"}).status_code == 400


def _usage(db, names, hours=0.17):
    """Equal GPU-hours (``hours`` each, in the last hour) for each server of ``names``."""
    conn = sqlite3.connect(db)
    hour = int(time.time()) // 3600 * 3600 - 3600
    for name in names:
        (sid,) = conn.execute("select id from servers where hostname = ?", (name,)).fetchone()
        (gid,) = conn.execute("select id from gpus where server_id = ? order by gpu_index limit 1", (sid,)).fetchone()
        conn.execute("insert into gpu_usage_1h (hour, server_id, gpu_id, user, container, gpu_seconds,"
                     " vram_mib_seconds, util_seconds, util_known_seconds, held_seconds) values (?,?,?,?,?,?,?,?,?,?)",
                     (hour, sid, gid, "natsort", "", hours * 3600, 0, 0, 0, hours * 3600))
    conn.commit()


NATURAL = ["dgx-a2", "DGX-A3", "dgx-a9", "dgx-a10", "dgx-a100", "gpu---7", "rack12-node-5"]


def test_F2N_gpu_hours_by_server_ties_in_natural_order(admin):
    """Finding 3: tied servers came in byte order (DGX-A3 first, dgx-a10 before dgx-a2). The
    JSON, the CSV and the daily query give them in natural order, after the larger ones."""
    for name in NATURAL[::-1] + ["big-node"]:
        host(admin, name)
    _usage(admin.db, NATURAL)
    _usage(admin.db, ["big-node"], hours=0.5)
    since = int(time.time()) - 86400
    rows = admin.get(f"/monitor/gpu_hours.json?by=server&since={since}&_shape=array").json()
    assert [r["owner"] for r in rows] == ["big-node"] + NATURAL
    csv = admin.get(f"/monitor/gpu_hours.csv?by=server&since={since}&_size=max").text.splitlines()
    assert [line.split(",")[0] for line in csv[1:]] == ["big-node"] + NATURAL
    daily = admin.get(f"/monitor/gpu_hours_daily.json?by=server&since={since}&_shape=array").json()
    assert [r["owner"] for r in daily] == ["big-node"] + NATURAL


def test_F2N_canned_query_id_or_hours_that_is_not_a_number_is_400(admin):
    """Finding 10: /monitor/disk_history.json?server_id=abc&hours=x answered 200 with no rows."""
    host(admin, "disk-node")
    for path in ("/monitor/disk_history.json?server_id=abc", "/monitor/disk_history.csv?server_id=abc",
                 "/monitor/disk_history?server_id=1e3", "/monitor/gpu_history.json?server_id=1&hours=x",
                 "/monitor/disk_history.json?server_id=1&hours=nan"):
        answer = admin.get(path)
        assert answer.status_code == 400, path
        name = "hours" if "hours=" in path else "server_id"
        assert answer.json()["error"].startswith(name + " must be"), answer.text
    assert "server_id must be an integer (an id), not 'abc'" in admin.get(
        "/monitor/disk_history.json?server_id=abc").json()["error"]
    for path in ("/monitor/disk_history.json?server_id=1&hours=24", "/monitor/disk_history.json?server_id=1&hours=",
                 "/monitor/disk_history.json?server_id=%201%20&hours=0.5", "/monitor/servers.json?hours=x"):
        assert admin.get(path).status_code == 200, path


def test_F2N_admin_searches_ignore_surrounding_spaces(admin):
    """Finding 10: /admin's server search " dgx-a10 " found nothing."""
    host(admin, "dgx-a10")
    page = admin.get("/admin?sq=%20dgx-a10%20#servers").text
    assert "No server matches" not in page and 'value="dgx-a10"' in page


def test_F2N_agent_logs_a_rewritten_host_name_once(caplog):
    """Finding 9: `gpu节点-7` was sent as `gpu---7` without a word. The agent logs it once (not
    every cycle) with both names; a name the hub takes is not logged."""
    from monitor_agent.host import HostCollector

    collector = HostCollector(machine_id="f" * 32, hostname="gpu节点-7")
    with caplog.at_level(logging.WARNING, logger="server_monitor.agent.host"):
        assert collector.collect()["host"]["hostname"] == "gpu---7"
        assert collector.collect()["host"]["hostname"] == "gpu---7"
    said = [r.getMessage() for r in caplog.records if r.name == "server_monitor.agent.host"]
    assert said == ["host name 'gpu节点-7' is sent as 'gpu---7': the hub takes only ASCII letters, digits, '.', '-'"
                    " and '_' (each other character becomes '-'); set hostname: in the agent config to choose the name"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="server_monitor.agent.host"):
        HostCollector(machine_id="e" * 32, hostname="dgx-a10").collect()
    assert [r for r in caplog.records if r.name == "server_monitor.agent.host"] == []
