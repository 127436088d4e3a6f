"""GPU-hours accounting on hand-built histories with known answers."""


import pytest
from conftest import file_connection
from server_monitor.storage import schema
from server_monitor.serving.queries import QUERIES
from server_monitor.storage.rollup import Maintenance

T0 = 1_800_000_000 // 3600 * 3600


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    conn.execute("insert into servers (id, machine_id, hostname, first_seen, last_seen, interval_s)"
                 " values (1, 'm1', 'node1', 0, 0, 30)")
    conn.execute("insert into gpus (id, server_id, uuid, first_seen) values (10, 1, 'GPU-0', 0), (11, 1, 'GPU-1', 0)")
    return conn


def report(conn, ts, holders, util=50):
    """One report at ts: holders = [(gpu_id, user, container, vram_mib), ...]."""
    conn.execute("insert into host_samples (server_id, ts, received_at, report_id) values (1, ?, ?, ?)",
                 (ts, ts, f"r{ts}"))
    for gpu_id in (10, 11):
        conn.execute("insert into gpu_samples (gpu_id, ts, utilization_gpu) values (?, ?, ?)", (gpu_id, ts, util))
    conn.executemany("insert into gpu_processes (server_id, ts, gpu_id, pid, user, container, used_gpu_memory_mib)"
                     " values (1, ?, ?, ?, ?, ?, ?)",
                     [(ts, g, 100 + i, user, container, vram) for i, (g, user, container, vram) in enumerate(holders)])


def gpu_hours(conn, by="user", since=T0, until=T0 + 6 * 3600):
    Maintenance(conn.path, now=lambda: T0 + 6 * 3600, pause=0).run_once()
    sql = QUERIES["gpu_hours"]["sql"]
    cur = conn.execute(sql, {"since": str(since), "until": str(until), "by": by, "group": "", "_scope_all": 1,
                             "_scope_servers": "[]", "_scope_processes": 1})
    cols = [d[0] for d in cur.description]
    return {row[0]: dict(zip(cols, row)) for row in cur.fetchall()}


def test_shared_gpu_counts_half_and_gaps_add_nothing(db):
    # Hour 0-2: A alone on GPU0. Hour 2-3: A and B share GPU1 (A also keeps GPU0? no).
    for i in range(240):  # 2 h of 30-second reports
        report(db, T0 + i * 30, [(10, "alice", "lab-a", 4096)])
    for i in range(120):  # 1 h: alice and bob share GPU1
        report(db, T0 + 7200 + i * 30, [(11, "alice", "lab-a", 2048), (11, "bob", "lab-b", 1024)])
    # A 30-minute offline gap, then 30 minutes more of bob alone on GPU1.
    for i in range(60):
        report(db, T0 + 3 * 3600 + 1800 + i * 30, [(11, "bob", "lab-b", 1024)])
    result = gpu_hours(db)
    assert result["alice"]["gpu_hours"] == 2.5
    assert result["bob"]["gpu_hours"] == 1.0  # 0.5 shared + 0.5 alone; the gap adds nothing
    assert result["alice"]["vram_gib_hours"] == pytest.approx(4 * 2 + 2 * 1, abs=0.001)
    assert result["bob"]["vram_gib_hours"] == pytest.approx(1 * 1 + 1 * 0.5, abs=0.001)
    assert result["alice"]["avg_utilization_gpu"] == 50
    assert result["alice"]["gpus"] == 2
    by_container = gpu_hours(db, by="container")
    assert by_container["lab-a"]["gpu_hours"] == 2.5 and by_container["lab-b"]["gpu_hours"] == 1.0
    by_server = gpu_hours(db, by="server")
    assert by_server["node1"]["gpu_hours"] == 3.5  # two GPU-hours of GPU0 + 1.5 of GPU1
    # A window: only the third hour.
    third = gpu_hours(db, since=T0 + 7200, until=T0 + 3 * 3600)
    assert third["alice"]["gpu_hours"] == 0.5 and third["bob"]["gpu_hours"] == 0.5


def test_two_processes_of_one_owner_are_one_share(db):
    for i in range(120):
        report(db, T0 + i * 30, [(10, "carol", "", 1000), (10, "carol", "", 1000), (10, "dave", "", 500)])
    result = gpu_hours(db)
    assert result["carol"]["gpu_hours"] == 0.5 and result["dave"]["gpu_hours"] == 0.5
    assert result["carol"]["vram_gib_hours"] == pytest.approx(2000 / 1024, abs=0.001)


def test_late_report_is_counted_after_the_hour_was_rolled(db):
    for i in range(60):
        report(db, T0 + i * 30, [(10, "erin", "", 100)])
    assert gpu_hours(db)["erin"]["gpu_hours"] == 0.5
    # Another 30 minutes of that hour arrive later (an agent's spool), through ingest's mark.
    for i in range(60, 120):
        report(db, T0 + i * 30, [(10, "erin", "", 100)])
    db.execute("insert into rollup_dirty (hour) values (?)", (T0,))
    assert gpu_hours(db)["erin"]["gpu_hours"] == 1.0


def test_viewers_without_process_scope_see_no_accounting(db):
    report(db, T0, [(10, "frank", "", 1)])
    Maintenance(db.path, now=lambda: T0 + 7200, pause=0).run_once()
    cur = db.execute(QUERIES["gpu_hours"]["sql"], {"since": str(T0), "until": str(T0 + 7200), "by": "user", "group": "",
                                                   "_scope_all": 1, "_scope_servers": "[]", "_scope_processes": 0})
    assert cur.fetchall() == []
