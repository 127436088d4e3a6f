"""Host groups in the dashboard (issue 24 items 1 and 2), in a real Chromium against the real hub:
a viewer scoped by group, the group sections with their summary line and heat-strip, and the
filter's keystroke-to-repaint time at 1,000 servers."""

import os
import statistics
import sys
import time

import pytest
from browser import login, push
from conftest import ROOT
from datasette_auth_passwords.utils import hash_password
from reports import sample_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "correct horse battery"

# Keystroke to repaint: the input event is dispatched as typing does, the dashboard filters in its
# next animation frame, and the time is read in the frame after that (style, layout and paint done).
MEASURE = """async (text) => {
  const input = document.getElementById('filter');
  const t0 = performance.now();
  input.value = text;
  input.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  return performance.now() - t0;
}"""


def grouped(hostname, groups, **kw):
    report = sample_report(hostname, gpus=kw.pop("gpus", 2), processes=kw.pop("processes", 1), **kw)
    report["groups"] = groups
    return report


def visible_rows(page):
    return sorted(page.eval_on_selector_all(
        "#grid .srow", "rows => rows.filter(r => r.checkVisibility() && !r.closest('[hidden]'))"
                       ".map(r => r.querySelector('.sname').textContent)"))


def until(check, timeout=30.0):
    """Poll ``check()`` (the page's strict CSP refuses wait_for_function's string evaluation)."""
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_item1_groups_viewer_scoped_by_group_sees_new_members_never_other_groups(page, hub_process, hub_config):
    from server_monitor.auth.accounts import Accounts

    push(hub_process, hub_config, grouped("a-1.lab", ["team-a"]))
    push(hub_process, hub_config, grouped("b-1.lab", ["team-b"]))
    Accounts(hub_config.auth_db_path).create_user("tina", hash_password(PASSWORD, iterations=1000), "viewer",
                                                  servers=[], groups=["team-a"])
    login(page, hub_process.base_url, "tina", PASSWORD)
    page.wait_for_selector("#grid .srow")
    assert visible_rows(page) == ["a-1"]
    assert page.locator(".gsec").count() == 1 and page.inner_text(".gsec .gname").endswith("team-a")
    # A new server of the group reports: it is on the viewer's dashboard after a reload, with no edit;
    # the other group's new server never shows, nor in the fleet document the page fetched.
    push(hub_process, hub_config, grouped("a-2.lab", ["team-a", "rack-01"]))
    push(hub_process, hub_config, grouped("b-2.lab", ["team-b", "rack-01"]))
    page.reload()
    until(lambda: page.locator("#grid .srow").count() >= 2)
    # "Every group" (no shared prefix here): a-2 has a row under team-a and under rack-01.
    assert visible_rows(page) == ["a-1", "a-2", "a-2"]
    html = page.content()
    # Full names with a dot: no random token (base64url) in the page can contain them by chance.
    for leak in ("b-1.lab", "b-2.lab", "team-b"):
        assert leak not in html, html[max(0, html.index(leak) - 300):html.index(leak) + 100]
    fleet = page.request.get(hub_process.base_url + "/api/fleet?fresh=1").json()
    assert sorted(s["name"] for s in fleet["servers"]) == ["a-1.lab", "a-2.lab"]
    servers = page.request.get(hub_process.base_url + "/monitor/servers.json?_shape=array").json()
    assert sorted(s["name"] for s in servers) == ["a-1.lab", "a-2.lab"]
    gpus = page.request.get(hub_process.base_url + "/monitor/gpus.json?_shape=array").json()
    assert gpus and {g["server"] for g in gpus} <= {"a-1.lab", "a-2.lab", "a-1", "a-2"}, gpus[:2]
    # /metrics is the Prometheus token's or an admin's: a viewer scoped by group gets none of it.
    for path in ("/metrics", "/metrics?shard=0&of=2", "/metrics/servers/2", "/metrics/targets"):
        assert page.request.get(hub_process.base_url + path).status == 403, path
    assert page.console_errors == []


def test_item2_group_sections_summary_heatstrip_group_by_and_filter(page, hub_process, hub_config):
    from playwright.sync_api import expect

    for name, groups, state in (("n-1", ["cluster-a", "rack-01"], "load"), ("n-2", ["cluster-a", "rack-02"], "idle"),
                                ("n-3", ["cluster-b", "rack-02"], "load"), ("n-4", [], "idle")):
        report = grouped(name, groups, state=state, processes=1 if state == "load" else 0)
        push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .gsec")
    # Default dimension: the one with fewest groups (cluster), then "(no cluster)".
    assert page.input_value("#group-by") == "cluster"
    names = page.locator(".gsec .gname").all_inner_texts()
    assert [n.strip("▸▾ ") for n in names] == ["cluster-a", "cluster-b", "(no cluster)"]
    head = page.locator(".gsec").first.locator(".gline").inner_text()
    assert head.startswith("2 servers · 4 GPUs: 2 free · 2 busy · 0 held idle · 0 broken · util "), head
    strip = page.locator(".gsec").first.locator(".gstrip .gs")
    assert strip.count() == 2 and strip.first.get_attribute("title") == "2 busy"
    assert page.locator(".gsec").first.locator(".gstrip").get_attribute("aria-label") == "2 busy, 2 free"
    # Below 1,000 rows every section is open; a click closes one (its rows leave the page).
    assert page.locator("details.gsec[open]").count() == 3 and visible_rows(page) == ["n-1", "n-2", "n-3", "n-4"]
    page.locator(".gsec .ghead").first.click()
    assert visible_rows(page) == ["n-3", "n-4"]
    page.locator(".gsec .ghead").first.click()
    # Group by rack: the other dimension (names sharing the prefix "rack-"); the URL keeps the choice.
    page.select_option("#group-by", "rack")
    expect(page.locator(".gsec .gname")).to_have_count(3)
    assert "by=rack" in page.url
    # The group filter keeps one group's servers, the text filter searches names, users and groups.
    page.select_option("#group-filter", "rack-02")
    assert visible_rows(page) == ["n-2", "n-3"] and "group=rack-02" in page.url
    page.select_option("#group-filter", "")
    page.fill("#filter", "cluster-b")
    until(lambda: len(visible_rows(page)) == 1)
    assert visible_rows(page) == ["n-3"]
    assert page.locator(".gsec:not([hidden])").count() == 1 and "1 match" in page.inner_text(".gsec:not([hidden]) .gmatch")
    page.fill("#filter", "")
    page.select_option("#group-by", "-")  # one grid, as without groups
    expect(page.locator(".gsec")).to_have_count(0)
    assert visible_rows(page) == ["n-1", "n-2", "n-3", "n-4"]
    assert page.console_errors == []


@pytest.mark.timing  # scripts/test.sh runs it alone, after the parallel phase
def test_item2_filter_repaints_within_100ms_at_1000_servers(page, hub_process, hub_config):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import fleet_fixture

    # 1,000 hosts × 8 GPUs through store_report (the path POST /api/report takes), in 4 clusters.
    fleet_fixture.grow(hub_config.db_path, servers=1000, processes=6000, groups=4, racks=False, interval=600)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    until(lambda: page.locator("#grid .srow").count() == 1000, timeout=60)
    assert page.locator("details.gsec[open]").count() == 4  # 1,000 rows: the grid stays open
    page.wait_for_timeout(500)
    # The typing is done three times; each keystroke's figure is its fastest of the three, so that
    # the other test files the suite runs beside this one (on the same two cores) do not count as
    # the filter's cost. Every pass checks what the filter shows.
    times = {}
    for _ in range(3):
        for i, text in enumerate(("a", "al", "ali", "alic", "alice", "", "d", "dg", "dgx", "dgx-h100-00", "",
                                  "cluster-c", "")):
            key = f"{i}:{text}"
            times[key] = min(times.get(key, float("inf")), page.evaluate(MEASURE, text))
            if text == "dgx-h100-00":
                assert visible_rows(page) == ["dgx-h100-001", "dgx-h100-005", "dgx-h100-009"]
            if text == "cluster-c":
                assert len(visible_rows(page)) == 250
        until(lambda: len(visible_rows(page)) == 1000)  # rows come back SHOW_CHUNK per frame after a clear
    print("filter keystroke → repaint (ms, fastest of 3):", {k: round(v, 1) for k, v in times.items()})
    assert statistics.median(times.values()) <= 100, times
    assert page.console_errors == []


TOPBAR = """() => {
  const bar = document.querySelector('header.topbar');
  const kids = [...bar.children].filter((k) => k.getClientRects().length);
  const tops = kids.map((k) => Math.round(k.getBoundingClientRect().top));
  return {height: bar.getBoundingClientRect().height, lines: new Set(tops.map((t) => Math.round(t / 12))).size,
          user: document.querySelector('.user-menu').getBoundingClientRect().right,
          overflow: document.documentElement.scrollWidth - innerWidth};
}"""


def test_item4_top_bar_stays_one_line_at_1440_with_1000_servers(browser, hub_process, hub_config):
    """The newcomer review: "with 1,000 servers the 1440 px top bar wraps and 'admin' drops to a
    second line". A 1,000-server fleet (4-digit counts, an offline and a late host, a lost GPU) and
    an admin with a long login: at 1440 px the bar is one line with the user menu at its right end;
    at 390 px nothing overflows the screen."""
    from server_monitor.auth.accounts import Accounts

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import fleet_fixture

    fleet_fixture.grow(hub_config.db_path, servers=1000, processes=2000, groups=4, racks=False, interval=600)
    Accounts(hub_config.auth_db_path).create_user("margarethe.vandersteen", hash_password(PASSWORD, iterations=1000),
                                                  "admin")
    for width, height in ((1440, 900), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        login(page, hub_process.base_url, "margarethe.vandersteen", PASSWORD)
        page.wait_for_selector("#summary .sum-gpus")
        bar = page.evaluate(TOPBAR)
        assert bar["overflow"] <= 0, bar
        if width == 1440:
            chips = page.inner_text("#summary")
            assert "online" in chips and "free" in chips and "broken" in chips, chips
            assert bar["lines"] == 1 and bar["height"] < 50 and bar["user"] > width - 40, bar
            assert "broken" in page.get_attribute("#summary .sum-gpus", "title")
        context.close()


def test_F3_group_filter_scopes_every_panel(page, hub_process, hub_config):
    """``/?by=cluster&group=cluster-b`` scopes the whole page, not only the grid: the header counts,
    the problems list, "Using GPUs now" and "Idle holders" are cluster-b's (newcomer finding 3:
    they stayed fleet-wide). Choosing "All groups" brings the whole fleet back."""
    import sqlite3

    from playwright.sync_api import expect
    from test_browser_answers import _held

    now = int(time.time())
    for t in range(now - 3 * 3600, now + 1, 600):  # 3 h held at 0 %: one idle holder in each cluster
        for name, user, group in (("idle-a", "ann", "cluster-a"), ("idle-b", "bob", "cluster-b")):
            report = _held(name, t, [user, None])
            report["groups"] = [group]
            push(hub_process, hub_config, report)
    push(hub_process, hub_config, grouped("busy-a", ["cluster-a"], state="load"))
    with sqlite3.connect(hub_config.db_path) as conn:
        ids = dict(conn.execute("select hostname, id from servers"))
        for key, host in (("t1", "idle-a"), ("t2", "busy-a")):  # two problems in cluster-a, none in cluster-b
            conn.execute("INSERT INTO alerts (key, rule, severity, server_id, subject, message, started_at)"
                         " VALUES (?, 'gpu_temperature', 'warning', ?, 's', ?, ?)", (key, ids[host], host + ": hot", now))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/?by=cluster&group=cluster-b")
    expect(page.locator("#idle-body tr")).to_have_count(1)
    assert visible_rows(page) == ["idle-b"]
    assert page.locator("#idle-body td.idle-user").inner_text() == "bob"
    assert "1 GPU in cluster-b held" in page.inner_text("#idle-note")
    assert [u.strip() for u in page.locator("#who-body tr td.who-name a").all_inner_texts()] == ["bob"]
    assert page.locator("#problems .problem").count() == 0  # cluster-a's problems are not cluster-b's
    summary = page.inner_text("#summary")
    assert summary.startswith("cluster-b:") and "1 online" in summary and "1 held idle" in summary, summary
    # The whole fleet again: every panel counts every group.
    page.select_option("#group-filter", "")
    expect(page.locator("#idle-body tr")).to_have_count(2)
    expect(page.locator("#problems .problems-title")).to_have_text("2 problems")
    assert sorted(u.strip() for u in page.locator("#who-body tr td.who-name a").all_inner_texts()) == ["ann", "bob", "user0"]
    summary = page.inner_text("#summary")
    assert "3 online" in summary and "2 held idle" in summary, summary
    # And back to cluster-a with the select: its two problems, its holder.
    page.select_option("#group-filter", "cluster-a")
    expect(page.locator("#problems .problems-title")).to_have_text("2 problems in cluster-a")
    expect(page.locator("#idle-body tr")).to_have_count(1)
    assert page.locator("#idle-body td.idle-user").inner_text() == "ann"
    assert page.console_errors == []


def test_F13_servers_in_natural_order_and_the_group_by_label(page, hub_process, hub_config):
    """Servers are listed in natural order (dgx-a9, dgx-a10, dgx-a11, dgx-a100; they sorted as text:
    dgx-a10, dgx-a100, dgx-a11) on the dashboard and in the canned queries that list servers, and
    the group-by choice reads "Group by host group", never "Group by group" (newcomer finding 13)."""
    names = ["dgx-a10", "dgx-a100", "DGX-A11", "dgx-a9", "dgx-a2"]
    for name in names:
        push(hub_process, hub_config, grouped(name, ["lab"], gpus=1, processes=0, state="idle"))
    natural = ["dgx-a2", "dgx-a9", "dgx-a10", "DGX-A11", "dgx-a100"]
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    until(lambda: page.locator("#grid .srow").count() == 5)
    shown = page.eval_on_selector_all("#grid .srow .sname", "els => els.map((e) => e.textContent)")
    assert shown == natural, shown
    page.select_option("#sort", "free")  # ties (one free GPU each) in natural order too
    assert page.eval_on_selector_all("#grid .srow .sname", "els => els.map((e) => e.textContent)") == natural
    labels = page.eval_on_selector_all("#group-by option", "os => os.map((o) => o.textContent)")
    assert "Group by group" not in labels and "Group by host group" in labels, labels
    for query, column in (("servers", "name"), ("gpus", "server"), ("disks", "server")):
        rows = page.request.get(f"{hub_process.base_url}/monitor/{query}.json?_shape=array").json()
        order = list(dict.fromkeys(r[column] for r in rows))
        assert order == natural, (query, order)
    free = page.request.get(hub_process.base_url + "/monitor/free_gpus.json?_shape=array").json()
    assert [r["server"] for r in free] == natural  # equal offers: by name, naturally
    assert page.console_errors == []
