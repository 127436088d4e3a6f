"""The history page answers "who was on GPU 3 last night?": holder timeline, utilization
heatmap, alert/outage markers — with demo data fed through the real ingest, in Chromium."""

import os
import sys
import time

import pytest
from browser import login, push
from reports import sample_report
from test_browser_pages import XSS, fast_hub  # noqa: F401,F811  (fixture)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import demo_feed  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# Tests that use fast_hub list it before page: it must rewrite the config before page starts the hub.


def _server_id(hub, config, name):
    import sqlite3

    return sqlite3.connect(config.db_path).execute("SELECT id FROM servers WHERE hostname = ?", (name,)).fetchone()[0]


def _wait_for_alert(config, server_id, timeout=20):
    import sqlite3

    deadline = time.time() + timeout
    while time.time() < deadline:
        if sqlite3.connect(config.db_path).execute("SELECT count(*) FROM alerts WHERE server_id = ?",
                                                   (server_id,)).fetchone()[0]:
            return
        time.sleep(0.3)
    raise AssertionError(f"no alert for server {server_id} within {timeout} s")


def _hover(page, selector, fx, fy):
    box = page.locator(selector).first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)


def test_holder_timeline_heatmap_and_alert_markers(fast_hub, page, hub_config):  # noqa: F811
    from playwright.sync_api import expect

    demo_feed.run(fast_hub.base_url, hub_config.get("agent.token"), hosts=4, hours=6, interval=60, once=True,
                  log=lambda text: None)
    server = _server_id(fast_hub, hub_config, "dgx-a01")  # 8 GPUs, GPU 5 lost 5 h ago
    _wait_for_alert(hub_config, server)  # alerts are evaluated every second on this hub
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(f"{fast_hub.base_url}/servers/{server}/history?hours=6")
    expect(page.locator("#server-name")).to_have_text("dgx-a01")
    expect(page.locator("figure.holders canvas")).to_have_count(1)
    expect(page.locator("figure.heatmap canvas")).to_have_count(1)
    # One row per GPU, GPU 0 on top; every owner of the period is named in the legend.
    legend = page.inner_text("figure.holders .owner-legend")
    import sqlite3

    owners = {u for (u,) in sqlite3.connect(hub_config.db_path).execute(
        "SELECT DISTINCT user FROM gpu_processes WHERE server_id = ?", (server,))}
    assert len(owners) >= 2 and all(user in legend for user in owners), (owners, legend)
    # Hovering GPU 0 now-ish names its holder (or says free) in a tooltip; the heatmap follows.
    _hover(page, "figure.holders .u-over", 0.97, 0.5 / 8)
    tip = page.locator("figure.holders .chart-tip")
    expect(tip).to_be_visible()
    assert tip.inner_text().startswith("GPU 0 ·")
    current = sqlite3.connect(hub_config.db_path).execute(
        "SELECT p.user FROM gpu_processes p JOIN gpus g ON g.id = p.gpu_id JOIN servers s ON s.id = p.server_id"
        " WHERE s.id = ? AND g.gpu_index = 0 AND p.ts = s.last_ts", (server,)).fetchone()
    assert (current[0] if current else "free") in tip.inner_text()
    heat_tip = page.locator("figure.heatmap .chart-tip")
    expect(heat_tip).to_contain_text("utilization")
    # The lost GPU's alert is listed and marked; the CPU axis is 0-100 %.
    expect(page.locator("#alert-list")).to_contain_text("lost")
    expect(page.locator("#alert-list")).to_contain_text("still firing")
    y = page.evaluate("""() => { const c = charts.find((u) => u.root.parentElement.querySelector('figcaption').textContent === 'CPU');
                                 return [c.scales.y.min, c.scales.y.max]; }""")
    assert y == [0, 100]
    assert "raw samples" in page.inner_text("#tier") and " 1 points" not in page.inner_text("#tier")
    # 30 days: the holder timeline reads the hourly GPU-hours (the hub's maintenance made them).
    page.click("button.range:text-is('30 d')")
    expect(page.locator("#tier")).to_contain_text("Last 30 days")
    expect(page.locator("figure.holders .chart-note")).to_contain_text("hourly GPU-hours", timeout=15000)
    assert page.console_errors == [] and page.dialogs == []


def test_one_report_says_one_point(page, hub_process, hub_config):
    from playwright.sync_api import expect

    push(hub_process, hub_config, sample_report("lonely", gpus=1, processes=1))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/servers/1/history?hours=1")
    expect(page.locator("#tier")).to_contain_text("1 point from 1 report ")


def test_hostile_strings_stay_text_in_history(fast_hub, page, hub_config):  # noqa: F811
    from playwright.sync_api import expect

    now = time.time()
    for i in range(10):
        report = sample_report("evil-node", gpus=2, processes=1, sample_time=now - 600 + i * 60)
        # A full disk whose mount point is hostile: the disk_full alert text names it.
        report["disks"][1].update(mountpoint=XSS[1], used_bytes=int(report["disks"][1]["total_bytes"] * 0.97))
        for k, proc in enumerate(report["processes"]):
            proc["user"] = XSS[(i + k) % len(XSS)]
            proc["container"] = XSS[(i + k + 1) % len(XSS)]
        push(fast_hub, hub_config, report)
    _wait_for_alert(hub_config, 1)
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(fast_hub.base_url + "/servers/1/history?hours=1")
    expect(page.locator("#alert-list")).to_contain_text(XSS[1])
    legend = page.inner_text("figure.holders .owner-legend")
    for payload in XSS:
        assert payload in legend, payload
    # GPU 0 was held in every report (one a minute, while the agent's interval says 30 s, so the
    # buckets are finer than the reports): anywhere from 9 to 2 minutes ago the tooltip names a
    # holder, never "free" between two reports that both listed one.
    for ago in range(540, 119, -20):
        _hover(page, "figure.holders .u-over", (3600 - ago) / 3600, 0.25)
        expect(page.locator("figure.holders .chart-tip")).to_be_visible()
        tip = page.inner_text("figure.holders .chart-tip")
        assert tip.startswith("GPU 0 ·") and any(payload in tip for payload in XSS), (ago, tip)
    injected = page.evaluate("""() => document.querySelectorAll(
        '#charts img, #charts svg, #charts iframe, #charts script, #alert-list img, #alert-list svg, #alert-list iframe').length""")
    assert injected == 0
    assert page.dialogs == [] and page.console_errors == []


def test_xids_and_gpu_depth_series_on_the_history_page(fast_hub, page, hub_config):  # noqa: F811
    """XIDs of the server are listed (time, GPU, code, name, kernel text as text) and marked on
    the charts; the GPU-depth series (power capping from the counter, PCIe link, ECC) are drawn."""
    from playwright.sync_api import expect

    now = time.time()
    hostile = "NVRM: Xid (PCI:0000:18:00): 13, " + XSS[0] + XSS[1] + XSS[4]
    for i in range(10):
        report = sample_report("xid-node", gpus=2, processes=0, sample_time=now - 600 + i * 60)
        for gpu in report["gpus"]:
            gpu.update({"clocks_event_reasons_counters.sw_power_cap": i * 30_000_000,  # 30 s of each 60 s: 50 %
                        "pcie.link.gen.current": 2 if i == 4 else 5, "ecc.errors.corrected.volatile.total": i})
        if i == 5:
            report["kmsg_state"] = "ok"
            report["xid_events"] = [
                {"xid": 13, "pci.bus_id": report["gpus"][1]["pci.bus_id"], "name": "Graphics Engine Exception",
                 "seq": 1, "usec": 5, "time": now - 400, "message": hostile},
                {"xid": 79, "pci.bus_id": report["gpus"][0]["pci.bus_id"], "name": "GPU has fallen off the bus",
                 "seq": 2, "usec": 6, "time": now - 300, "message": "NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>'"}]
        push(fast_hub, hub_config, report)
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(fast_hub.base_url + "/servers/1/history?hours=1")
    expect(page.locator("#xid-list")).to_be_visible()
    expect(page.locator("#xid-list h2")).to_have_text("XID errors in this range: 2")
    cells = page.locator("#xid-list tbody tr").all()
    first = [c.inner_text() for c in cells[0].locator("td").all()]  # newest first
    second = [c.inner_text() for c in cells[1].locator("td").all()]
    assert first[1:4] == ["GPU 0", "79", "GPU has fallen off the bus"], first
    assert second[1:] == ["GPU 1", "13", "Graphics Engine Exception", hostile], second
    assert page.evaluate("() => markers.xids.map((e) => e.xid)") == [13, 79]
    # The violet marker is drawn on the charts: the CPU chart's canvas has XID-coloured pixels.
    violet = page.evaluate("""() => { const c = charts.find((u) => u.root.parentElement.querySelector('figcaption').textContent === 'CPU');
        const d = c.ctx.getImageData(0, 0, c.ctx.canvas.width, c.ctx.canvas.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 0xd1 && d[i + 1] === 0x6e && d[i + 2] === 0xe8) n++; return n; }""")
    assert violet > 20
    # Hovering GPU 1's row at the XID names it in the tooltip.
    _hover(page, "figure.heatmap .u-over", (3600 - 400) / 3600, 0.75)
    expect(page.locator("figure.heatmap .chart-tip")).to_contain_text("XID 13 (Graphics Engine Exception)")
    for key in ("power_capped_pct", "pcie_link_gen_min", "ecc_errors_corrected_volatile_total"):
        expect(page.locator(f"figure[data-series='{key}'] canvas")).to_have_count(1)
    xs, shares = page.evaluate("""() => { const c = charts.find((u) => u.root.parentElement.dataset.series === 'power_capped_pct');
        return [c.data[0], c.data[1]]; }""")
    # Each bucket's share is the counter's growth over the time since the GPU's previous bucket
    # (bucket times are rounded to the bucket size, so single shares wobble around 50 %); over
    # the range they add up to the counter's growth: 9 reports × 30 s.
    points = [(x, v) for x, v in zip(xs, shares) if v is not None]
    assert len(points) == 9 and all(35 < v < 65 for _, v in points), points
    prev = [x for x, v in zip(xs, shares) if v is None][0]  # the first report: no previous value
    assert sum(v / 100 * (x - p) for (x, v), p in zip(points, [prev] + [x for x, _ in points])) == pytest.approx(270)
    assert page.evaluate("""() => Math.min(...charts.find((u) => u.root.parentElement.dataset.series === 'pcie_link_gen_min')
        .data[1].filter((v) => v !== null))""") == 2
    injected = page.evaluate("""() => document.querySelectorAll(
        '#xid-list img, #xid-list svg, #xid-list script, #xid-list iframe, #charts img, #charts svg').length""")
    assert injected == 0
    assert page.dialogs == [] and page.console_errors == []
