"""AMD GPUs on the dashboard in a real Chromium against the real hub: one cell per GPU with
its vendor, holders with user and container, the server detail with the AMD badge.

The report is built by the agent's own ReportBuilder from the MI300X fixture tree
(tests/fixtures/sysfs|procfs/mi300x-8, see SOURCE.md)."""

import os

import pytest
from browser import login, push
from conftest import ROOT

from monitor_agent.collect import ReportBuilder
from monitor_agent.config import check

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIX = os.path.join(ROOT, "tests", "fixtures")


def mi300x_report(tmp_path):
    cfg = check({"server_url": "http://127.0.0.1:9", "token": "x", "nvidia_smi": str(tmp_path / "none"),
                 "amd_smi": None, "spool_dir": str(tmp_path / "spool"), "hostname": "mi300x-01",
                 "machine_id": "d" * 32, "sysfs_root": os.path.join(FIX, "sysfs", "mi300x-8"),
                 "procfs_root": os.path.join(FIX, "procfs", "mi300x-8"), "interval": 30, "gpu_timeout": 10,
                 "spool_max_mb": 64, "spool_max_age_h": 168, "retry_base_s": 5, "retry_max_s": 300,
                 "inventory_interval": 60, "probe_interval": 60})
    return ReportBuilder(cfg).build()


def test_amd_gpus_on_the_grid_with_holders_and_vendor(page, hub_process, hub_config, tmp_path):
    from playwright.sync_api import expect

    push(hub_process, hub_config, mi300x_report(tmp_path))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    cells = page.locator("#grid .cell")
    assert cells.count() == 8
    summary = page.inner_text("#summary")
    assert "1 online" in summary and "2 free" in summary  # GPUs 2 and 5 hold nothing
    gpu3 = cells.nth(3)
    label = gpu3.get_attribute("aria-label")
    assert label.startswith("mi300x-01 GPU 3 (AMD)") and "used by alice, nobody" in label
    gpu3.hover()
    tip = page.locator("#tip")
    expect(tip).to_be_visible()
    text = tip.inner_text()
    assert "AMD" in text and "AMD Instinct MI300X" in text and "0000:65:00.0" in text
    assert "lxc:vision_trainer" in text and "slurm:job 4242" in text and "4130" in text
    gpu3.click()
    expect(page.locator("#detail article.server")).to_have_count(1)
    first = page.locator("#detail .gpu").first
    assert first.locator(".badge-vendor").inner_text() == "AMD"
    assert "AMD Instinct MI300X" in first.inner_text() and "86 °C" in first.inner_text()
    rows = page.locator("#detail .gpu").nth(3).locator("tbody tr")
    assert rows.count() == 2 and rows.nth(0).inner_text().split("\t")[:3] == ["alice", "lxc: vision_trainer", "4130"]
    # The free-GPU finder offers the two idle MI300X with the variable ROCm reads.
    page.goto(hub_process.base_url + "/free")
    page.fill("input[name=count]", "2")
    page.click("#free-form button[type=submit]")
    row = page.locator("#free-table tbody tr").first
    expect(row).to_contain_text("ROCR_VISIBLE_DEVICES=2,5")
    assert "mi300x-01" in row.inner_text() and "(or HIP_VISIBLE_DEVICES)" in row.inner_text()
    assert page.console_errors == []
