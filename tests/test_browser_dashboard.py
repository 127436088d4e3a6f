"""The dashboard (fleet grid, who panel, problems, server detail) in a real Chromium against the real hub."""

import os
import time

import pytest
from browser import login, push
from conftest import ROOT
from reports import sample_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_grid_has_one_cell_per_gpu_and_detail_on_demand(page, hub_process, hub_config):
    from playwright.sync_api import expect

    push(hub_process, hub_config, sample_report("gpu-node-01", gpus=2, processes=2))
    push(hub_process, hub_config, sample_report("mig-node", gpus=1, processes=0, capture="h100-mig", state="idle"))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    assert page.locator("#grid .cell").count() == 3
    assert page.locator("#grid .srow").count() == 2
    summary = page.inner_text("#summary")
    assert "2 online" in summary and "0 free · 3 busy" in summary
    first = page.locator("#grid .srow").first
    assert first.locator(".sname").inner_text() == "gpu-node-01" and "2/2" in first.locator(".ssub").inner_text()
    cell = first.locator(".cell").first
    assert cell.locator(".l1").inner_text() == "100%" and cell.locator(".l2").inner_text() == "user1+1"  # first holder whole
    assert "used by user1, user0" in cell.get_attribute("aria-label")  # biggest VRAM holder first
    assert page.locator("#grid .srow").nth(1).locator(".cell .l1").inner_text() == "MIG"
    # Hover: the full detail of that GPU.
    cell.hover()
    tip = page.locator("#tip")
    expect(tip).to_be_visible()
    text = tip.inner_text()
    assert "gpu-node-01 · GPU 0" in text and "lxc:lab-1" in text and "1001" in text and "python train_1.py" in text
    assert "59 °C" in text and "632 W" in text
    # No server is expanded until one is opened; then exactly one.
    assert page.locator("#detail").is_hidden() and page.locator("article.server").count() == 0
    cell.click()
    expect(page.locator("#detail article.server")).to_have_count(1)
    detail = page.locator("#detail").inner_text()
    assert "gpu-node-01" in detail and "59 °C" in detail and "632 W / 700 W" in detail
    assert "19.4 GiB / 79.6 GiB" in detail  # 19818 MiB of 81559 MiB
    rows = page.locator("#detail .gpu").first.locator("tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).inner_text().split("\t")[:3] == ["user1", "lxc: lab-1", "1001"]  # sorted by VRAM
    assert page.url.endswith("#server-1")
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    assert page.console_errors == []


def test_lost_gpu_offline_host_and_user_highlight(page, hub_process, hub_config):
    from playwright.sync_api import expect

    now = time.time()
    push(hub_process, hub_config, sample_report("lossy", gpus=3, processes=1, sample_time=now - 60))
    fewer = sample_report("lossy", gpus=3, processes=1, sample_time=now)
    fewer["gpus"].pop(1)
    fewer["processes"] = [p for p in fewer["processes"] if p["gpu_uuid"] != sample_report("lossy")["gpus"][1]["uuid"]]
    push(hub_process, hub_config, fewer)
    # A host whose last report is 20 minutes old (sent then, received then: stored with the hub's clock).
    import sqlite3

    old = sample_report("gone-quiet", gpus=2, processes=1, sample_time=now - 30)
    push(hub_process, hub_config, old)
    conn = sqlite3.connect(hub_config.db_path)
    conn.execute("update servers set last_seen = last_seen - 1200 where hostname = 'gone-quiet'")
    conn.commit()
    conn.close()
    mixed = sample_report("mixed", gpus=4, processes=0, sample_time=now)
    mixed["processes"] = [
        {"gpu_uuid": mixed["gpus"][i]["uuid"], "pid": 500 + i, "process_name": "python", "used_gpu_memory": 1024,
         "user": user, "uid": 1000 + i, "container": cont, "container_kind": "docker"}
        for i, (user, cont) in enumerate([("alice", "a1"), ("bob", "b1"), ("alice", "a2")])]
    push(hub_process, hub_config, mixed)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    assert page.locator("#grid .cell").count() == 3 + 2 + 4
    lost = page.locator("#grid .cell.s-lost")
    assert lost.count() == 1
    assert lost.locator(".l1").inner_text() == "✕lost" and lost.locator(".l2").inner_text() == "28:00"
    assert "lossy GPU 1: lost" in lost.get_attribute("aria-label")
    quiet = page.locator(".srow.st-offline")
    assert quiet.locator(".sname").inner_text() == "gone-quiet" and "20 min" in quiet.locator(".ssub").inner_text()
    assert quiet.locator(".cell.s-offline").count() == 2
    quiet.locator(".shead").click()
    expect(page.locator("#detail .last-seen")).to_contain_text("last seen 20 min ago")
    expect(page.locator("#detail .last-seen")).to_contain_text("not live")
    assert page.locator("#detail article.server.is-old").count() == 1
    page.click("#detail-close")
    # Who panel: choosing alice highlights exactly her GPUs (mixed 0 and 2, plus lossy's user0? no: alice only).
    page.click("#who-body button.who-user[data-user='alice']")
    lit = page.locator("#grid .cell.hl")
    expect(lit).to_have_count(2)
    assert {lit.nth(i).get_attribute("data-i") for i in range(2)} == {"0", "2"}
    expect(page.locator("#highlight-text")).to_have_text("User alice: 2 GPUs")
    page.click("#who-body button.chip[data-container='docker:b1']")
    expect(lit).to_have_count(1)
    assert lit.first.get_attribute("data-i") == "1"
    page.click("#highlight-clear")
    expect(lit).to_have_count(0)
    # The filter narrows the who panel; user0 holds GPUs on lossy only (the offline host holds nothing now).
    page.fill("#who-filter", "user0")
    expect(page.locator("#who-body tr")).to_have_count(1)
    assert page.locator("#who-body tr td").nth(1).inner_text() == "2"
    assert page.console_errors == []


def test_theme_toggle_persists_across_reload(page, hub_process, hub_config):
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    before = page.evaluate("document.documentElement.dataset.theme")
    page.click("#theme-toggle")
    after = page.evaluate("document.documentElement.dataset.theme")
    assert {before, after} == {"dark", "light"}
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == after


def test_refresh_updates_a_value_without_reload(page, hub_process, hub_config):
    from playwright.sync_api import expect

    report = sample_report("refresh-node", gpus=1, processes=0, sample_time=time.time() - 60)
    report["sent_at"] = None
    push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    assert page.inner_text("#grid .cell .l1") == "100%"
    page.evaluate("window.__marker = 1")  # survives only if the page is not reloaded
    newer = sample_report("refresh-node", gpus=1, processes=0, sample_time=report["sample_time"] + 30)
    newer["gpus"][0]["utilization.gpu"] = 37
    newer["sent_at"] = None
    push(hub_process, hub_config, newer)
    # Jump the 30 s countdown instead of waiting for it.
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(page.locator("#grid .cell .l1")).to_have_text("37%", timeout=10000)
    assert page.evaluate("window.__marker") == 1
    # Nothing changed: the next refresh is a 304 and the same DOM node stays.
    page.evaluate("window.__cell = document.querySelector('#grid .cell')")
    with page.expect_response("**/api/fleet") as info:
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    assert info.value.status == 304
    assert page.evaluate("window.__cell === document.querySelector('#grid .cell')")


def test_screenshots_in_both_themes(page, hub_process, hub_config, tmp_path):
    """Dark and light screenshots of a populated dashboard.

    ``UPDATE_SCREENSHOTS=1 scripts/test.sh -k screenshots`` writes them to docs/screenshots/
    (shown in the README); otherwise they go to a temporary directory.
    """
    for name, gpus, capture, state in [("dgx-h100-01", 8, "h100-80gb", "load"), ("hgx-h200-02", 4, "h200", "idle"),
                                        ("mig-h100-03", 2, "h100-mig", "load"), ("ws-rtx4080", 1, "rtx-4080", "load")]:
        push(hub_process, hub_config, sample_report(name, gpus=gpus, processes=1 if state == "load" else 0,
                                                    capture=capture, state=state))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    out = os.path.join(ROOT, "docs", "screenshots") if os.environ.get("UPDATE_SCREENSHOTS") else str(tmp_path)
    os.makedirs(out, exist_ok=True)
    for theme in ("dark", "light"):
        page.evaluate(f"localStorage.setItem('sm-theme', '{theme}')")
        page.reload()
        page.wait_for_selector("#grid .cell")
        page.screenshot(path=os.path.join(out, f"dashboard-{theme}.png"), full_page=False)
        assert page.evaluate("document.documentElement.dataset.theme") == theme
        assert os.path.getsize(os.path.join(out, f"dashboard-{theme}.png")) > 20000


def test_phone_width_has_no_sideways_scroll(browser, hub_process, hub_config):
    for n in range(3):
        report = sample_report(f"phone-node-with-a-rather-long-name-{n}", gpus=8, processes=2)
        report["processes"][0]["user"] = "a-user-with-a-very-long-login-name"
        report["processes"][0]["container"] = "a-container-name-that-goes-on-and-on-" * 3
        push(hub_process, hub_config, report)
    broken = sample_report("broken", gpus=0, processes=0)
    broken["gpu_status"] = {"state": "driver_mismatch", "lost": [], "stale": False, "message": "Failed to initialize NVML"}
    push(hub_process, hub_config, broken)
    context = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True)
    tab = context.new_page()
    login(tab, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    tab.wait_for_selector("#grid .cell")
    assert tab.evaluate("document.documentElement.scrollWidth") <= 390
    # Nothing in the grid, the who panel or the problems is cut off at the right edge.
    overflow = tab.evaluate("""() => [...document.querySelectorAll('#grid .srow, #who, #who tr, #problems, .toolbar, .topbar')]
        .filter((el) => el.getBoundingClientRect().right > 390.5).map((el) => el.className || el.id)""")
    assert overflow == []
    assert tab.locator("#grid .srow").first.bounding_box()["width"] <= 390
    header = tab.locator(".topbar").bounding_box()["height"]
    assert header <= 100, header  # compact sticky header
    # A tap opens the server in full screen.
    tab.locator("#grid .cell").first.tap()
    tab.wait_for_selector("#detail article.server")
    assert tab.locator("#detail").bounding_box()["width"] <= 390
    assert tab.evaluate("document.documentElement.scrollWidth") <= 390
    context.close()
