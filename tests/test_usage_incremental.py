"""GPU-hours roll-up against a straightforward reference on a generated fleet history.

The reference is the former single-query roll-up (window functions over the raw rows of a
window, quadratic but obviously right); the product computes the same figures linearly and
keeps the current hours up to date incrementally. Both must agree after every pass.
"""

import random

import pytest
from conftest import file_connection

from server_monitor.storage import schema
from server_monitor.storage.rollup import LAG, Maintenance

T0 = 1_800_000_000 // 3600 * 3600

# The roll-up as it was first written: GPU-hours per hour and owner from raw rows in [?1, ?2).
REFERENCE_SQL = """
WITH h AS (
    SELECT hs.server_id, hs.ts,
        min(coalesce(lead(hs.ts) OVER (PARTITION BY hs.server_id ORDER BY hs.ts), hs.ts + s.interval_s) - hs.ts,
            s.interval_s) AS dur
    FROM host_samples hs JOIN servers s ON s.id = hs.server_id
    WHERE hs.ts >= ?1 AND hs.ts < ?2 + 3600
),
owners AS (
    SELECT server_id, ts, gpu_id, coalesce(user, '') AS user, coalesce(container, '') AS container,
        sum(coalesce(used_gpu_memory_mib, 0)) AS vram
    FROM gpu_processes
    WHERE ts >= ?1 AND ts < ?2 AND gpu_id IS NOT NULL
    GROUP BY server_id, ts, gpu_id, 4, 5
),
shares AS (
    SELECT o.*, count(*) OVER (PARTITION BY o.gpu_id, o.ts) AS k FROM owners o
)
SELECT (sh.ts / 3600) * 3600 AS hour, sh.server_id, sh.gpu_id, sh.user, sh.container,
    sum(h.dur * 1.0 / sh.k), sum(sh.vram * h.dur),
    sum(coalesce(g.utilization_gpu, 0) * h.dur), sum(CASE WHEN g.utilization_gpu IS NOT NULL THEN h.dur ELSE 0 END),
    sum(h.dur)
FROM shares sh
JOIN h ON h.server_id = sh.server_id AND h.ts = sh.ts
LEFT JOIN gpu_samples g ON g.gpu_id = sh.gpu_id AND g.ts = sh.ts
GROUP BY 1, 2, 3, 4, 5
"""

SERVERS = {1: 30, 2: 60, 3: 30, 4: 45}  # server id -> interval_s
USERS = [("alice", "lab-a"), ("bob", "lab-b"), ("carol", ""), (None, None), ("dave", "lab-a")]


class Fleet:
    """Writes generated reports (host sample, 4 GPU samples, random owners) as ingest would."""

    def __init__(self, conn, seed=7):
        self.conn = conn
        self.rng = random.Random(seed)
        self.next_ts = {s: T0 + self.rng.randrange(iv) for s, iv in SERVERS.items()}
        self.pid = 0
        for s, iv in SERVERS.items():
            conn.execute("insert into servers (id, machine_id, hostname, first_seen, last_seen, interval_s)"
                         " values (?, ?, ?, 0, 0, ?)", (s, f"m{s}", f"node{s}", iv))
            conn.executemany("insert into gpus (id, server_id, uuid, first_seen) values (?, ?, ?, 0)",
                             [(s * 10 + g, s, f"GPU-{s}-{g}") for g in range(4)])

    def report(self, server, ts, received_at):
        rng, conn = self.rng, self.conn
        conn.execute("BEGIN")
        conn.execute("insert into host_samples (server_id, ts, received_at, report_id) values (?, ?, ?, ?)",
                     (server, ts, received_at, f"r{server}-{ts}"))
        if (ts // 3600 + 1) * 3600 <= received_at:  # as store_report marks late hours
            conn.execute("insert or ignore into rollup_dirty (hour) values (?)", (ts // 3600 * 3600,))
        for g in range(4):
            gpu = server * 10 + g
            util = None if rng.random() < 0.1 else rng.randrange(101)
            conn.execute("insert into gpu_samples (gpu_id, ts, utilization_gpu) values (?, ?, ?)", (gpu, ts, util))
            for _ in range(rng.choice([0, 0, 1, 1, 1, 2, 3])):
                user, container = rng.choice(USERS)
                self.pid += 1
                conn.execute("insert into gpu_processes (server_id, ts, gpu_id, pid, user, container,"
                             " used_gpu_memory_mib) values (?, ?, ?, ?, ?, ?, ?)",
                             (server, ts, gpu, self.pid, user, container, rng.choice([None, 512, 1024, 4096])))
        conn.execute("COMMIT")

    def advance(self, now, offline=()):
        """Deliver every report due up to ``now``; servers in ``offline`` skip theirs (a gap)."""
        for server, interval in SERVERS.items():
            while self.next_ts[server] <= now:
                ts = self.next_ts[server]
                if server not in offline:
                    self.report(server, ts, now)
                # Jitter: reports come a little early or late, sometimes twice in one interval.
                self.next_ts[server] = ts + max(1, interval + self.rng.randint(-interval // 2, interval // 3))


def table(conn):
    return {row[:5]: row[5:] for row in conn.execute(
        "select hour, server_id, gpu_id, user, container, gpu_seconds, vram_mib_seconds, util_seconds,"
        " util_known_seconds, held_seconds from gpu_usage_1h")}


def reference(conn, now):
    """gpu_usage_1h as the former roll-up leaves it at ``now``: complete hours one by one, then the rest."""
    row = conn.execute("select value from maintenance_state where name = 'rolled_until'").fetchone()
    done = row[0] if row else T0  # nothing rolled yet: the watermark is the first sample's hour
    rows = []
    for hour in range(T0, done, 3600):
        rows += conn.execute(REFERENCE_SQL, (hour, hour + 3600)).fetchall()
    rows += conn.execute(REFERENCE_SQL, (done, now // 3600 * 3600 + 3600)).fetchall()
    return {row[:5]: row[5:] for row in rows}


def assert_same(actual, expected):
    assert actual.keys() == expected.keys()
    for key, values in expected.items():
        assert actual[key] == pytest.approx(values, rel=1e-9, abs=1e-6), key


def test_incremental_usage_matches_the_reference_pass_after_pass(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    fleet = Fleet(conn)
    clock = [T0]
    maintenance = Maintenance(path, now=lambda: clock[0], pause=0)  # one object: the hub's thread
    passes = 0
    for now in range(T0 + 60, T0 + 3 * 3600 + LAG + 120, 60):
        # Server 2 is offline for 20 minutes in the second hour; server 4 reports twice as often
        # for a while (its interval is counted as the agent declared it).
        fleet.advance(now, offline={2} if T0 + 4000 <= now < T0 + 5200 else ())
        clock[0] = now
        maintenance.run_once()
        passes += 1
        if passes % 15 == 0:
            assert_same(table(conn), reference(conn, now))
    assert maintenance._usage_inc is not None and passes > 150
    assert conn.execute("select value from maintenance_state where name = 'rolled_until'").fetchone()[0] == \
        T0 + 3 * 3600
    assert_same(table(conn), reference(conn, clock[0]))


def test_spool_replay_after_the_hour_was_rolled_is_recomputed(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    fleet = Fleet(conn, seed=11)
    clock = [T0]
    maintenance = Maintenance(path, now=lambda: clock[0], pause=0)
    for now in range(T0 + 60, T0 + 3600 + LAG + 300, 60):
        fleet.advance(now, offline={3} if now > T0 + 1800 else ())
        clock[0] = now
        maintenance.run_once()
    # Server 3's agent replays its spool: the rest of the first hour and the second, in order.
    replay_at = clock[0]
    ts = fleet.next_ts[3]
    while ts <= replay_at:
        fleet.report(3, ts, replay_at)
        ts += SERVERS[3]
    fleet.next_ts[3] = ts
    for now in range(replay_at + 60, replay_at + 600, 60):
        fleet.advance(now)
        clock[0] = now
        maintenance.run_once()
        assert_same(table(conn), reference(conn, now))


def test_restarted_maintenance_recomputes_the_current_hours(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    fleet = Fleet(conn, seed=3)
    first = Maintenance(path, now=lambda: T0 + 1500, pause=0)
    fleet.advance(T0 + 1200)
    first.run_once()
    fleet.advance(T0 + 1500)
    first.run_once()
    # Another process (a restarted hub) takes over, then the first one runs again: each must
    # notice the other's recompute and not add reports twice.
    fleet.advance(T0 + 1800)
    Maintenance(path, now=lambda: T0 + 1800, pause=0).run_once()
    assert_same(table(conn), reference(conn, T0 + 1800))
    fleet.advance(T0 + 2100)
    first.now = lambda: T0 + 2100
    first.run_once()
    assert_same(table(conn), reference(conn, T0 + 2100))


def test_a_reader_never_sees_a_gpus_hour_empty_while_it_is_rewritten(tmp_path):
    """Issue 13: a recompute of the GPU-hours of an hour (restart, late data) deleted the whole
    hour in one transaction and wrote it back in batches, so a dashboard reading in between saw
    GPUs with no usage at all. Each group of GPUs is now replaced in one transaction."""
    import threading

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    fleet = Fleet(conn, seed=5)
    fleet.advance(T0 + 1500)
    Maintenance(path, now=lambda: T0 + 1500, pause=0).run_once()
    gpus = "select distinct gpu_id from gpu_usage_1h where hour = ?"
    expected = {g for (g,) in conn.execute(gpus, (T0,))}
    assert len(expected) >= 12
    # A restarted hub recomputes the current hours (new epoch), slowly: small batches, pauses.
    slow = Maintenance(path, now=lambda: T0 + 1500, pause=0.03, batch=2)
    writer = threading.Thread(target=slow.run_once)
    reader = file_connection(path)
    seen = []
    writer.start()
    while writer.is_alive():
        seen.append({g for (g,) in reader.execute(gpus, (T0,))})
    writer.join()
    assert len(seen) > 10  # the reader did look while the rewrite ran
    assert all(s == expected for s in seen), [len(s) for s in seen if s != expected][:5]
    assert_same(table(conn), reference(conn, T0 + 1500))
