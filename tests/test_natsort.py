"""Servers in natural order everywhere, /admin included, at any fleet size: the stored sort key
``servers.name_key`` (migration 29), the SQL function ``natural_key()`` and the dashboard's
``naturalCompare`` (static/common.js) are one key (server_monitor/core/natural.py)."""

import os
import random
import re
import sqlite3

import pytest
from browser import push
from conftest import ROOT
from http_client import Browserless
from reports import sample_report

from server_monitor.core import natural
from server_monitor.serving.queries import QUERIES
from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report

# Hostile and edge names: case, leading zeros, digit runs past 20 and 30 digits, punctuation next
# to digits, Unicode letters (final sigma, sharp s, CJK), digits that are not ASCII (Arabic-Indic,
# mathematical), code points past U+FFFF next to U+FFFF (UTF-16 order differs there), empty.
HOSTILE = [
    "dgx-a100", "DGX-A11", "dgx-a9", "dgx-a10", "dgx-a007", "dgx-a7", "dgx-A7", "",
    "n" + "9" * 29, "n1" + "0" * 30, "n" + "0" * 40, "n0", "n1", "n01", "n" + "1" * 21, "n" + "2" * 20,
    "a-1", "a.1", "a_1", "a1", "A1", "a 1", "a10b2", "a10b10", "a9b99",
    "ΣΊΣΥΦΟΣ", "σίσυφος", "straße", "STRASSE", "Ärger-2", "ärger-10", "é-node", "e-node", "f-node",
    "节点10", "节点9", "node-٣", "node-3", "node-𝟘", "node-\uffff", "node-😀-2", "node-😀-10",
]


def test_natsort_key_orders_numbers_of_any_length():
    """Digit runs compare as numbers at any length (the old key padded to 20 digits and compared
    longer runs as text), leading zeros and case do not matter, punctuation < digits < letters."""
    key = natural.sort_key
    assert key("dgx-a9") < key("dgx-a10") < key("DGX-A11") < key("dgx-a100")
    assert key("n" + "9" * 29) < key("n1" + "0" * 30)            # 29 nines < 10^30
    assert key("n" + "2" * 20) < key("n" + "1" * 21)              # 20 digits < 21 digits
    assert key("n" + "0" * 40) == key("n0") < key("n1") == key("n01")
    assert key("dgx-a007") == key("dgx-a7") == key("DGX-A7")
    assert key("a9b99") < key("a10b2") < key("a10b10")
    assert key("a-1") < key("a1") < key("ab")
    assert key("ΣΊΣΥΦΟΣ") == key("σίσυφος")                      # case of non-ASCII letters too
    assert key("node-٣") != key("node-3")                         # only ASCII digits are numbers
    assert key(None) == key("") == ""
    assert key("DGX-A10") == "dgx-a1210" and key("dgx-a9") == "dgx-a119"


def test_natsort_sqlite_binary_order_is_the_key_order():
    """What the index holds (the key, compared BINARY as UTF-8) orders like the Python key (code
    points), and natural_key() in SQL is the same function."""
    conn = sqlite3.connect(":memory:")
    natural.register(conn)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, k TEXT)")
    conn.executemany("INSERT INTO t (name, k) VALUES (?, ?)", [(n, natural.sort_key(n)) for n in HOSTILE])
    by_column = [n for (n,) in conn.execute("SELECT name FROM t ORDER BY k, id")]
    by_function = [n for (n,) in conn.execute("SELECT name FROM t ORDER BY natural_key(name), id")]
    assert by_column == by_function == sorted(HOSTILE, key=natural.sort_key)
    position = {name: i for i, name in enumerate(by_column)}
    assert position["n" + "2" * 20] < position["n" + "1" * 21] and position["n" + "9" * 29] < position["n1" + "0" * 30]
    assert position["dgx-a9"] < position["dgx-a10"] < position["DGX-A11"] < position["dgx-a100"]
    assert position["node-\uffff"] < position["node-😀-2"] < position["node-😀-10"]  # code points, as UTF-8 bytes


@pytest.mark.browser
def test_natsort_js_naturalcompare_is_the_stored_key(browser):
    """static/common.js builds the same key (naturalKey) and sorts as SQLite sorts the column
    (naturalCompare; Intl.Collator disagreed on punctuation, accents and long numbers)."""
    page = browser.new_page()
    try:
        page.set_content("<!doctype html><html><body></body></html>")
        page.add_script_tag(path=os.path.join(ROOT, "static", "common.js"))
        keys = page.evaluate("(names) => names.map((n) => naturalKey(n))", HOSTILE)
        assert keys == [natural.sort_key(n) for n in HOSTILE]
        assert page.evaluate("() => naturalKey(null) === '' && naturalKey(undefined) === ''")
        shuffled = random.Random(7).sample(HOSTILE, len(HOSTILE))
        in_js = page.evaluate("(names) => [...names].sort(naturalCompare)", shuffled)
        assert in_js == sorted(shuffled, key=natural.sort_key)
        signs = page.evaluate("(names) => names.map((a) => names.map((b) => Math.sign(naturalCompare(a, b))))", HOSTILE)
        for a, row in zip(HOSTILE, signs):
            for b, sign in zip(HOSTILE, row):
                ka, kb = natural.sort_key(a), natural.sort_key(b)
                assert sign == (ka > kb) - (ka < kb), (a, b)
    finally:
        page.close()


def _report(name, machine_id=None):
    return sample_report(name, gpus=1, processes=0, disks=1, machine_id=machine_id or "m-" + name)


def _admin_hostnames(admin, query=""):
    html = admin.request("GET", "/admin" + query).data.decode()
    table = html[html.index('id="server-table"'):html.index("</table>", html.index('id="server-table"'))]
    return re.findall(r"<tr><td>([^<]*)<br><span class=\"muted\">#\d+", table)


def test_natsort_admin_lists_servers_in_natural_order(hub_process, hub_config):
    """/admin's server list (pages of 50) in natural order, page 2 going on where page 1 ended;
    a display name set in /admin and a host name changed by the agent move the server at once."""
    names = [f"dgx-a{i}" for i in range(1, 56) if i != 11] + ["DGX-A11", "dgx-a100"]
    for name in random.Random(3).sample(names, len(names)):  # ids in no useful order
        push(hub_process, hub_config, _report(name))
    expected = sorted(names, key=natural.sort_key)
    assert expected[8:12] == ["dgx-a9", "dgx-a10", "DGX-A11", "dgx-a12"] and expected[-1] == "dgx-a100"
    admin = Browserless(hub_process.base_url)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    assert _admin_hostnames(admin) == expected[:50]
    assert _admin_hostnames(admin, "?sp=2") == expected[50:]
    assert _admin_hostnames(admin, "?sq=dgx-a1") == [n for n in expected if n.lower().startswith("dgx-a1")]

    # An admin's display name: dgx-a100 shown as "dgx-a0" comes first everywhere.
    servers = admin.request("GET", "/monitor/servers.json?_shape=array&_size=max").json()
    assert [s["name"] for s in servers] == expected
    ids = {s["hostname"]: s["server_id"] for s in servers}
    page = admin.request("GET", "/admin").data.decode()
    token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
    done = admin.request("POST", "/monitor/admin_set_server", encode_multipart=False, fields={
        "csrftoken": token, "server_id": str(ids["dgx-a100"]), "display_name": "dgx-a0", "status": "active",
        "status_note": ""})
    assert done.status == 302, done.data
    assert _admin_hostnames(admin)[:2] == ["dgx-a100", "dgx-a1"]
    # The agent of dgx-a2 now reports the host name dgx-a99: after dgx-a55, on page 2.
    push(hub_process, hub_config, _report("dgx-a99", machine_id="m-dgx-a2"))
    now = ["dgx-a0"] + [n for n in expected if n not in ("dgx-a2", "dgx-a100")] + ["dgx-a99"]
    servers = admin.request("GET", "/monitor/servers.json?_shape=array&_size=max").json()
    assert [s["name"] for s in servers] == now
    assert _admin_hostnames(admin, "?sp=2")[-1] == "dgx-a99"
    # Display name cleared: back to its host name's place, last.
    admin.request("POST", "/monitor/admin_set_server", encode_multipart=False, fields={
        "csrftoken": token, "server_id": str(ids["dgx-a100"]), "display_name": " ", "status": "active",
        "status_note": ""})
    assert _admin_hostnames(admin, "?sp=2")[-2:] == ["dgx-a99", "dgx-a100"]
    conn = sqlite3.connect(hub_config.db_path)
    rows = conn.execute("SELECT coalesce(display_name, hostname), name_key FROM servers").fetchall()
    assert all(key == natural.sort_key(name) for name, key in rows), rows


def test_natsort_migration_fills_the_key_of_an_old_database(tmp_path, monkeypatch):
    """A database at the previous version (28) gets name_key for every server (display name first)
    and the index (name_key, id) in place of servers_name; a name written later without its key
    (a hand edit) is put right at the next start."""
    path = str(tmp_path / "monitor.db")
    full = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", full[:28])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 28)
    schema.migrate(path)
    conn = sqlite3.connect(path)
    old_names = ["dgx-a10", "dgx-a9", "DGX-A100", "n" + "9" * 25, "n1" + "0" * 25]
    for i, name in enumerate(old_names):
        conn.execute("INSERT INTO servers (machine_id, hostname, first_seen, last_seen) VALUES (?, ?, 1, 1)",
                     (f"m{i}", name))
    conn.execute("UPDATE servers SET display_name = 'Lab 2' WHERE hostname = 'dgx-a9'")
    conn.commit()
    conn.close()
    monkeypatch.setattr(schema, "MIGRATIONS", full)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(full))
    assert schema.migrate(path) == 28
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT hostname, display_name, name_key FROM servers").fetchall()
    assert all(key == natural.sort_key(display or host) for host, display, key in rows), rows
    order = [h for (h,) in conn.execute("SELECT hostname FROM servers ORDER BY name_key, id")]
    assert order == ["dgx-a10", "DGX-A100", "dgx-a9", "n" + "9" * 25, "n1" + "0" * 25]  # dgx-a9 shown as "Lab 2"
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'servers'")}
    assert "servers_name_key" in indexes and "servers_name" not in indexes
    # A hand edit of the name leaves the key stale until the next start (migrate) puts it right.
    conn.execute("UPDATE servers SET hostname = 'dgx-a1' WHERE hostname = 'dgx-a10'")
    conn.commit()
    schema.migrate(path)
    assert conn.execute("SELECT name_key FROM servers WHERE hostname = 'dgx-a1'").fetchone()[0] == "dgx-a111"
    # New hosts through the ingest path get their key with the row.
    writer = schema.connect(path)
    store_report(writer, validate_report(_report("dgx-a5")), int(__import__("time").time()))
    assert writer.execute("SELECT name_key FROM servers WHERE hostname = 'dgx-a5'").fetchone()[0] == "dgx-a115"
    # Named by the admin (the canned query's SQL on a hub writer), then renamed by its agent: the
    # name shown is still the admin's, and so is the key.
    sql = QUERIES["admin_set_server"]["sql"]
    server_id = writer.execute("SELECT id FROM servers WHERE hostname = 'dgx-a5'").fetchone()[0]
    writer.execute(sql, {"display_name": " Rack 7 ", "status": "active", "status_note": "", "server_id": str(server_id)})
    assert writer.execute("SELECT name_key FROM servers WHERE id = ?", (server_id,)).fetchone()[0] == "rack 117"
    store_report(writer, validate_report(_report("dgx-a6", machine_id="m-dgx-a5")), int(__import__("time").time()) + 1)
    assert writer.execute("SELECT hostname, name_key FROM servers WHERE id = ?", (server_id,)).fetchone() == (
        "dgx-a6", "rack 117")
    writer.execute(sql, {"display_name": "", "status": "active", "status_note": "", "server_id": str(server_id)})
    assert writer.execute("SELECT name_key FROM servers WHERE id = ?", (server_id,)).fetchone()[0] == "dgx-a116"
    writer.close()


def test_natsort_admin_page_walks_the_index_at_10000_servers(tmp_path):
    """/admin's server page (admin_servers) and the server lists (servers, fleet_servers) read
    servers in index order: no sort of the fleet, no per-row function, with statistics gathered."""
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = sqlite3.connect(path)
    natural.register(conn)
    conn.executemany("INSERT INTO servers (machine_id, hostname, first_seen, last_seen, name_key) VALUES (?, ?, 1, 1, ?)",
                     [(f"m{i}", f"dgx-a{i}", natural.sort_key(f"dgx-a{i}")) for i in range(10000)])
    conn.commit()
    conn.execute("ANALYZE")
    for name in ("admin_servers", "servers", "fleet_servers"):
        sql = QUERIES[name]["sql"]
        params = {k: "" for k in re.findall(r"(?<!:):(\w+)", sql)}
        params.update({"_scope_all": 1, "_scope_servers": "[]"})
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert any("USING INDEX servers_name_key" in line for line in plan), (name, plan)
        assert not any("TEMP B-TREE" in line for line in plan), (name, plan)
        assert "natural_key" not in sql.split("order by")[-1], name
    sql = QUERIES["admin_servers"]["sql"]
    page = conn.execute(sql, {"q": "", "limit": 50, "offset": 9950}).fetchall()
    assert [r[1] for r in page] == [f"dgx-a{i}" for i in range(9950, 10000)]
