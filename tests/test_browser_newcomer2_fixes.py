"""Newcomer run 2 findings (2026-12-07) in a real browser (Playwright + chromium): F3/F10 the
GPU-hours page by server (natural order, ?by= in the URL, no stray "null" legend entry), F4 a
failed nudge on the idle panel, F8 labelled /admin and /account tables at 390 px and an idle row
that does not cut a zone name in two, F10 "1 user"."""

import datetime
import sqlite3
import time
import zoneinfo

import pytest
from browser import login, push
from reports import sample_report
from test_browser_newcomer_fixes import _hub_with, _idle_for

pytestmark = [pytest.mark.browser]

NATURAL = ["dgx-a2", "DGX-A3", "dgx-a9", "dgx-a10", "dgx-a100", "gpu---7", "rack12-node-5"]


def test_F2N_gpu_hours_by_server_natural_order_url_and_legend(page, hub_process, hub_config):
    """Finding 3 and 10: by server, tied servers came in byte order in the table and the legend,
    the legend ended in a text "null", ?by=server was ignored and choosing did not change the URL."""
    from playwright.sync_api import expect

    for name in NATURAL[::-1]:
        push(hub_process, hub_config, sample_report(name, gpus=1, processes=1))
    conn = sqlite3.connect(hub_config.db_path, timeout=30)
    hour = int(time.time()) // 3600 * 3600 - 3 * 86400
    for name in NATURAL:
        (sid,) = conn.execute("select id from servers where hostname = ?", (name,)).fetchone()
        (gid,) = conn.execute("select id from gpus where server_id = ?", (sid,)).fetchone()
        conn.execute("insert into gpu_usage_1h (hour, server_id, gpu_id, user, container, gpu_seconds,"
                     " vram_mib_seconds, util_seconds, util_known_seconds, held_seconds)"
                     " values (?,?,?,'natsort','',612,0,0,0,612)", (hour, sid, gid))
    conn.commit()
    conn.close()
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/accounting?by=server")
    expect(page.locator("#by")).to_have_value("server")
    expect(page.locator("#owner-head")).to_have_text("Server")
    expect(page.locator("#hours-table tbody tr")).to_have_count(len(NATURAL))
    assert page.locator("#hours-table tbody tr td:first-child").all_inner_texts() == NATURAL
    legend = page.locator("#daily-legend")
    expect(legend.locator("li")).to_have_count(len(NATURAL))
    assert legend.locator("li").all_inner_texts() == NATURAL
    assert "null" not in legend.inner_text()
    assert page.evaluate("[...document.getElementById('daily-legend').childNodes].every((n) => n.nodeName === 'LI')")
    assert "by=server" in page.url
    page.select_option("#by", "user")
    expect(page.locator("#owner-head")).to_have_text("User")
    assert "by=user" in page.url and "by=server" not in page.url
    page.fill("#group", "natsort-test")
    page.locator("#group").dispatch_event("change")
    page.wait_for_function("location.search.includes('group=natsort-test')")
    assert page.console_errors == []


def test_F2N_phone_tables_labelled_idle_row_keeps_zone_whole_and_says_the_nudge_failed(browser, request, hub_config):
    """Finding 8 (390 px): /admin's contact table and /account's became cards without column
    names; the idle row broke "America/Los_An|geles". Finding 4: the idle row said "–" after a
    failed nudge. Finding 10: "1 users"."""
    from playwright.sync_api import expect

    from server_monitor.auth.contacts import NotifyStore

    la_hour = datetime.datetime.now(zoneinfo.ZoneInfo("America/Los_Angeles")).hour
    hub = _hub_with(hub_config, request, nudge_after_hours=0.25, quiet_hours=[la_hour, (la_hour + 2) % 24])
    _idle_for(hub, hub_config, "dgx-a05", 30)
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("user0", "user0@example.org", tz="America/Los_Angeles")
    store.record_failure("contact:user0:email", "ValueError: e-mail contacts need an alerts.smtp server")
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub.base_url, hub_config.get("auth.username"), hub_config.password)
    row = page.locator("#idle-body tr")
    expect(row).to_have_count(1)
    expect(row.locator(".idle-nudged")).to_contain_text("nudge to user0 failed")
    assert not row.locator(".idle-nudged").inner_text().startswith("–")
    expect(row.locator(".idle-held")).to_contain_text("America/Los_Angeles")
    # The zone's name on one line: every box of its text has the same top, also when the table is
    # squeezed (the newcomer's fleet: wider Held and Idle-for cells left the Nudged column ~90 px).
    tops = page.evaluate("""() => {
        document.getElementById('idle-table').style.width = '240px';
        const span = document.querySelector('#idle-body .idle-held');
        const node = span.firstChild, at = node.textContent.indexOf('America/Los_Angeles');
        const range = document.createRange();
        range.setStart(node, at); range.setEnd(node, at + 'America/Los_Angeles'.length);
        return [...range.getClientRects()].map((r) => Math.round(r.top)); }""")
    assert tops and len(set(tops)) == 1, tops
    expect(page.locator("#who-note")).to_contain_text("1 user ")
    assert "1 users" not in page.locator("#who-note").inner_text()
    # /admin at 390 px: each contact cell says its column.
    page.goto(hub.base_url + "/admin#contacts")
    cells = page.locator("#contact-table tbody tr").first.locator("td")
    labels = [cells.nth(i).get_attribute("data-label") for i in range(cells.count())]
    assert labels[:6] == ["Holder", "E-mail", "URL", "Weekly digest", "Time zone", "Changed"], labels
    shown = page.evaluate("getComputedStyle(document.querySelector('#contact-table tbody td[data-label=\"Time zone\"]'),"
                          " '::before').content")
    assert shown == '"Time zone: "', shown
    servers = page.locator("#server-table tbody tr").first.locator("td").first
    assert servers.get_attribute("data-label") == page.locator("#server-table thead th").first.inner_text().strip()
    # /account at 390 px: the API token table too.
    page.goto(hub.base_url + "/account")
    page.fill("#token-name", "report")
    page.click("#create-token button[type=submit]")
    expect(page.locator("#api-token-table tbody tr", has_text="report")).to_have_count(1)
    first = page.locator("#api-token-table tbody tr", has_text="report").locator("td").first
    expect(first).to_have_attribute("data-label", page.locator("#api-token-table thead th").first.inner_text().strip())
    assert errors == []
    context.close()
