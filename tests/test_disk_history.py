"""Issue 26 item 7: disk use per mount point and host temperatures over 30 days on the history page's
queries, from the roll-ups (raw rows are kept only data.retention_days)."""

import json
import time
import uuid

from reports import sample_report

from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.rollup import Maintenance
from server_monitor.storage.store import store_report

DAY = 86400
TIB = 1024**4


def _grow(path, days=30, step=3600):
    """One server reporting every ``step`` s for ``days`` days through the product's own validation and
    storage: "/" fills from 10 % by 2 % a day, "/data1" stays at 50 %, "/scratch" is mounted only in
    the last 3 days; coretemp runs 40 °C by night and 70 °C by day."""
    conn = schema.connect(path)
    now = int(time.time())
    template = sample_report("disky", gpus=1, processes=0, disks=0)
    for ts in range(now - days * DAY, now, step):
        report = json.loads(json.dumps(template))
        report.update(report_id=str(uuid.uuid4()), sample_time=ts, sent_at=ts, interval=step)
        age_days = (now - ts) / DAY
        report["disks"] = [
            {"mountpoint": "/", "device": "/dev/nvme0n1p2", "fstype": "ext4", "total_bytes": 10 * TIB,
             "used_bytes": int(10 * TIB * (0.10 + 0.02 * (days - age_days)))},
            {"mountpoint": "/data1", "device": "/dev/md0", "fstype": "xfs", "total_bytes": 100 * TIB,
             "used_bytes": 50 * TIB}]
        if age_days < 3:
            report["disks"].append({"mountpoint": "/scratch", "device": "/dev/nvme1n1", "fstype": "ext4",
                                    "total_bytes": 4 * TIB, "used_bytes": TIB})
        hot = 6 * 3600 <= ts % DAY < 18 * 3600
        report["temperatures"] = [
            {"chip": "coretemp", "label": "Package id 0", "current_c": 70.0 if hot else 40.0, "high_c": 80.0,
             "critical_c": 100.0},
            {"chip": "coretemp", "label": "Core 0", "current_c": 65.0 if hot else 35.0, "high_c": 80.0,
             "critical_c": 100.0}]
        assert store_report(conn, validate_report(report), ts)["stored"]
    conn.close()
    stats = Maintenance(path, pause=0).run_once()
    assert stats["deleted"]["disk_samples"] > 0  # raw disk rows older than retention_days are gone
    return now


def _query(admin, name, **params):
    q = "&".join(f"{k}={v}" for k, v in params.items())
    response = admin.get(f"/monitor/{name}.json?_shape=array&{q}")
    assert response.status_code == 200, response.text
    return response.json()


def test_item7_disk_history_30_days_per_mount_from_rollups(admin):
    now = _grow(admin.db)
    server_id = _query(admin, "servers")[0]["server_id"]
    rows = _query(admin, "disk_history", server_id=server_id, hours=720)
    assert len(rows) <= 1000 and {r["tier"] for r in rows} == {"1h"}
    by_mount = {}
    for r in rows:
        by_mount.setdefault(r["mountpoint"], []).append(r)
    assert set(by_mount) == {"/", "/data1", "/scratch"}
    root = by_mount["/"]
    # The whole 30 days are there (raw rows older than 7 days were deleted: these are roll-ups) ...
    assert root[0]["ts"] < now - 29 * DAY and root[-1]["ts"] > now - DAY
    # ... and the fill: ~10 % a month ago, ~70 % now, rising.
    assert 9 <= root[0]["used_percent"] <= 12 and 68 <= root[-1]["used_percent_max"] <= 70.1
    assert all(a["used_percent"] <= b["used_percent"] for a, b in zip(root, root[1:]))
    assert {r["used_percent"] for r in by_mount["/data1"]} == {50.0}
    assert by_mount["/scratch"][0]["ts"] > now - 3 * DAY - 3 * 3600 and by_mount["/scratch"][0]["used_percent"] == 25.0
    # A short window reads raw samples, with every mount.
    recent = _query(admin, "disk_history", server_id=server_id, hours=24)
    assert {r["tier"] for r in recent} == {"raw"} and {r["mountpoint"] for r in recent} == {"/", "/data1", "/scratch"}


def test_item7_temperature_history_per_chip_30_days(admin):
    _grow(admin.db)
    server_id = _query(admin, "servers")[0]["server_id"]
    rows = _query(admin, "temperature_history", server_id=server_id, hours=720)
    # One chip: buckets of 2,619 s fit the 5-minute roll-ups (raw is gone beyond 7 days).
    assert {r["sensor"] for r in rows} == {"coretemp"} and {r["tier"] for r in rows} == {"5m"}
    # Stored per chip as its hottest reading (Package 70/40, not Core 0's 65/35).
    assert max(r["temperature_c_max"] for r in rows) == 70.0 and min(r["temperature_c"] for r in rows) >= 40.0
    assert {r["critical_c"] for r in rows} == {100.0}
    assert len(rows) >= 719  # one report an hour for 30 days, one per bucket
