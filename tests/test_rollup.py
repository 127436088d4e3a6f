"""Tiered retention: roll-ups with exact avg/max, watermark, dirty hours, deletes, tier choice."""


import os

import pytest
from conftest import ROOT, file_connection
from reports import sample_report

from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.rollup import Maintenance
from server_monitor.storage.store import store_report

DAY = 86400
T0 = 1_800_000_000 // 3600 * 3600  # an hour boundary


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    conn.execute("insert into servers (id, machine_id, hostname, first_seen, last_seen) values (1, 'm1', 'h1', 0, 0)")
    conn.execute("insert into gpus (id, server_id, uuid, first_seen) values (10, 1, 'GPU-a', 0), (11, 1, 'GPU-b', 0)")
    return conn


def add_samples(conn, start, count, step=30, util=lambda i: i % 100, cpu=lambda i: 10.0):
    # One transaction: the connection autocommits, and a commit per row (an fsync each) made
    # 20 days of samples take half a minute of disk waits.
    conn.execute("BEGIN")
    conn.executemany(
        "insert into host_samples (server_id, ts, received_at, report_id, cpu_percent, memory_used_bytes)"
        " values (1, ?, ?, ?, ?, ?)",
        [(start + i * step, start + i * step, f"r{start + i * step}", cpu(i), 1000 + i) for i in range(count)])
    conn.executemany(
        "insert into gpu_samples (gpu_id, ts, utilization_gpu, memory_used_mib, power_draw_w) values (?, ?, ?, ?, ?)",
        [(g, start + i * step, util(i), 100 * g, 50.0 + i) for g in (10, 11) for i in range(count)])
    conn.execute("COMMIT")


def run(conn, now, **kw):
    return Maintenance(conn.path, now=lambda: now, pause=0, **kw).run_once()


def test_hours_roll_up_with_exact_avg_and_max(db):
    add_samples(db, T0, 240)  # two hours of 30-second samples, utilization 0..99, 0..99, 0..39
    stats = run(db, T0 + 2 * 3600 + 601)
    assert stats["hours_rolled"] == 2
    five = db.execute("select ts, samples, utilization_gpu_avg, utilization_gpu_max, power_draw_w_max"
                      " from gpu_samples_5m where gpu_id = 10 order by ts").fetchall()
    assert len(five) == 24
    assert five[0] == (T0, 10, 4.5, 9, 59.0)  # samples 0..9
    hourly = db.execute("select ts, samples, utilization_gpu_avg, utilization_gpu_max from gpu_samples_1h"
                        " where gpu_id = 11 order by ts").fetchall()
    first_hour = [i % 100 for i in range(120)]
    assert hourly[0] == (T0, 120, sum(first_hour) / 120, 99)
    host = db.execute("select samples, cpu_percent_avg, memory_used_bytes_max from host_samples_1h where ts = ?",
                      (T0 + 3600,)).fetchone()
    assert host == (120, 10.0, 1000 + 239)
    assert db.execute("select value from maintenance_state where name = 'rolled_until'").fetchone()[0] == T0 + 7200


def test_incomplete_hour_waits_for_the_lag(db):
    add_samples(db, T0, 120)
    assert run(db, T0 + 3600 + 10)["hours_rolled"] == 0
    assert run(db, T0 + 3600 + 601)["hours_rolled"] == 1


def test_late_samples_are_rolled_up_again(db):
    add_samples(db, T0, 120, util=lambda i: 10)
    run(db, T0 + 3600 + 601)
    # A spooled report for that hour arrives later, through the normal ingest path.
    report = validate_report(sample_report("h1", gpus=0, processes=0, machine_id="m1", sample_time=T0 + 15))
    report["sent_at"] = None
    assert store_report(db, report, T0 + 5000)["stored"]
    assert db.execute("select hour from rollup_dirty").fetchall() == [(T0,)]
    stats = run(db, T0 + 5000)
    assert stats["dirty_hours"] == 1
    assert db.execute("select samples from host_samples_1h where ts = ?", (T0,)).fetchone() == (121,)
    assert db.execute("select count(*) from rollup_dirty").fetchone() == (0,)


def test_late_samples_older_than_raw_retention_are_merged_by_ingest(db):
    add_samples(db, T0, 120, util=lambda i: 10)
    run(db, T0 + 3600 + 601)
    later = T0 + 8 * DAY
    run(db, later)  # raw retention passed: the raw hour is deleted, the roll-ups stay
    assert db.execute("select count(*) from gpu_samples where ts < ?", (T0 + 3600,)).fetchone() == (0,)
    report = sample_report("h1", gpus=1, processes=0, machine_id="m1", sample_time=T0 + 45)
    report["sent_at"] = None
    report["gpus"][0]["uuid"] = "GPU-a"
    report["gpus"][0]["utilization.gpu"] = 70
    assert store_report(db, validate_report(report), later)["stored"]
    expected = (121, (120 * 10 + 70) / 121, 70)
    query = "select samples, utilization_gpu_avg, utilization_gpu_max from gpu_samples_1h where gpu_id = 10 and ts = ?"
    assert db.execute(query, (T0,)).fetchone() == expected
    five = db.execute("select samples, utilization_gpu_max from gpu_samples_5m where gpu_id = 10 and ts = ?", (T0,))
    assert five.fetchone() == (11, 70)
    run(db, later + 60)  # the dirty mark is cleared without recomputing from the partial raw
    assert db.execute(query, (T0,)).fetchone() == expected
    assert db.execute("select count(*) from rollup_dirty").fetchone() == (0,)
    assert db.execute("select count(*) from gpu_samples where ts < ?", (T0 + 3600,)).fetchone() == (0,)


def test_retention_deletes_each_tier_in_batches(db):
    add_samples(db, T0, 240)
    run(db, T0 + 2 * 3600 + 601)
    assert run(db, T0 + 7 * DAY + 3600, batch=50)["deleted"]["gpu_samples"] == 240  # first hour: 2 GPUs × 120
    assert db.execute("select min(ts) from gpu_samples").fetchone() == (T0 + 3600,)
    stats = run(db, T0 + 91 * DAY)
    assert stats["deleted"]["gpu_samples_5m"] == 48 and stats["deleted"]["host_samples_5m"] == 24
    assert db.execute("select count(*) from gpu_samples_1h").fetchone() == (4,)
    assert run(db, T0 + 731 * DAY)["deleted"]["gpu_samples_1h"] == 4


def test_history_query_reads_the_rolled_up_tier(db, tmp_path):
    import time

    from server_monitor.storage.rollup import LAG

    now = int(time.time())
    start = (now - 20 * DAY) // 3600 * 3600
    add_samples(db, start, 20 * 24 * 12, step=300, util=lambda i: 40)  # 20 days, one sample / 5 min
    run(db, now)
    db.execute("delete from gpu_samples where ts < ?", (now - 7 * DAY,))  # as raw retention would
    watermark = db.execute("select value from maintenance_state where name='rolled_until'").fetchone()[0]
    assert watermark >= (now - LAG) // 3600 * 3600 - 3600
    sql = open(__import__("os").path.join(__import__("conftest").ROOT, "canned_queries", "gpu_history.sql")).read()
    params = {"server_id": "1", "hours": str(30 * 24), "_scope_all": 1, "_scope_servers": "[]"}
    rows = db.execute(sql, params).fetchall()
    cols = [d[0] for d in db.execute(sql, params).description]
    rows = [dict(zip(cols, r)) for r in rows]
    assert {r["tier"] for r in rows} == {"1h"}  # 30 days × 2 GPUs: ~87-minute buckets
    assert len(rows) <= 1000
    assert rows[0]["ts"] <= start + rows[0]["bucket_s"]  # reaches back past raw retention
    assert all(r["utilization_gpu"] == 40 for r in rows)
    assert sum(r["samples"] for r in rows if r["gpu_id"] == 10) == 20 * 24 * 12
    host_sql = open(__import__("os").path.join(__import__("conftest").ROOT, "canned_queries", "server_history.sql")).read()
    week = db.execute(host_sql, dict(params, hours=str(7 * 24)))
    cols = [d[0] for d in week.description]
    week = [dict(zip(cols, r)) for r in week.fetchall()]
    assert {r["tier"] for r in week} == {"5m"}  # 7 days, one series: ~10-minute buckets
    assert 0 < len(week) <= 1000


def test_xid_events_are_kept_as_long_as_the_hourly_tier_and_deleted_in_batches(db):
    events = [{"xid": 79, "pci.bus_id": "00000000:18:00.0", "name": "GPU has fallen off the bus", "seq": i,
               "usec": 1000 + i, "time": T0 + i, "message": f"NVRM: Xid (PCI:0000:18:00): 79, record {i}"}
              for i in range(7)]
    report = sample_report("h1", gpus=1, processes=0, machine_id="m1", sample_time=T0 + 10)
    report["kmsg_state"] = "ok"
    report["xid_events"] = events
    assert store_report(db, validate_report(report), T0 + 10)["stored"]
    newer = sample_report("h1", gpus=1, processes=0, machine_id="m1", sample_time=T0 + 40 * DAY)
    newer["xid_events"] = [dict(events[0], seq=100, usec=5000, time=T0 + 40 * DAY)]
    assert store_report(db, validate_report(newer), T0 + 40 * DAY)["stored"]
    assert db.execute("select count(*) from xid_events").fetchone() == (8,)
    # Past raw (7 d) and 5-minute (90 d) retention: the fault history stays.
    assert run(db, T0 + 91 * DAY)["deleted"]["xid_events"] == 0
    # Past the hourly tier's 730 days: the old ones go, three per transaction, the newer one stays.
    assert run(db, T0 + 731 * DAY, batch=3)["deleted"]["xid_events"] == 7
    assert db.execute("select seq from xid_events").fetchall() == [(100,)]
    assert run(db, T0 + 731 * DAY, rollup_1h_days=30)["deleted"]["xid_events"] == 1


def _depth_values(i):
    """GPU-depth values of report ``i`` (30 s apart): gauges, a downgraded PCIe link for one
    report each, monotonic counters."""
    return {
        "utilization.encoder": (i * 7) % 40, "utilization.decoder": (i * 3) % 25,
        "pcie.link.gen.current": 1 if i == 13 else 5, "pcie.link.width.current": 8 if i == 50 else 16,
        "ecc.errors.corrected.volatile.total": i // 10, "ecc.errors.uncorrected.volatile.total": i // 100,
        "clocks_event_reasons_counters.sw_power_cap": i * 1000,
        "clocks_event_reasons_counters.sw_thermal_slowdown": i * 10,
        "clocks_event_reasons_counters.hw_thermal_slowdown": i // 60,
        "temperature.gpu.tlimit": 20 + (i % 5),
    }


def _expected_depth(values):
    """Aggregates of a list of _depth_values dicts, as the tiers must hold them."""
    def col(key):
        return [v[key] for v in values]
    return {
        "samples": len(values),
        "utilization_encoder_avg": sum(col("utilization.encoder")) / len(values),
        "utilization_encoder_max": max(col("utilization.encoder")),
        "utilization_decoder_avg": sum(col("utilization.decoder")) / len(values),
        "utilization_decoder_max": max(col("utilization.decoder")),
        "pcie_link_gen_current_min": min(col("pcie.link.gen.current")),
        "pcie_link_gen_current_max": max(col("pcie.link.gen.current")),
        "pcie_link_width_current_min": min(col("pcie.link.width.current")),
        "pcie_link_width_current_max": max(col("pcie.link.width.current")),
        "ecc_errors_corrected_volatile_total_max": max(col("ecc.errors.corrected.volatile.total")),
        "ecc_errors_uncorrected_volatile_total_max": max(col("ecc.errors.uncorrected.volatile.total")),
        "sw_power_cap_us_max": max(col("clocks_event_reasons_counters.sw_power_cap")),
        "sw_thermal_slowdown_us_max": max(col("clocks_event_reasons_counters.sw_thermal_slowdown")),
        "hw_thermal_slowdown_us_max": max(col("clocks_event_reasons_counters.hw_thermal_slowdown")),
        "temperature_gpu_tlimit_c_avg": sum(col("temperature.gpu.tlimit")) / len(values),
        "temperature_gpu_tlimit_c_min": min(col("temperature.gpu.tlimit")),
    }


def test_gpu_depth_series_roll_up_into_both_tiers_and_the_history_query(tmp_path):
    """ECC / throttle counters, PCIe link, encoder/decoder and tlimit reach the 5-minute and
    hourly tiers exactly (written by store_report, rolled and raw-deleted by the hub's own
    Maintenance), and gpu_history shows them from the tier once raw is gone."""
    import time

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    now = int(time.time())
    start = (now // 3600 - 4) * 3600  # two complete hours, 2-4 h ago
    values = [_depth_values(i) for i in range(240)]
    for i, extra in enumerate(values):
        report = sample_report("depth", gpus=1, processes=0, machine_id="m-depth", sample_time=start + 30 * i)
        report["sent_at"] = start + 30 * i
        report["gpus"][0].update(extra)
        assert store_report(conn, validate_report(report), start + 30 * i)["stored"]
    gpu_id = conn.execute("select id from gpus").fetchone()[0]
    names = list(_expected_depth(values[:1]))
    # retention_days = 1 h: the same pass rolls the hours up, then deletes their raw rows.
    stats = Maintenance(path, retention_days=1 / 24, pause=0, now=lambda: now).run_once()
    assert stats["hours_rolled"] >= 2 and stats["deleted"]["gpu_samples"] == 240

    def tier_row(table, ts):
        row = conn.execute(f"select {', '.join(names)} from {table} where gpu_id = ? and ts = ?", (gpu_id, ts)).fetchone()
        return dict(zip(names, row))

    def close(actual, expected):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert actual[key] == pytest.approx(expected[key], abs=1e-9), key

    close(tier_row("gpu_samples_5m", start), _expected_depth(values[0:10]))  # gen 1 at i = 13 is not here
    close(tier_row("gpu_samples_5m", start + 300), _expected_depth(values[10:20]))
    assert tier_row("gpu_samples_5m", start + 300)["pcie_link_gen_current_min"] == 1
    close(tier_row("gpu_samples_1h", start), _expected_depth(values[0:120]))
    close(tier_row("gpu_samples_1h", start + 3600), _expected_depth(values[120:240]))
    assert tier_row("gpu_samples_1h", start)["pcie_link_width_current_min"] == 8

    sql = open(os.path.join(ROOT, "canned_queries", "gpu_history.sql")).read()
    cur = conn.execute(sql, {"server_id": "1", "hours": "100", "_scope_all": 1, "_scope_servers": "[]"})
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    assert {r["tier"] for r in rows} == {"5m"} and sum(r["samples"] for r in rows) == 240
    assert min(r["pcie_link_gen_min"] for r in rows) == 1  # the degraded moment is not averaged away
    assert max(r["pcie_link_gen_max"] for r in rows) == 5
    assert min(r["pcie_link_width_min"] for r in rows) == 8
    assert max(r["ecc_errors_corrected_volatile_total"] for r in rows) == 23
    assert max(r["sw_power_cap_us"] for r in rows) == 239_000
    assert max(r["hw_thermal_slowdown_us"] for r in rows) == 3
    assert min(r["temperature_gpu_tlimit_c_min"] for r in rows) == 20
    total = sum(r["utilization_encoder"] * r["samples"] for r in rows)
    assert total == pytest.approx(sum(v["utilization.encoder"] for v in values), abs=0.05 * len(rows))


def test_late_gpu_depth_sample_merges_min_and_max_into_the_tiers(db):
    add_samples(db, T0, 120, util=lambda i: 10)
    db.execute("update gpu_samples set pcie_link_gen_current = 4, ecc_errors_corrected_volatile_total = 5")
    run(db, T0 + 3600 + 601)
    later = T0 + 8 * DAY
    run(db, later)  # raw deleted: a late sample is merged by ingest
    report = sample_report("h1", gpus=1, processes=0, machine_id="m1", sample_time=T0 + 45)
    report["sent_at"] = None
    report["gpus"][0].update({"uuid": "GPU-a", "pcie.link.gen.current": 2, "ecc.errors.corrected.volatile.total": 3})
    assert store_report(db, validate_report(report), later)["stored"]
    for table in ("gpu_samples_5m", "gpu_samples_1h"):
        row = db.execute(f"select pcie_link_gen_current_min, pcie_link_gen_current_max,"
                         f" ecc_errors_corrected_volatile_total_max from {table} where gpu_id = 10 and ts = ?", (T0,))
        assert row.fetchone() == (2, 4, 5)


def test_item6_user_days_follow_gpu_usage_1h_through_late_reports(tmp_path):
    """The per-user page's table (gpu_usage_user_1d) holds exactly gpu_usage_1h summed per user, UTC day,
    server and container — after the first pass over two days, after a report delivered late into an
    hour already rolled up (dirty hour), and with idle_seconds counting only GPU time under 5 %."""
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    start = T0 - 30 * 3600  # two UTC days

    def store(ts, util, received=None):
        report = sample_report("u-host", gpus=2, processes=1, sample_time=ts)
        report["interval"] = 600
        report["gpus"][0]["utilization.gpu"], report["gpus"][1]["utilization.gpu"] = util, 100
        assert store_report(conn, validate_report(report), received or ts + 1)["stored"]

    for k in range(0, 30 * 6, 2):  # every 20 min for 30 h; the odd 10-minute slots stay empty
        store(start + k * 600, 0 if k % 4 == 0 else 50)
    maint = Maintenance(path, now=lambda: T0 + 3600, pause=0)

    def check():
        by_day = conn.execute(
            "select user, hour / 86400 * 86400, server_id, container, round(sum(gpu_seconds), 6),"
            " round(sum(idle_seconds), 6), count(distinct gpu_id), min(hour), max(hour) from gpu_usage_1h"
            " group by 1, 2, 3, 4 order by 1, 2, 3, 4").fetchall()
        table = conn.execute(
            "select user, day, server_id, container, round(gpu_seconds, 6), round(idle_seconds, 6), gpus,"
            " first_hour, last_hour from gpu_usage_user_1d order by 1, 2, 3, 4").fetchall()
        assert table == by_day and len({row[1] for row in table}) == 2
        return table

    maint.run_once()
    before = check()
    # GPU 0 idles (0 %) in every other report: each GPU-hour of user0 on it is half idle.
    user0 = [r for r in before if r[0] == "user0"]
    assert sum(r[5] for r in user0) == pytest.approx(sum(r[4] for r in user0) / 4)
    # A report of a past hour arrives late (an odd slot: more GPU time): the hour is redone, and the day too.
    store(start + 3 * 600, 0, received=T0 + 3600)
    maint.run_once()
    after = check()
    assert sum(r[4] for r in after) > sum(r[4] for r in before)
