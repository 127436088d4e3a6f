"""AMD GPUs in the fleet features that read history: idle holders and GPU-hours.

Reports are built by the real agent code (ReportBuilder) from the MI300X fixture tree
(tests/fixtures/sysfs|procfs/mi300x-8, see SOURCE.md), posted to the hub's ingest every 30 s of
simulated time over 2.5 hours, and rolled up by the hub's own maintenance pass.
"""

import os
import shutil
import time
import uuid

import pytest
from conftest import ROOT
from test_hub_datasette import Client, ingest

from monitor_agent.collect import ReportBuilder
from monitor_agent.config import check
from server_monitor.storage.rollup import Maintenance

FIX = os.path.join(ROOT, "tests", "fixtures")


@pytest.fixture
def admin(datasette, hub_config):
    client = Client(datasette)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    return client


def amd_report(tmp_path):
    sys_root = tmp_path / "sys"
    shutil.copytree(os.path.join(FIX, "sysfs", "mi300x-8"), sys_root, symlinks=True)
    # GPU 4 (0000:85:00.0): its process keeps 64 GB but the GPU does nothing.
    busy = sys_root / "devices" / "pci0000:00" / "0000:00:01.4" / "0000:85:00.0" / "gpu_busy_percent"
    busy.write_text("0\n")
    cfg = check({"server_url": "http://127.0.0.1:9", "token": "x", "nvidia_smi": str(tmp_path / "none"),
                 "amd_smi": None, "spool_dir": str(tmp_path / "spool"), "hostname": "mi300x-01",
                 "machine_id": "c" * 32, "sysfs_root": str(sys_root),
                 "procfs_root": os.path.join(FIX, "procfs", "mi300x-8"),
                 **{k: v for k, v in (("interval", 30), ("gpu_timeout", 10), ("spool_max_mb", 64),
                                      ("spool_max_age_h", 168), ("retry_base_s", 5), ("retry_max_s", 300),
                                      ("inventory_interval", 60), ("probe_interval", 60))}})
    return ReportBuilder(cfg).build()


def test_idle_holders_and_gpu_hours_for_amd(admin, hub_config, tmp_path):
    report = amd_report(tmp_path)
    token = hub_config.get("agent.token")
    now = int(time.time())
    start = now - 9000
    for ts in range(start, now + 1, 30):
        report.update(sample_time=ts, report_id=str(uuid.uuid4()))
        assert ingest(admin, report, token).status_code == 201
    idle = admin.get("/monitor/idle_holders.json?_shape=array").json()
    assert [(r["server"], r["gpu_index"], r["users"]) for r in idle] == [("mi300x-01", 4, "nobody")]
    assert idle[0]["held_mib"] == 65536 and idle[0]["idle_hours"] >= 2

    Maintenance(hub_config.db_path, now=lambda: now, pause=0).run_once()
    hour = -(-start // 3600) * 3600  # the first whole hour covered by reports
    rows = admin.get(f"/monitor/gpu_hours.json?_shape=array&by=user&since={hour}&until={hour + 3600}").json()
    hours = {r["owner"]: r["gpu_hours"] for r in rows}
    # alice (Incus container): GPU 7 alone and GPU 3 shared with nobody's Slurm job (half);
    # root (Docker): GPUs 1 and 6; nobody: GPU 0, GPU 4 (two of its processes: one GPU) and half of GPU 3.
    assert hours == pytest.approx({"alice": 1.5, "root": 2.0, "nobody": 2.5}, abs=0.02)


def test_alerts_fire_for_hot_amd_gpus_and_ras_errors(tmp_path):
    from test_alerts import Receiver

    from server_monitor.jobs import alerts
    from server_monitor.storage import schema
    from server_monitor.storage.contract import validate_report
    from server_monitor.storage.store import store_report

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    receiver = Receiver()
    cfg = alerts.settings(type("C", (), {"get": lambda self, key, default=None: {  # the config's alerts section
        "webhooks": [{"url": receiver.url + "/generic", "format": "generic"}]}})())
    engine = alerts.AlertEngine(path, cfg)
    conn = schema.connect(path)
    report = amd_report(tmp_path)
    report["gpus"][6]["ecc.errors.uncorrected.volatile.total"] = 2  # as amd-smi reports it (test_amdsmi.py)
    now = int(time.time())
    try:
        for i in range(12):  # 6 minutes of reports: GPUs 0 and 6 run at 86 and 90 °C junction
            report.update(sample_time=now - 330 + i * 30, report_id=str(uuid.uuid4()))
            store_report(conn, validate_report(report), now - 330 + i * 30)
        fired = sorted(key.split(":")[0] for key in engine.run_once(now)["fired"])
        assert fired == ["gpu_ecc", "gpu_temperature", "gpu_temperature"]
        messages = " ".join(b["message"] for b in receiver.of("/generic"))
        assert "GPU 6 at 90 °C" in messages and "GPU 0 at 86 °C" in messages and "GPU 6: 2 uncorrectable" in messages
    finally:
        receiver.server.shutdown()
