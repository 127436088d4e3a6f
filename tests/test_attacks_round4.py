"""Round 4 attack run on this round's new surfaces: built-in rule overrides (``/admin/rules/builtin/<name>``,
``builtin_rule_overrides``), per-contact time zones (``notify_contacts.tz``) and ``servers.name_key``.
Each test is one finding, reproduced against the real hub process (``python -m server_monitor serve``)
over real HTTP where the surface is a page or a thread of that process, and fails on the code before
its fix. What was tried and held is listed in docs/security.md, *Round 4 attack run*."""

import json
import os
import signal
import sqlite3
import time
import urllib.parse

import pytest
import urllib3
from browser import launch
from conftest import ROOT, start_hub
from http_client import Browserless
from reports import sample_report
from test_attacks_tokens_sso import set_config
from test_notify import _nudger, notify_hub  # noqa: F401  (fixture)
from test_notify_tz import _idle, _mails

from server_monitor.auth.contacts import NotifyStore
from server_monitor.jobs import nudge


@pytest.fixture
def browser():
    """A Chromium per test here: B2 uses Datasette's test client (``asyncio.run``), which a
    file-wide Playwright (its event loop running) would refuse."""
    yield from launch()


@pytest.fixture
def real_hub(hub_config, tmp_path):
    """Start the real hub after the test has set its config: ``start()`` returns its base URL,
    ``start.stop()`` stops the hubs started so far (to start one again on the same files)."""
    procs = []

    def start():
        proc = start_hub(hub_config.path, tmp_path / f"hub{len(procs)}.log")
        procs.append(proc)
        return proc.base_url

    def stop():
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
                proc.log.close()

    start.stop = stop
    yield start
    stop()


def report(base, hub_config, hostname, machine_id):
    """POST one agent report for ``hostname`` (its own machine id and GPU UUID) with the agent token."""
    rep = sample_report(hostname=hostname, gpus=1, processes=0, disks=1)
    rep["host"]["machine_id"] = machine_id
    for gpu in rep["gpus"]:
        gpu["uuid"] = "GPU-" + machine_id[:32]
    answer = urllib3.PoolManager(retries=False).request(
        "POST", base + "/api/report", body=json.dumps(rep).encode(),
        headers={"Authorization": "Bearer " + hub_config.get("agent.token"), "Content-Type": "application/json"})
    assert answer.status == 201, answer.data
    return answer


def admin_client(base, hub_config):
    client = Browserless(base)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status == 302
    return client


def test_B1_one_bad_override_row_never_stops_every_alert(hub_config, real_hub, tmp_path):
    """Rows of ``builtin_rule_overrides`` written by hand (SQL, a restored or older copy) with
    text where numbers belong and targets that are not a JSON list of names: ``all_overrides``
    raised on every alert pass (json.loads, then ``"abc" * 60``/``str < int``), so no alert of
    any rule fired any more, and ``/admin/rules`` answered 500. Now a bad field is ignored (the
    rule follows config.yaml for it) and the row's good fields still apply."""
    set_config(hub_config, alerts={"enabled": True, "interval_s": 1})
    conn = sqlite3.connect(hub_config.db_path)
    from server_monitor.storage import schema
    schema.migrate(hub_config.db_path)
    conn.executemany(
        "INSERT INTO builtin_rule_overrides (rule, enabled, threshold, minutes, severity, targets, updated_by,"
        " updated_at) VALUES (?,?,?,?,?,?,'sql',0)",
        [("host_offline", 1, "abc", None, "info", "not json"),   # severity good, threshold and targets bad
         ("gpu_xid", 1, None, "abc", None, "5"),                  # minutes text, targets a JSON number
         ("disk_full", 1, -5, None, None, '{"a": 1}'),            # below its bounds, targets an object
         ("gpu_temperature", 1, 1e300, 10 ** 15, None, '["ok", 7]'),
         ("no_such_rule", 0, 1, 1, None, None)])
    # A rule of alert_rules whose targets a hand edit broke the same way.
    from server_monitor.storage import alert_rules
    with conn:
        rule_id = alert_rules.create(conn, alert_rules.parse({"name": "hot", "kind": "gpu_temperature", "scope": "all",
                                                              "severity": "warning",
                                                              "enabled": "on"}), "sql")
    conn.execute("UPDATE alert_rules SET targets = '[' WHERE id = ?", (rule_id,))
    conn.commit()
    base = real_hub()
    report(base, hub_config, "gone-host", "a" * 32)
    conn.execute("UPDATE servers SET last_seen = last_seen - 7200")
    conn.commit()
    deadline = time.time() + 20
    fired = None
    while time.time() < deadline and fired is None:
        fired = conn.execute("SELECT rule, severity FROM alerts WHERE rule = 'host_offline'").fetchone()
        time.sleep(0.5)
    assert fired == ("host_offline", "info"), (tmp_path / "hub0.log").read_text()[-3000:]
    page = admin_client(base, hub_config).request("GET", "/admin/rules")
    assert page.status == 200, page.data[-2000:]
    assert b"no_such_rule" not in page.data


def test_B2_a_stored_time_zone_this_hub_cannot_load_never_stops_nudges_or_pages(notify_hub, hub_config):  # noqa: F811
    """``notify_contacts.tz`` as restored from another auth.db or edited by hand: ``America``
    (a directory of the tz tree), a 300-character name (ENAMETOOLONG) and ``localtime`` (the
    machine's own zone, which /account refuses). ``zone_of`` let IsADirectoryError/OSError out:
    one such contact failed every nudge and digest pass for every holder, and /admin (quiet
    hours set) answered 500; ``localtime`` was used as a zone. Now a name this hub does not
    list is hub time, as the docstring says."""
    admin = notify_hub
    _idle(admin, "okhost", "alice")
    _idle(admin, "badhost", "bob")
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("alice", "alice@example.org", digest=True, tz="Europe/Zurich")
    store.set_contact("bob", "bob@example.org", digest=True)
    store.set_contact("carol", "carol@example.org", digest=True)
    store.set_contact("dave", "dave@example.org", digest=True)
    conn = sqlite3.connect(hub_config.auth_db_path)
    conn.executemany("UPDATE notify_contacts SET tz = ? WHERE holder = ?",
                     [("America", "bob"), ("x" * 300, "carol"), ("localtime", "dave")])
    conn.commit()
    for bad in ("America", "x" * 300, "Europe/" + "y" * 5000, "localtime", "posixrules", "../../etc/passwd"):
        assert nudge.zone_of(bad) is None, bad
        assert nudge.zone_label(bad) == "(hub time)"
    result = _nudger(hub_config, nudges=True, digest_hour=0, digest_weekday=time.localtime().tm_wday).run_once()
    assert set(result["nudged"]) == {"alice", "bob"}, result
    assert {"bob", "carol", "dave"} <= set(result["digests"]), result  # on hub time
    assert {"alice@example.org", "bob@example.org"} <= set(_mails(admin.sink))
    assert store.zones() == {"alice": "Europe/Zurich"}  # the dashboard's map: listed zones only
    # /admin lists the contacts with quiet hours set (the note reads each contact's zone).
    from server_monitor.serving import hub
    hour = time.localtime().tm_hour
    hub.context(admin.ds).config.data.setdefault("notifications", {}).update(
        {"nudges": True, "quiet_hours": [hour, (hour + 2) % 24]})
    page = admin.get("/admin")
    assert page.status_code == 200, page.text[-2000:]
    assert 'data-holder="carol"' in page.text
    row = page.text[page.text.index('data-holder="bob"'):page.text.index("</tr>", page.text.index('data-holder="bob"'))]
    assert "America" in row and "not a zone this hub knows: hub time" in row
    assert f"nudges held for quiet hours until {(hour + 2) % 24:02d}:00 (hub time)" in row  # on hub time


def test_B3_a_blob_or_non_utf8_server_name_never_stops_the_hub_starting(hub_config, real_hub, tmp_path):
    """A server name written by hand as a BLOB (``X'…'``, or ``CAST(… AS BLOB)`` as a copy tool
    may write) or as text that is not UTF-8: ``refresh_name_keys`` (run by every start) raised in
    ``natural_key()``, so the hub did not start at all. Now the key is built from the bytes (bad
    UTF-8 replaced) and the server is listed in natural order."""
    base = real_hub()
    for i, name in enumerate(("dgx-a9", "dgx-a10", "dgx-a100")):
        report(base, hub_config, name, f"{i + 1:032x}")
    conn = sqlite3.connect(hub_config.db_path)
    conn.execute("UPDATE servers SET display_name = CAST('dgx-a50' AS BLOB) WHERE hostname = 'dgx-a9'")
    conn.execute("UPDATE servers SET display_name = X'6467782dff' WHERE hostname = 'dgx-a10'")  # 'dgx-' + 0xff
    conn.execute("UPDATE servers SET hostname = CAST(X'6467782dff' AS TEXT) WHERE hostname = 'dgx-a100'")
    conn.execute("UPDATE servers SET name_key = NULL")
    conn.commit()
    real_hub.stop()
    base = real_hub()  # its start runs refresh_name_keys
    keys = dict(conn.execute("SELECT id, name_key FROM servers").fetchall())
    assert keys == {1: "dgx-a1250", 2: "dgx-\ufffd", 3: "dgx-\ufffd"}, keys
    admin = admin_client(base, hub_config)
    rows = json.loads(admin.request("GET", "/monitor/admin_servers.json?_shape=array").data)
    assert [r["server_id"] for r in rows] == [1, 2, 3], rows


def test_B4_natural_key_in_an_analysts_sql_stays_within_the_time_limit(hub_config, real_hub):
    """``natural_key()`` is Python inside SQL, where the analysts' 2 s time limit cannot stop it
    (as ``gpu_set()`` in the 227e0d8 review's N1): on a 16 MB string (the analysts' length
    limit) one call ran 3 s and three calls 11 s. Now only the first ``MAX_KEY_CHARS`` code
    points count: the key of a 16,000,000-character name is that of its first 1,024."""
    base = real_hub()
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.auth.accounts import Accounts
    from server_monitor.core import natural
    Accounts(hub_config.auth_db_path).create_user("ana", hash_password("correct horse battery", iterations=1000),
                                                  "analyst")
    analyst = Browserless(base)
    assert analyst.login("ana", "correct horse battery").status == 302
    sql = ("select length(natural_key(replace(hex(zeroblob(8000000)), '00', '1a'))) as n"
           " from (select 1 union all select 2 union all select 3)")
    started = time.monotonic()
    answer = analyst.request("GET", "/monitor.json?_shape=array&sql=" + urllib.parse.quote(sql))
    took = time.monotonic() - started
    assert answer.status == 200, (took, answer.data[:300])
    assert json.loads(answer.data) == [{"n": len(natural.sort_key("1a" * 512))}] * 3
    assert took < 5, took  # it was 11 s; the key work is now microseconds per call


@pytest.mark.browser
def test_B4_the_dashboards_key_cuts_long_names_as_the_stored_key_does(browser):
    """static/common.js's ``naturalKey`` cuts a long name at the same 1,024 code points (not
    UTF-16 units) as ``servers.name_key``, so the dashboard and /admin agree on long names."""
    from server_monitor.core import natural
    names = ["1" * 5000, "a" * 1023 + "😀" * 10, "😀" * 1500 + "9", "dgx-" + "9" * 2000, "x" * 1024 + "1",
             "x" * 1024 + "2", "İ" * 1100]
    page = browser.new_page()
    try:
        page.set_content("<!doctype html><html><body></body></html>")
        page.add_script_tag(path=os.path.join(ROOT, "static", "common.js"))
        keys = page.evaluate("(names) => names.map((n) => naturalKey(n))", names)
        assert keys == [natural.sort_key(n) for n in names]
        assert keys[4] == keys[5] == "x" * 1024  # names equal in their first 1,024 code points tie
        assert len(keys[2]) == 1024  # code points, not UTF-16 units: 1,024 emoji kept whole
    finally:
        page.close()
