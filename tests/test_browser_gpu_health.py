"""GPU health badges, XID errors and MIG split cells on the dashboard, in a real Chromium against the real hub.

Reports go through the hub's own ingest (``POST /api/report``); hostile strings (``XSS`` of
test_browser_pages) ride in the XID kernel message, the XID process name and a MIG profile.
"""

import os
import time

import pytest
from browser import login, push
from reports import mig_report, sample_report
from test_browser_pages import XSS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# No element a payload could have created, anywhere in the document.
INJECTED = "document.querySelectorAll('#grid script, #grid img, #grid iframe, #grid svg, #detail script, #detail img, " \
           "#detail iframe, #detail svg, #tip img, #tip svg, #tip script').length"


def sick_fleet(hub_process, hub_config):
    """sick-node: GPU 0 with uncorrectable ECC errors and XID 79 (hostile message), GPU 1 with a row
    remap pending, GPU 2 in HW slowdown; mig-node: an H100 split in four MIG devices, one with a
    hostile profile; healthy-node: nothing wrong."""
    now = time.time()
    sick = sample_report("sick-node", gpus=4, processes=1, sample_time=now)
    g = sick["gpus"]
    g[0]["ecc.errors.uncorrected.volatile.total"] = 2
    g[0]["ecc.errors.corrected.volatile.total"] = 17
    g[1]["remapped_rows.pending"] = True
    g[1]["remapped_rows.uncorrectable"] = 1
    g[2]["clocks_event_reasons.active"] = 0x8  # HW slowdown
    sick["kmsg_state"] = "ok"
    sick["xid_events"] = [
        {"xid": 79, "pci.bus_id": g[0]["pci.bus_id"], "name": "GPU has fallen off the bus", "seq": 7, "usec": 5,
         "time": now - 120, "pid": 4242, "process_name": XSS[0],
         "message": "NVRM: Xid (PCI:0000:18:00): 79, " + XSS[1]},
        {"xid": 13, "pci.bus_id": g[2]["pci.bus_id"], "name": "Graphics Engine Exception", "seq": 8, "usec": 6,
         "time": now - 60, "message": "NVRM: Xid (PCI:0000:38:00): 13, " + XSS[4]}]
    # GPU 2 has been held by its power cap for 4 h of today (its counter since the day's first
    # sample, an earlier report) and 9 h since the driver loaded.
    hour = 3600 * 10**6
    earlier = sample_report("sick-node", gpus=4, processes=1, sample_time=max(now // 86400 * 86400 + 1, now - 3600))
    earlier["gpus"][2]["clocks_event_reasons_counters.sw_power_cap"] = 5 * hour
    earlier["gpus"][2]["clocks_event_reasons_counters.hw_thermal_slowdown"] = 0
    push(hub_process, hub_config, earlier)
    g[2]["clocks_event_reasons_counters.sw_power_cap"] = 9 * hour
    g[2]["clocks_event_reasons_counters.hw_thermal_slowdown"] = hour // 4
    push(hub_process, hub_config, sick)
    mig = mig_report("mig-node", busy_instances=(0,))
    mig["mig_devices"][3]["profile"] = XSS[2]
    push(hub_process, hub_config, mig)
    push(hub_process, hub_config, sample_report("healthy-node", gpus=2, processes=0, state="idle"))


def test_health_badges_xid_panel_and_mig_split(page, hub_process, hub_config):
    from playwright.sync_api import expect

    sick_fleet(hub_process, hub_config)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    row = page.locator(".srow", has=page.locator(".sname", has_text="sick-node"))
    cells = row.locator(".cell")
    expect(cells).to_have_count(4)
    # Critical badges: glyph plus the reason in its title and in the cell's accessible name.
    ecc = cells.nth(0)
    assert "h-critical" in ecc.get_attribute("class")
    assert ecc.locator(".hb").inner_text() == "✖"
    assert "critical: 2 uncorrectable ECC errors" in ecc.locator(".hb").get_attribute("title")
    assert "last XID 79" in ecc.locator(".hb").get_attribute("title")
    assert "health critical: 2 uncorrectable ECC errors" in ecc.get_attribute("aria-label")
    remap = cells.nth(1)
    assert remap.locator(".hb").inner_text() == "✖"
    assert "row remapping pending" in remap.get_attribute("aria-label")
    slow = cells.nth(2)
    assert slow.locator(".hb").inner_text() == "⚠" and "h-warning" in slow.get_attribute("class")
    assert "warning: throttled: HW slowdown" in slow.locator(".hb").get_attribute("title")
    assert cells.nth(3).locator(".hb").count() == 0  # a healthy GPU carries no badge
    healthy = page.locator(".srow", has=page.locator(".sname", has_text="healthy-node"))
    assert healthy.locator(".hb").count() == 0
    # The hover tooltip says the same in words.
    ecc.hover()
    expect(page.locator("#tip .tip-health")).to_contain_text("critical: 2 uncorrectable ECC errors; last XID 79")

    # MIG: one sub-cell per MIG device with its profile; the holder on the busy one; hostile profile as text.
    mig = page.locator(".srow", has=page.locator(".sname", has_text="mig-node")).locator(".cell")
    expect(mig).to_have_count(1)
    subs = mig.locator(".mi")
    expect(subs).to_have_count(4)
    assert [subs.nth(i).get_attribute("data-profile") for i in range(4)] == ["3g.40gb", "2g.20gb", "1g.10gb", XSS[2]]
    assert [subs.nth(i).locator(".mi1").inner_text() for i in range(3)] == ["3g", "2g", "1g"]
    assert subs.nth(0).locator(".mi2").inner_text() == "alice" and "mi-used" in subs.nth(0).get_attribute("class")
    assert "MIG 3g.40gb (GI 2): 10.8 GiB of 39.5 GiB, used by alice" == subs.nth(0).get_attribute("title")
    assert "MIG 2g.20gb (GI 3)" in subs.nth(1).get_attribute("title") and "free" in subs.nth(1).get_attribute("title")
    assert "MIG 3g.40gb (GI 2)" in mig.get_attribute("aria-label")
    mig.hover()
    expect(page.locator("#tip .tip-mig li")).to_have_count(4)
    expect(page.locator("#tip .tip-mig li").nth(3)).to_contain_text(XSS[2])

    # The server panel: health per GPU and the XID events of this server, fetched when it opens.
    row.locator(".shead").click()
    expect(page.locator("#detail article.server")).to_have_count(1)
    gpus = page.locator("#detail .gpu")
    expect(gpus).to_have_count(4)
    first = gpus.nth(0).locator(".gpu-health")
    assert first.get_attribute("open") is not None  # a sick GPU's section starts open
    facts = first.locator(".health-facts").inner_text()
    assert "volatile 17 corrected / 2 uncorrected" in facts and "Last XID" in facts
    assert "✖ critical" in gpus.nth(0).locator(".gpu-head").inner_text()
    remap_facts = gpus.nth(1).locator(".health-facts").inner_text()
    assert "1 uncorrectable · pending yes · failure no" in remap_facts
    slow_facts = gpus.nth(2).locator(".health-facts").inner_text()
    assert "HW slowdown" in slow_facts
    assert "power capped 4 h today, thermal slowdown 15 min today (since 00:00 your time)" in slow_facts
    assert "power capped 9 h" in slow_facts and "since driver load" in slow_facts
    assert gpus.nth(3).locator(".gpu-health").get_attribute("open") is None
    assert "✓ healthy" in gpus.nth(3).locator(".gpu-health summary").inner_text()
    xids = page.locator("#detail .xid-table tbody tr")
    expect(xids).to_have_count(2)
    newest = xids.nth(0).locator("td")
    assert [newest.nth(i).inner_text() for i in (1, 2, 3)] == ["GPU 2", "13", "Graphics Engine Exception"]
    older = xids.nth(1).locator("td")
    assert [older.nth(i).inner_text() for i in (1, 2, 3)] == ["GPU 0", "✖ 79", "GPU has fallen off the bus"]
    assert older.nth(4).inner_text() == "NVRM: Xid (PCI:0000:18:00): 79, " + XSS[1]
    assert newest.nth(4).inner_text().endswith(XSS[4])
    # Hostile strings stayed text: nothing injected, no dialog, no script error.
    assert page.evaluate(INJECTED) == 0
    assert page.dialogs == [] and page.console_errors == []

    # Another server's XIDs do not leak into this panel.
    page.keyboard.press("Escape")
    page.locator(".srow", has=page.locator(".sname", has_text="healthy-node")).locator(".shead").click()
    expect(page.locator("#detail article.server")).to_have_count(1)
    expect(page.locator("#detail .xid-none")).to_have_text("No XID error in the last 7 days.")
    assert page.locator("#detail .xid-table").count() == 0


def test_screenshot_of_sick_gpus(browser, hub_process, hub_config, tmp_path):
    """A 1440x900 view of a fleet with sick GPUs and a MIG host; ``SCREENSHOT_DIR=...`` keeps it."""
    sick_fleet(hub_process, hub_config)
    for name, gpus, capture, state in [("dgx-h100-01", 8, "h100-80gb", "load"), ("hgx-h200-02", 8, "h200", "idle")]:
        push(hub_process, hub_config, sample_report(name, gpus=gpus, processes=1 if state == "load" else 0,
                                                    capture=capture, state=state))
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    login(tab, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    tab.wait_for_selector("#grid .cell .hb")
    out = os.environ.get("SCREENSHOT_DIR") or str(tmp_path)
    tab.screenshot(path=os.path.join(out, "dashboard-gpu-health.png"))
    tab.locator(".srow", has=tab.locator(".sname", has_text="sick-node")).locator(".shead").click()
    tab.wait_for_selector("#detail .xid-table")
    tab.screenshot(path=os.path.join(out, "dashboard-gpu-health-panel.png"))
    tab.locator("#detail .xids").screenshot(path=os.path.join(out, "dashboard-xid-events.png"))
    # Nothing in the grid spills past the viewport at the common laptop width.
    assert tab.evaluate("document.documentElement.scrollWidth") <= 1440
    assert errors == []
    context.close()


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "America/Los_Angeles"])
def test_throttle_today_follows_the_viewers_local_day(browser, hub_process, hub_config, zone):
    """A browser in another time zone sends its own local midnight: "power capped N h today"
    counts from the GPU's first sample of the viewer's day, not of the UTC day."""
    import datetime
    import zoneinfo

    from playwright.sync_api import expect

    now = int(time.time())
    local = datetime.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(zone))
    local_start = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    utc_start = now // 86400 * 86400
    hour = 3600 * 10**6
    first, second = min(local_start, utc_start) + 1, min(max(local_start, utc_start) + 1, now - 2)
    for sample_time, power_cap in ((first, 1 * hour), (second, 3 * hour), (now, 6 * hour)):
        report = sample_report("tz-node", gpus=1, processes=0, sample_time=sample_time)
        report["gpus"][0]["clocks_event_reasons_counters.sw_power_cap"] = power_cap
        push(hub_process, hub_config, report)
    expected = "5 h" if local_start <= utc_start else "3 h"  # the UTC day would give the other one
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id=zone)
    try:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
        assert page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone") == zone
        with page.expect_request(lambda r: "/api/servers/" in r.url) as request:
            page.locator(".srow", has=page.locator(".sname", has_text="tz-node")).locator(".shead").click()
        assert f"day_start={local_start}" in request.value.url
        facts = page.locator("#detail .gpu .health-facts")
        expect(facts).to_contain_text(f"power capped {expected} today (since 00:00 your time)")
        assert errors == []
    finally:
        context.close()


def test_mig_mode_change_pending_is_named_in_tooltip_and_panel(page, hub_process, hub_config):
    """A GPU whose mig.mode.pending differs (H100-MIG capture, `nvidia-smi -mig 0` without a reset):
    the grid tooltip and the server panel name both modes."""
    from playwright.sync_api import expect

    report = mig_report("pending-node")
    report["gpus"][0]["mig.mode.pending"] = False
    push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    cell = page.locator(".srow", has=page.locator(".sname", has_text="pending-node")).locator(".cell")
    expect(cell).to_have_count(1)
    assert cell.locator(".hb").inner_text() == "⚠"
    cell.hover()
    expect(page.locator("#tip .tip-health")).to_contain_text("MIG mode change pending (Enabled → Disabled after GPU reset)")
    page.locator(".srow", has=page.locator(".sname", has_text="pending-node")).locator(".shead").click()
    facts = page.locator("#detail .gpu .health-facts")
    expect(facts).to_contain_text("MIG mode")
    expect(facts).to_contain_text("Enabled · MIG mode change pending (Enabled → Disabled after GPU reset)")
    assert page.dialogs == [] and page.console_errors == []
