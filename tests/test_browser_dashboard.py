"""The dashboard in a real Chromium against the real hub process."""

import os

import pytest
from browser import login, push
from conftest import ROOT
from reports import sample_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_dashboard_shows_servers_gpus_and_processes(page, hub_process, hub_config):
    push(hub_process, hub_config, sample_report("gpu-node-01", gpus=2, processes=2))
    push(hub_process, hub_config, sample_report("mig-node", gpus=1, processes=0, capture="h100-mig", state="idle"))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#server-1 .gpu")
    summary = page.inner_text("#summary")
    assert "2 online" in summary and "2 GPUs busy · 1 free" in summary
    card = page.inner_text("#overview")
    assert "gpu-node-01" in card and "NVIDIA H100 80GB HBM3 × 2" in card and "2/2 GPUs busy" in card
    first = page.locator("#server-1")
    text = first.inner_text()
    assert "GPU 0" in text and "100%" in text and "59 °C" in text and "632 W / 700 W" in text
    assert "19.4 GiB / 79.6 GiB" in text  # 19818 MiB of 81559 MiB
    rows = first.locator(".gpu").first.locator("tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).inner_text().split("\t")[:3] == ["user1", "lxc: lab-1", "1001"]  # sorted by VRAM
    mig_text = page.locator("#server-2").inner_text()
    assert "MIG" in mig_text
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
    import time

    report = sample_report("refresh-node", gpus=1, processes=0, sample_time=time.time() - 60)
    report["sent_at"] = None
    push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#server-1 .gpu")
    assert "43%" in page.inner_text("#server-1 .host")  # cpu 42.5 rounded
    page.evaluate("window.__marker = 1")  # survives only if the page is not reloaded
    newer = sample_report("refresh-node", gpus=1, processes=0, sample_time=report["sample_time"] + 30)
    newer["cpu"]["percent"] = 77.0
    newer["sent_at"] = None
    push(hub_process, hub_config, newer)
    # Jump the 30 s countdown instead of waiting for it.
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    from playwright.sync_api import expect

    expect(page.locator("#server-1 .host")).to_contain_text("77%", timeout=10000)
    assert page.evaluate("window.__marker") == 1


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
    page.wait_for_selector("#server-4 .gpu")
    out = os.path.join(ROOT, "docs", "screenshots") if os.environ.get("UPDATE_SCREENSHOTS") else str(tmp_path)
    os.makedirs(out, exist_ok=True)
    for theme in ("dark", "light"):
        page.evaluate(f"localStorage.setItem('sm-theme', '{theme}')")
        page.reload()
        page.wait_for_selector("#server-4 .gpu")
        page.screenshot(path=os.path.join(out, f"dashboard-{theme}.png"), full_page=False)
        assert page.evaluate("document.documentElement.dataset.theme") == theme
        assert os.path.getsize(os.path.join(out, f"dashboard-{theme}.png")) > 20000


def test_phone_width_has_no_sideways_scroll(browser, hub_process, hub_config):
    push(hub_process, hub_config, sample_report("phone-node-with-a-long-name", gpus=2, processes=2))
    context = browser.new_context(viewport={"width": 390, "height": 800})
    tab = context.new_page()
    login(tab, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    tab.wait_for_selector("#server-1 .gpu")
    assert tab.evaluate("document.documentElement.scrollWidth") <= 391
    context.close()
