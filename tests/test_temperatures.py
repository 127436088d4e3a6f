"""Host temperatures (issue 26 item 7): the agent's hwmon reader on real readings written as sysfs
trees (tests/fixtures/hwmon/SOURCE.md), the report contract, storage per chip and a real agent run."""

import os
import sqlite3
import subprocess
import sys

from conftest import FAKE_NVSMI, ROOT, TESTS, sample_report

from monitor_agent.temperatures import per_chip, read_temperatures
from server_monitor.storage import contract

HWMON = os.path.join(TESTS, "fixtures", "hwmon")


def test_item7_hwmon_tree_parsed_to_celsius_with_labels_and_limits():
    """Ryzen + NVMe (Meliox/PVE-mods#1): millidegrees to °C, labels from tempN_label, the NVMe
    drive's unset limit 65261.85 °C (0xFFFF K) dropped, k10temp's gap in numbering (no temp2) kept."""
    readings = read_temperatures(os.path.join(HWMON, "ryzen_nvme"))
    assert readings == [
        {"chip": "nvme", "label": "Composite", "current_c": 36.85, "high_c": 81.85, "critical_c": 84.85},
        {"chip": "nvme", "label": "Sensor 1", "current_c": 36.85, "high_c": None, "critical_c": None},
        {"chip": "nvme", "label": "Sensor 2", "current_c": 41.85, "high_c": None, "critical_c": None},
        {"chip": "k10temp", "label": "Tctl", "current_c": 51.625, "high_c": None, "critical_c": None},
        {"chip": "k10temp", "label": "Tccd1", "current_c": 48.75, "high_c": None, "critical_c": None},
        {"chip": "k10temp", "label": "Tccd2", "current_c": 45.0, "high_c": None, "critical_c": None},
    ]


def test_item7_hwmon_unlabelled_sensor_and_second_chip_of_a_name():
    """psensor#8's host: two NVMe drives become nvme and nvme#2; iwlwifi's unreadable temp1 (N/A)
    is left out; Comet Lake's PCH without a label is temp1 as lm-sensors names it."""
    two = read_temperatures(os.path.join(HWMON, "two_nvme"))
    assert [(r["chip"], r["label"], r["current_c"]) for r in two] == [
        ("k10temp", "Tctl", 58.25), ("k10temp", "Tdie", 58.25),
        ("nvme", "Composite", 55.85), ("nvme#2", "Composite", 53.85)]
    assert two[2]["critical_c"] == 79.85 and two[3]["high_c"] == 74.85
    intel = read_temperatures(os.path.join(HWMON, "cometlake"))
    assert ("pch_cometlake", "temp1", 43.0) in [(r["chip"], r["label"], r["current_c"]) for r in intel]
    assert {"chip": "coretemp", "label": "Package id 0", "current_c": 50.0, "high_c": 80.0,
            "critical_c": 100.0} in intel
    assert read_temperatures(os.path.join(HWMON, "no-such-tree")) == []


def test_item7_agent_sends_one_reading_per_chip_the_hottest_with_the_lowest_limits():
    """What the agent reports (and the hub stores) per chip: the hottest reading and its label, the
    lowest limits of the chip; NVMe's unset 65261.85 °C limits never count."""
    chips = per_chip(read_temperatures(os.path.join(HWMON, "ryzen_nvme")))
    assert chips == [
        {"chip": "nvme", "label": "Sensor 2", "current_c": 41.85, "high_c": 81.85, "critical_c": 84.85},
        {"chip": "k10temp", "label": "Tctl", "current_c": 51.625, "high_c": None, "critical_c": None}]
    assert [c["chip"] for c in per_chip(read_temperatures(os.path.join(HWMON, "two_nvme")))] == [
        "k10temp", "nvme", "nvme#2"]


def test_item7_bad_temperature_value_nulls_only_that_field():
    """A reading out of range or not a number nulls that value only; the report and the other
    readings are kept (contract: soft fields)."""
    report = sample_report()
    report["temperatures"] = [
        {"chip": "coretemp", "label": "Package id 0", "current_c": 50.0, "high_c": 80.0, "critical_c": "hot"},
        {"chip": "nvme", "label": "Sensor 1", "current_c": 36.85, "high_c": 65261.85, "critical_c": None},
    ]
    checked = contract.validate_report(report)
    assert checked["temperatures"] == [
        {"chip": "coretemp", "label": "Package id 0", "current_c": 50.0, "high_c": 80.0, "critical_c": None},
        {"chip": "nvme", "label": "Sensor 1", "current_c": 36.85, "high_c": None, "critical_c": None},
    ]
    assert len(checked["nulled"]) == 2 and "temperatures[0].critical_c" in checked["nulled"][0]


def test_item7_real_agent_once_stores_temperatures_per_chip(ingest_server, tmp_path):
    """``agent.py --once`` with sysfs_root at a fixture tree posts to the real ingest app; the hub
    stores one row per chip: the hottest reading, the lowest limits."""
    config = tmp_path / "agent.yaml"
    config.write_text(f"server_url: {ingest_server.base_url}\ntoken: {ingest_server.config.get('agent.token')}\n"
                      f"interval: 5\nnvidia_smi: {FAKE_NVSMI}\nspool_dir: {tmp_path / 'spool'}\n"
                      f"sysfs_root: {os.path.join(HWMON, 'cometlake')}\nslurm: false\nkmsg_path: null\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), "--once"],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, FAKE_NVSMI_GPUS="1"))
    assert result.returncode == 0 and result.stdout.startswith("stored report "), result.stderr
    rows = sqlite3.connect(ingest_server.config.db_path).execute(
        "SELECT sensor, temperature_c, high_c, critical_c FROM temperature_samples ORDER BY sensor").fetchall()
    assert rows == [("coretemp", 50.0, 80.0, 100.0), ("drivetemp", 43.0, 70.0, 70.0),
                    ("nvme", 45.85, 85.85, 86.85), ("pch_cometlake", 43.0, None, None)]
