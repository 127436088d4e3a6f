"""The metrics database schema (``monitor.db``) and its migrations.

Layout (see ``docs/schema.md`` for every column):

* ``servers`` / ``gpus``: one row per host / per GPU, holding identity, admin state and the
  **latest** values, rewritten in the same transaction as each report so "latest state"
  never scans history.
* ``host_samples``, ``gpu_samples``, ``disk_samples``, ``gpu_processes``: append-only raw
  history, keyed for "one server (or GPU) over N hours" range scans.

Timestamps are integer UTC epoch seconds. The schema version lives in
``PRAGMA user_version``; :data:`MIGRATIONS` is the ordered list of steps, each applied
once in its own transaction. To change the schema, append a step, never edit one.
"""

import re
import sqlite3

import sqlite_utils

from ..core import natural
from . import dbguard, xidtext

MIGRATION_1 = """
CREATE TABLE servers (
    id INTEGER PRIMARY KEY,
    machine_id TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    display_name TEXT,
    status TEXT NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'maintenance', 'fault')),
    status_note TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_ts INTEGER,
    interval_s INTEGER NOT NULL DEFAULT 30,
    clock_skew_s INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT,
    os TEXT,
    kernel TEXT,
    arch TEXT,
    cpu_model TEXT,
    cpu_count INTEGER,
    boot_time INTEGER,
    cpu_percent REAL,
    load_1 REAL,
    load_5 REAL,
    load_15 REAL,
    memory_used_bytes INTEGER,
    memory_total_bytes INTEGER,
    swap_used_bytes INTEGER,
    swap_total_bytes INTEGER,
    net_rx_bps REAL,
    net_tx_bps REAL,
    uptime_s INTEGER,
    gpu_state TEXT,
    gpu_message TEXT,
    gpu_lost TEXT
);

CREATE TABLE gpus (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    uuid TEXT NOT NULL,
    gpu_index INTEGER,
    name TEXT,
    pci_bus_id TEXT,
    driver_version TEXT,
    status TEXT NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'maintenance', 'fault')),
    status_note TEXT,
    first_seen INTEGER NOT NULL,
    last_ts INTEGER,
    present INTEGER NOT NULL DEFAULT 1,
    utilization_gpu INTEGER,
    utilization_memory INTEGER,
    memory_used_mib INTEGER,
    memory_total_mib INTEGER,
    memory_reserved_mib INTEGER,
    temperature_gpu_c INTEGER,
    temperature_memory_c INTEGER,
    power_draw_w REAL,
    power_limit_w REAL,
    fan_speed INTEGER,
    clocks_sm_mhz INTEGER,
    clocks_mem_mhz INTEGER,
    pstate TEXT,
    clocks_event_reasons_active INTEGER,
    ecc_errors_uncorrected_volatile_total INTEGER,
    retired_pages_pending INTEGER,
    remapped_rows_pending INTEGER,
    mig_mode INTEGER,
    persistence_mode INTEGER,
    UNIQUE (server_id, uuid)
);

CREATE TABLE host_samples (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    report_id TEXT NOT NULL,
    cpu_percent REAL,
    load_1 REAL,
    memory_used_bytes INTEGER,
    memory_total_bytes INTEGER,
    swap_used_bytes INTEGER,
    net_rx_bps REAL,
    net_tx_bps REAL,
    gpu_state TEXT,
    PRIMARY KEY (server_id, ts)
) WITHOUT ROWID;
CREATE UNIQUE INDEX host_samples_report_id ON host_samples (report_id);

CREATE TABLE gpu_samples (
    gpu_id INTEGER NOT NULL REFERENCES gpus(id) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    utilization_gpu INTEGER,
    utilization_memory INTEGER,
    memory_used_mib INTEGER,
    temperature_gpu_c INTEGER,
    power_draw_w REAL,
    fan_speed INTEGER,
    PRIMARY KEY (gpu_id, ts)
) WITHOUT ROWID;

CREATE TABLE disk_samples (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    mountpoint TEXT NOT NULL,
    device TEXT,
    fstype TEXT,
    total_bytes INTEGER,
    used_bytes INTEGER,
    PRIMARY KEY (server_id, ts, mountpoint)
) WITHOUT ROWID;

CREATE TABLE gpu_processes (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    gpu_id INTEGER REFERENCES gpus(id) ON DELETE CASCADE,
    pid INTEGER,
    process_name TEXT,
    used_gpu_memory_mib INTEGER,
    user TEXT,
    uid INTEGER,
    container TEXT,
    container_kind TEXT
);
CREATE INDEX gpu_processes_server_ts ON gpu_processes (server_id, ts);
CREATE INDEX gpus_server ON gpus (server_id);

-- Liveness from the hub's clock: stale after two missed reports, offline after four.
CREATE VIEW server_state AS
SELECT s.*,
    CAST(strftime('%s', 'now') AS INTEGER) - s.last_seen AS seen_age_s,
    CASE
        WHEN s.status = 'maintenance' THEN 'maintenance'
        WHEN CAST(strftime('%s', 'now') AS INTEGER) - s.last_seen > s.interval_s * 4 + 30 THEN 'offline'
        WHEN CAST(strftime('%s', 'now') AS INTEGER) - s.last_seen > s.interval_s * 2 + 10 THEN 'stale'
        WHEN s.status = 'fault' OR coalesce(s.gpu_state, 'ok') NOT IN ('ok', 'not_installed') THEN 'error'
        ELSE 'online'
    END AS state
FROM servers s;

-- Latest GPU state with the processes of the server's newest report.
CREATE VIEW gpu_state AS
SELECT g.*,
    (SELECT count(*) FROM gpu_processes p
        WHERE p.server_id = g.server_id AND p.ts = s.last_ts AND p.gpu_id = g.id) AS process_count
FROM gpus g JOIN servers s ON s.id = g.server_id;
"""

MIGRATION_2 = """
-- Agent health, LXC/Incus instances, reachability probes, ZFS pool health.
ALTER TABLE servers ADD COLUMN spool_depth INTEGER;
ALTER TABLE servers ADD COLUMN spool_dropped INTEGER;
ALTER TABLE servers ADD COLUMN rejected_reports INTEGER;
ALTER TABLE disk_samples ADD COLUMN health TEXT;

CREATE TABLE containers (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT,
    type TEXT,
    state TEXT,
    memory_bytes INTEGER,
    disk_bytes INTEGER,
    cpu_seconds REAL,
    ipv4 TEXT,
    ts INTEGER NOT NULL,
    PRIMARY KEY (server_id, project, name)
) WITHOUT ROWID;

CREATE TABLE probes (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    url TEXT,
    ok INTEGER,
    latency_ms REAL,
    status INTEGER,
    error TEXT,
    checked_at INTEGER,
    ts INTEGER NOT NULL,
    PRIMARY KEY (server_id, name)
) WITHOUT ROWID;
"""

# Columns rolled up per tier: (column, aggregates), used by server_monitor.storage.rollup. They are
# part of migration 3 below: changing them needs a new migration, never an edit.
HOST_ROLLUP = (
    ("cpu_percent", ("avg", "max")),
    ("load_1", ("avg", "max")),
    ("memory_used_bytes", ("avg", "max")),
    ("memory_total_bytes", ("max",)),
    ("swap_used_bytes", ("avg", "max")),
    ("net_rx_bps", ("avg", "max")),
    ("net_tx_bps", ("avg", "max")),
)
GPU_ROLLUP = (
    ("utilization_gpu", ("avg", "max")),
    ("utilization_memory", ("avg", "max")),
    ("memory_used_mib", ("avg", "max")),
    ("temperature_gpu_c", ("avg", "max")),
    ("power_draw_w", ("avg", "max")),
    ("fan_speed", ("avg", "max")),
)


def _rollup_table(name, key, columns, name_column=None):
    """Roll-up table keyed by ``(key, ts)`` — or ``(server_id, <name_column>, ts)`` when ``name_column``
    is given (a per-server series with a name: mount point, sensor chip) — with a ``ts`` index for retention."""
    cols = ",\n    ".join(f"{col}_{agg} REAL" for col, aggs in columns for agg in aggs)
    keys = f"{key} INTEGER NOT NULL,\n" if name_column is None else \
        f"server_id INTEGER NOT NULL,\n    {name_column} TEXT NOT NULL,\n"
    primary = key if name_column is None else f"server_id, {name_column}"
    return (
        f"CREATE TABLE {name} (\n    {keys}    ts INTEGER NOT NULL,\n"
        f"    samples INTEGER NOT NULL,\n    {cols},\n    PRIMARY KEY ({primary}, ts)\n) WITHOUT ROWID;\n"
        f"CREATE INDEX {name}_ts ON {name} (ts);\n"
    )


MIGRATION_3 = (
    """
-- Tiered retention: ts indexes for batched deletes and roll-ups, 5-minute and hourly tiers.
CREATE INDEX host_samples_ts ON host_samples (ts);
CREATE INDEX gpu_samples_ts ON gpu_samples (ts);
CREATE INDEX disk_samples_ts ON disk_samples (ts);
CREATE INDEX gpu_processes_ts ON gpu_processes (ts);
-- Hours whose raw data arrived after they were rolled up (spool replays).
CREATE TABLE rollup_dirty (hour INTEGER PRIMARY KEY);
CREATE TABLE maintenance_state (name TEXT PRIMARY KEY, value INTEGER);
"""
    + _rollup_table("host_samples_5m", "server_id", HOST_ROLLUP)
    + _rollup_table("host_samples_1h", "server_id", HOST_ROLLUP)
    + _rollup_table("gpu_samples_5m", "gpu_id", GPU_ROLLUP)
    + _rollup_table("gpu_samples_1h", "gpu_id", GPU_ROLLUP)
)

MIGRATION_4 = """
-- GPU counts kept by ingest on the latest-state rows, so the fleet queries need no
-- correlated subqueries (servers/gpus over 8000 GPUs stay fast).
ALTER TABLE gpus ADD COLUMN process_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gpus ADD COLUMN busy INTEGER NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN gpu_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN gpus_busy INTEGER NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN gpu_models TEXT;
DROP VIEW gpu_state;
"""

MIGRATION_5 = """
-- Dashboard announcements written by admins (write canned queries).
CREATE TABLE announcements (
    id INTEGER PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('info', 'warning', 'critical')),
    message TEXT NOT NULL CHECK (length(message) BETWEEN 1 AND 2000),
    created_at INTEGER NOT NULL,
    created_by TEXT,
    expires_at INTEGER,
    ended_at INTEGER
);
"""

MIGRATION_6 = """
-- GPU-hours accounting per hour and owner (user, container), kept by maintenance.
CREATE TABLE gpu_usage_1h (
    hour INTEGER NOT NULL,
    server_id INTEGER NOT NULL,
    gpu_id INTEGER NOT NULL,
    user TEXT NOT NULL,
    container TEXT NOT NULL,
    gpu_seconds REAL NOT NULL,
    vram_mib_seconds REAL NOT NULL,
    util_seconds REAL NOT NULL,
    util_known_seconds REAL NOT NULL,
    held_seconds REAL NOT NULL,
    PRIMARY KEY (hour, gpu_id, user, container)
) WITHOUT ROWID;
CREATE INDEX gpu_usage_1h_server ON gpu_usage_1h (server_id, hour);

-- Alerts: one row per firing (rule, subject), resolved_at set when it clears.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    server_id INTEGER,
    subject TEXT,
    message TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    last_notified_at INTEGER,
    notifications INTEGER NOT NULL DEFAULT 0,
    resolved_at INTEGER
);
CREATE INDEX alerts_active ON alerts (resolved_at, key);
"""

MIGRATION_7 = """
-- AMD and Intel GPUs (read from sysfs and DRM fdinfo): who made the GPU (every GPU stored
-- before was reported by nvidia-smi), junction temperature, MI300 partition modes, and the
-- per-process engine utilisation DRM fdinfo gives.
ALTER TABLE gpus ADD COLUMN vendor TEXT NOT NULL DEFAULT 'nvidia';
ALTER TABLE gpus ADD COLUMN temperature_junction_c INTEGER;
ALTER TABLE gpus ADD COLUMN compute_partition TEXT;
ALTER TABLE gpus ADD COLUMN memory_partition TEXT;
ALTER TABLE gpu_processes ADD COLUMN utilization_gpu REAL;
"""

MIGRATION_8 = """
-- GPU health, media engines, PCIe link and capacity (issue 15): latest values on gpus,
-- the time series among them on gpu_samples. Names follow the nvidia-smi fields.
ALTER TABLE gpus ADD COLUMN gpu_state TEXT;
ALTER TABLE gpus ADD COLUMN cuda_version TEXT;
ALTER TABLE gpus ADD COLUMN mig_mode_pending INTEGER;
ALTER TABLE gpus ADD COLUMN ecc_mode INTEGER;
ALTER TABLE gpus ADD COLUMN ecc_mode_pending INTEGER;
ALTER TABLE gpus ADD COLUMN ecc_errors_corrected_volatile_total INTEGER;
ALTER TABLE gpus ADD COLUMN ecc_errors_corrected_aggregate_total INTEGER;
ALTER TABLE gpus ADD COLUMN ecc_errors_uncorrected_aggregate_total INTEGER;
ALTER TABLE gpus ADD COLUMN retired_pages_sbe INTEGER;
ALTER TABLE gpus ADD COLUMN retired_pages_dbe INTEGER;
ALTER TABLE gpus ADD COLUMN remapped_rows_correctable INTEGER;
ALTER TABLE gpus ADD COLUMN remapped_rows_uncorrectable INTEGER;
ALTER TABLE gpus ADD COLUMN remapped_rows_failure INTEGER;
ALTER TABLE gpus ADD COLUMN gpu_recovery_action TEXT;
ALTER TABLE gpus ADD COLUMN clocks_event_reasons_supported INTEGER;
ALTER TABLE gpus ADD COLUMN clocks_event_reasons TEXT;
ALTER TABLE gpus ADD COLUMN sw_power_cap_us INTEGER;
ALTER TABLE gpus ADD COLUMN sync_boost_us INTEGER;
ALTER TABLE gpus ADD COLUMN sw_thermal_slowdown_us INTEGER;
ALTER TABLE gpus ADD COLUMN hw_thermal_slowdown_us INTEGER;
ALTER TABLE gpus ADD COLUMN hw_power_brake_slowdown_us INTEGER;
ALTER TABLE gpus ADD COLUMN pcie_link_gen_current INTEGER;
ALTER TABLE gpus ADD COLUMN pcie_link_gen_max INTEGER;
ALTER TABLE gpus ADD COLUMN pcie_link_width_current INTEGER;
ALTER TABLE gpus ADD COLUMN pcie_link_width_max INTEGER;
ALTER TABLE gpus ADD COLUMN temperature_gpu_tlimit_c REAL;
ALTER TABLE gpus ADD COLUMN utilization_encoder INTEGER;
ALTER TABLE gpus ADD COLUMN utilization_decoder INTEGER;
ALTER TABLE gpus ADD COLUMN encoder_sessions INTEGER;
ALTER TABLE gpus ADD COLUMN memory_free_mib INTEGER;
ALTER TABLE gpus ADD COLUMN health TEXT;
ALTER TABLE gpus ADD COLUMN health_reasons TEXT;
ALTER TABLE gpu_samples ADD COLUMN utilization_encoder INTEGER;
ALTER TABLE gpu_samples ADD COLUMN utilization_decoder INTEGER;
ALTER TABLE gpu_samples ADD COLUMN clocks_event_reasons_active INTEGER;
ALTER TABLE gpu_samples ADD COLUMN pcie_link_gen_current INTEGER;
ALTER TABLE gpu_samples ADD COLUMN pcie_link_width_current INTEGER;
ALTER TABLE gpu_samples ADD COLUMN ecc_errors_corrected_volatile_total INTEGER;
ALTER TABLE gpu_samples ADD COLUMN ecc_errors_uncorrected_volatile_total INTEGER;
"""


def _rebuild_with_autoincrement(conn, table):
    """Rebuild ``table`` (``id INTEGER PRIMARY KEY``) as ``AUTOINCREMENT``, rows and ids kept.

    SQLite's documented 12-step table rebuild, run with foreign keys off (``migrate`` does
    that): the new table's SQL is the stored ``CREATE TABLE`` (which includes every column
    added by ``ALTER TABLE``), renamed and with ``AUTOINCREMENT`` added; its indexes are
    re-created from their stored SQL. Child tables keep referring to ``table`` by name.
    """
    create = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    if "AUTOINCREMENT" in create.upper():
        return
    new_sql, count = re.subn(r"^CREATE TABLE\s+\"?" + table + r"\"?\s*\(", f"CREATE TABLE {table}_rebuild (",
                             create, count=1)
    new_sql, count2 = re.subn(r"\bid\s+INTEGER\s+PRIMARY\s+KEY\b(?!\s+AUTOINCREMENT)",
                              "id INTEGER PRIMARY KEY AUTOINCREMENT", new_sql, count=1, flags=re.IGNORECASE)
    if count != 1 or count2 != 1:
        raise RuntimeError(f"cannot rebuild {table}: unexpected table SQL")
    indexes = [row[0] for row in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,))]
    conn.execute(new_sql)
    conn.execute(f"INSERT INTO {table}_rebuild SELECT * FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {table}_rebuild RENAME TO {table}")
    for sql in indexes:
        conn.execute(sql)


def migration_9(conn):
    """Server and GPU ids are never reused (see docs/security.md M4).

    ``servers`` and ``gpus`` become ``AUTOINCREMENT`` (a viewer scoped to a deleted server's id
    must never see the next new host). The sequence starts above every id still named anywhere
    in ``monitor.db`` (``gpu_usage_1h``, ``alerts``), so ids deleted before this step are not
    handed out again either. Views are dropped and re-created around the rebuild.
    """
    views = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'").fetchall()
    triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _ in views:
        conn.execute(f'DROP VIEW "{name}"')
    for name, _ in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    _rebuild_with_autoincrement(conn, "servers")
    _rebuild_with_autoincrement(conn, "gpus")
    for _, sql in views + triggers:
        conn.execute(sql)
    top_server = conn.execute(
        "SELECT max(m) FROM (SELECT max(id) AS m FROM servers UNION ALL SELECT max(server_id) FROM gpu_usage_1h"
        " UNION ALL SELECT max(server_id) FROM alerts)").fetchone()[0] or 0
    top_gpu = conn.execute(
        "SELECT max(m) FROM (SELECT max(id) AS m FROM gpus UNION ALL SELECT max(gpu_id) FROM gpu_usage_1h)").fetchone()[0] or 0
    for table, top in (("servers", top_server), ("gpus", top_gpu)):
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, top))


MIGRATION_10 = """
-- AMD XGMI links down, from the optional amd-smi (null without it).
ALTER TABLE gpus ADD COLUMN xgmi_links_down INTEGER;
"""

MIGRATION_11 = """
-- Alert acknowledgements (one per firing), silences (per server and/or rule, for a time) and
-- lost GPUs an admin marked removed (hidden from the fleet grid and the gpu_lost rule).
CREATE TABLE alert_acks (
    alert_id INTEGER PRIMARY KEY REFERENCES alerts(id) ON DELETE CASCADE,
    note TEXT CHECK (note IS NULL OR length(note) <= 500),
    acked_by TEXT NOT NULL,
    acked_at INTEGER NOT NULL
);
CREATE TABLE silences (
    id INTEGER PRIMARY KEY,
    server_id INTEGER REFERENCES servers(id) ON DELETE CASCADE,
    rule TEXT,
    note TEXT CHECK (note IS NULL OR length(note) <= 500),
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    until INTEGER NOT NULL,
    ended_at INTEGER,
    CHECK (server_id IS NOT NULL OR rule IS NOT NULL)
);
CREATE INDEX silences_active ON silences (ended_at, until);
ALTER TABLE gpus ADD COLUMN removed_at INTEGER;
"""

MIGRATION_12 = """
-- NVIDIA XID errors from the agents' kernel log (/dev/kmsg); one row per kernel record.
CREATE TABLE xid_events (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    gpu_id INTEGER REFERENCES gpus(id) ON DELETE SET NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    seq INTEGER,
    usec INTEGER,
    pci_bus_id TEXT,
    xid INTEGER NOT NULL,
    name TEXT,
    pid INTEGER,
    process_name TEXT,
    message TEXT
);
CREATE UNIQUE INDEX xid_events_record ON xid_events (server_id, seq, usec);
CREATE INDEX xid_events_ts ON xid_events (ts);
CREATE INDEX xid_events_gpu ON xid_events (gpu_id, ts);
ALTER TABLE gpus ADD COLUMN xid_last INTEGER;
ALTER TABLE gpus ADD COLUMN xid_last_ts INTEGER;
ALTER TABLE servers ADD COLUMN kmsg_state TEXT;
"""

MIGRATION_13 = """
-- MIG devices of MIG-enabled NVIDIA GPUs (latest list per server, replaced when a report
-- carries one) and the MIG instance each GPU process runs in.
CREATE TABLE mig_devices (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    uuid TEXT NOT NULL,
    gpu_id INTEGER REFERENCES gpus(id) ON DELETE CASCADE,
    gpu_index INTEGER,
    mig_index INTEGER,
    profile TEXT,
    gpu_instance_id INTEGER,
    compute_instance_id INTEGER,
    memory_used_mib INTEGER,
    memory_total_mib INTEGER,
    sm_count INTEGER,
    process_count INTEGER NOT NULL DEFAULT 0,
    sampled_at INTEGER,
    ts INTEGER NOT NULL,
    PRIMARY KEY (server_id, uuid)
) WITHOUT ROWID;
CREATE INDEX mig_devices_gpu ON mig_devices (gpu_id);
ALTER TABLE gpu_processes ADD COLUMN gpu_instance_id INTEGER;
ALTER TABLE gpu_processes ADD COLUMN compute_instance_id INTEGER;
ALTER TABLE gpu_processes ADD COLUMN mig_uuid TEXT;
"""

MIGRATION_14 = """
-- Alert markers on one server's history charts (canned_queries/server_alerts.sql).
CREATE INDEX alerts_server ON alerts (server_id, started_at);
"""

MIGRATION_15 = """
-- Alert history by start time (the alerts_history query), without scanning every alert.
CREATE INDEX alerts_started ON alerts (started_at);
"""

MIGRATION_16 = """
-- Report ids are unique per server, not across the fleet (security review L10: one host could
-- suppress another's report by sending its id first).
DROP INDEX host_samples_report_id;
CREATE UNIQUE INDEX host_samples_server_report ON host_samples (server_id, report_id);
"""

MIGRATION_18 = """
-- GPU topology from nvidia-smi topo -m (latest per server, replaced when a report carries it):
-- the connection between every GPU pair and each GPU's CPU / NUMA affinity.
CREATE TABLE gpu_links (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    gpu_a INTEGER NOT NULL,
    gpu_b INTEGER NOT NULL,
    link TEXT NOT NULL,
    PRIMARY KEY (server_id, gpu_a, gpu_b)
) WITHOUT ROWID;
ALTER TABLE gpus ADD COLUMN cpu_affinity TEXT;
ALTER TABLE gpus ADD COLUMN numa_node TEXT;
"""

# Each step is a SQL script or a function of the connection (run inside the step's transaction,
# with foreign keys off so a table rebuild cannot cascade).
MIGRATION_17 = """
-- Bumped by any admin change to a server's GPUs (status, note, removed), so the fleet
-- document (server_monitor/serving/fleet.py) knows which servers to rebuild without scanning gpus.
ALTER TABLE servers ADD COLUMN gpu_admin_gen INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER gpus_admin_change AFTER UPDATE OF status, status_note, removed_at ON gpus
BEGIN
    UPDATE servers SET gpu_admin_gen = gpu_admin_gen + 1 WHERE id = NEW.server_id;
END;
"""

MIGRATION_19 = """
-- Throttle counters on the time series (issue 15): the gpus query's "today" figures are the
-- counter's growth since the GPU's first sample of the day (one (gpu_id, ts) seek per GPU).
ALTER TABLE gpu_samples ADD COLUMN sw_power_cap_us INTEGER;
ALTER TABLE gpu_samples ADD COLUMN sw_thermal_slowdown_us INTEGER;
ALTER TABLE gpu_samples ADD COLUMN hw_thermal_slowdown_us INTEGER;
"""

MIGRATION_20 = """
-- Host identity changes (security review L10): a server whose reported host name changed
-- (same machine id), or whose name is that of another server or looks like it (0/o, 1/l/i, _/-,
-- case). Recorded at ingest, shown to admins on /admin and as a host_identity alert until an
-- admin accepts it. Nothing is refused or lost: the report is stored as usual.
CREATE TABLE host_identity_events (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    hostname TEXT NOT NULL,
    previous TEXT,
    other_server_id INTEGER,
    accepted_at INTEGER,
    accepted_by TEXT
);
CREATE INDEX host_identity_events_open ON host_identity_events (accepted_at, server_id);
"""

# GPU-depth time series of gpu_samples carried into both roll-up tiers (migration 21): gauges
# avg + max; PCIe link generation/width min + max (a downgraded moment is not averaged away; the
# max shows whether the link reached full speed); monotonic counters (ECC errors since driver
# load, cumulative throttle time in µs) max, their last value in the bucket; the thermal headroom
# (tlimit) min + avg. clocks_event_reasons_active (a bitmask) is not rolled up: the throttle
# counters give the same answer as time, and a bitmask has no max or mean.
GPU_ROLLUP_DEPTH = (
    ("utilization_encoder", ("avg", "max")),
    ("utilization_decoder", ("avg", "max")),
    ("pcie_link_gen_current", ("min", "max")),
    ("pcie_link_width_current", ("min", "max")),
    ("ecc_errors_corrected_volatile_total", ("max",)),
    ("ecc_errors_uncorrected_volatile_total", ("max",)),
    ("sw_power_cap_us", ("max",)),
    ("sw_thermal_slowdown_us", ("max",)),
    ("hw_thermal_slowdown_us", ("max",)),
    ("temperature_gpu_tlimit_c", ("avg", "min")),
)

MIGRATION_21 = (
    """
-- GPU-depth series in the 5-minute and hourly tiers (issue 15), the thermal headroom
-- (temperature.gpu.tlimit) on the raw series, XIDs by server and time.
ALTER TABLE gpu_samples ADD COLUMN temperature_gpu_tlimit_c REAL;
-- XID markers of one server's history (canned_queries/server_xids.sql).
CREATE INDEX xid_events_server ON xid_events (server_id, ts);
"""
    + "".join(f"ALTER TABLE {table} ADD COLUMN {col}_{agg} REAL;\n"
              for table in ("gpu_samples_5m", "gpu_samples_1h") for col, aggs in GPU_ROLLUP_DEPTH for agg in aggs)
)

MIGRATION_22 = """
-- Slurm GPU allocations (issue 22 item 7): the job holding each GPU now, from the agent's
-- scontrol show job -d; null when no job holds it or Slurm is not on the host.
ALTER TABLE gpus ADD COLUMN slurm_job TEXT;
ALTER TABLE gpus ADD COLUMN slurm_user TEXT;
"""


def migration_23(conn):
    """XID lines without the process for viewers who may not see processes (see docs/security.md N6).

    ``xid_events.message`` becomes the kernel line without its ``pid=…, name=…`` part; the line
    as printed moves to the new column ``kernel_line`` (shown only with processes visible). The
    ``gpu_xid`` alerts no longer name the process: the suffix ``, pid N name`` of stored alert
    texts is cut (the evaluator rewrites firing ones anyway).
    """
    conn.execute("ALTER TABLE xid_events ADD COLUMN kernel_line TEXT")
    rows = conn.execute("SELECT id, message FROM xid_events WHERE instr(message, 'pid=') > 0").fetchall()
    for row_id, message in rows:
        public = xidtext.without_process(message)
        if public != message:
            conn.execute("UPDATE xid_events SET message = ?, kernel_line = ? WHERE id = ?", (public, message, row_id))
    conn.execute("UPDATE alerts SET message = substr(message, 1, instr(message, ', pid ') - 1)"
                 " WHERE rule = 'gpu_xid' AND instr(message, ', pid ') > 0")


MIGRATION_24 = """
-- Host groups (issue 24 item 1): a server's groups are the union of its rows here, one per
-- (group, source); source 'agent' (agent_config.yaml groups:), 'slurm' (the node's partitions)
-- or 'admin' (set in /admin). See server_monitor/storage/groups.py and docs/schema.md.
CREATE TABLE server_groups (
    server_id INTEGER NOT NULL REFERENCES servers(id),
    grp TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('agent', 'slurm', 'admin')),
    PRIMARY KEY (server_id, grp, source)
) WITHOUT ROWID;
CREATE INDEX server_groups_grp ON server_groups (grp, server_id);
"""


# What a reader sees of a name (``store.name_skeleton``) as an SQL expression over one column: the
# same answer as the Python function for every name compared with an ASCII host name (the contract
# keeps host names ASCII; the one character whose lower case is ASCII, U+212A KELVIN SIGN, is
# mapped here, as SQLite's lower() changes only ASCII letters). tests/test_schema.py checks both agree.
def skeleton_sql(column):
    """SQL text of the name skeleton of ``column`` (indexed by migration 25)."""
    expr = f"replace(lower({column}), char(8490), 'k')"
    for old, new in (("0", "o"), ("1", "l"), ("i", "l"), ("_", "-"), ("rn", "m"), ("vv", "w")):
        expr = f"replace({expr}, '{old}', '{new}')"
    return expr


MIGRATION_25 = f"""
-- Host identity checks in O(log n) (issue 24: a new host's first report compared its name with
-- every server's inside the write transaction, 13.8 ms at 10,000 servers vs 2.7 ms at 100).
-- The look-alike skeletons of host and display names are index expressions: SQLite keeps them
-- however a name is written (ingest, the admin's display name, a hand edit). The plain name
-- indexes serve name_taken and the per-host token's check (ingest.py). servers_name orders
-- /admin's server list (and its scope picker) by the name shown, one page at a time.
CREATE INDEX servers_hostname ON servers (hostname);
CREATE INDEX servers_name ON servers (coalesce(display_name, hostname) COLLATE NOCASE, id);
CREATE INDEX servers_display_name ON servers (display_name);
CREATE INDEX servers_hostname_skeleton ON servers ({skeleton_sql('hostname')});
CREATE INDEX servers_display_skeleton ON servers ({skeleton_sql('display_name')});
"""


MIGRATION_26 = """
-- Idle-GPU nudges (issue 26 item 1, server_monitor/jobs/nudge.py): one row per GPU and holder
-- nudged during one idle run (idle_since); the dashboard's idle panel shows who was nudged when.
-- Where a nudge went (e-mail, chat URL) stays in auth.db: this table names only the holder.
CREATE TABLE idle_nudges (
    gpu_id INTEGER NOT NULL,
    holder TEXT NOT NULL,
    idle_since INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    nudges INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (gpu_id, holder, idle_since)
) WITHOUT ROWID;
CREATE INDEX idle_nudges_last ON idle_nudges (last_at);
"""


# Roll-ups keyed by server and a name (issue 26 item 7): disk use per mount point and host
# temperatures per sensor chip. Part of migration 27 below (changing them needs a new migration).
DISK_ROLLUP = (
    ("used_bytes", ("avg", "max")),
    ("total_bytes", ("max",)),
)
TEMPERATURE_ROLLUP = (
    ("temperature_c", ("avg", "max")),
)


MIGRATION_27 = (
    """
-- Issue 26 item 7: host temperatures (one row per report and sensor chip: the hottest of the
-- chip's temp*_input, with the lowest temp*_max / temp*_crit reported for it), read by the agent
-- from the kernel's hwmon sysfs tree; and 5-minute/hourly roll-ups of disk use and of these
-- temperatures, so the history page shows 30 days (raw rows are kept data.retention_days).
CREATE TABLE temperature_samples (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    sensor TEXT NOT NULL,
    temperature_c REAL,
    high_c REAL,
    critical_c REAL,
    PRIMARY KEY (server_id, ts, sensor)
) WITHOUT ROWID;
CREATE INDEX temperature_samples_ts ON temperature_samples (ts);
-- Issue 26 item 6: GPU time held while utilization.gpu was known and under
-- features.idle_max_util (the per-user page's idle GPU-hours). Hours rolled up before this
-- migration keep 0.
ALTER TABLE gpu_usage_1h ADD COLUMN idle_seconds REAL NOT NULL DEFAULT 0;
-- The per-user page: gpu_usage_1h summed per user, UTC day, server and container (kept by
-- maintenance from gpu_usage_1h), so a user holding 900 GPUs for 30 days is ~20,000 rows to
-- read instead of 650,000. gpus: distinct GPUs of that row's hours; first/last_hour: epoch s.
CREATE TABLE gpu_usage_user_1d (
    user TEXT NOT NULL,
    day INTEGER NOT NULL,
    server_id INTEGER NOT NULL,
    container TEXT NOT NULL,
    gpu_seconds REAL NOT NULL,
    idle_seconds REAL NOT NULL,
    vram_mib_seconds REAL NOT NULL,
    util_seconds REAL NOT NULL,
    util_known_seconds REAL NOT NULL,
    gpus INTEGER NOT NULL,
    first_hour INTEGER NOT NULL,
    last_hour INTEGER NOT NULL,
    PRIMARY KEY (user, day, server_id, container)
) WITHOUT ROWID;
CREATE INDEX gpu_usage_user_1d_day ON gpu_usage_user_1d (day);
-- The accounting kept before this upgrade, summed once for the days the page can show (366; at
-- 1,000 servers x 8 GPUs ~14 s per 30 days of gpu_usage_1h, once); maintenance keeps it from here on.
INSERT INTO gpu_usage_user_1d (user, day, server_id, container, gpu_seconds, idle_seconds, vram_mib_seconds,
    util_seconds, util_known_seconds, gpus, first_hour, last_hour)
SELECT user, hour / 86400 * 86400, server_id, container, sum(gpu_seconds), sum(idle_seconds), sum(vram_mib_seconds),
    sum(util_seconds), sum(util_known_seconds), count(DISTINCT gpu_id), min(hour), max(hour)
FROM gpu_usage_1h WHERE user <> '' AND hour >= (CAST(strftime('%s', 'now') AS INTEGER) / 86400 - 366) * 86400
GROUP BY user, hour / 86400 * 86400, server_id, container;
"""
    + _rollup_table("disk_samples_5m", None, DISK_ROLLUP, name_column="mountpoint")
    + _rollup_table("disk_samples_1h", None, DISK_ROLLUP, name_column="mountpoint")
    + _rollup_table("temperature_samples_5m", None, TEMPERATURE_ROLLUP, name_column="sensor")
    + _rollup_table("temperature_samples_1h", None, TEMPERATURE_ROLLUP, name_column="sensor")
)


MIGRATION_28 = """
-- Alert rules made in /admin (issue 26 item 2, scope by host group: issue 24 item 1). The
-- config file's alerts.* thresholds stay the built-in rules (server_monitor/jobs/alerts.py);
-- these rows add to them. kind: what is measured (server_monitor/storage/alert_rules.py KINDS);
-- threshold in the kind's unit; duration_minutes: how long the condition must hold; scope
-- 'all', 'group' (scope_group: a server_groups name, resolved on every pass, so a new server
-- of the group is covered) or 'server' (scope_server_id); gpu_model: substring of the GPU's
-- name (GPU kinds only); targets: JSON list of notification target names (null: by severity).
CREATE TABLE alert_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    threshold REAL,
    duration_minutes INTEGER NOT NULL DEFAULT 0,
    severity TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    scope TEXT NOT NULL DEFAULT 'all' CHECK (scope IN ('all', 'group', 'server')),
    scope_group TEXT,
    scope_server_id INTEGER,
    gpu_model TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    targets TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    CHECK ((scope = 'all' AND scope_group IS NULL AND scope_server_id IS NULL)
        OR (scope = 'group' AND scope_group IS NOT NULL AND scope_server_id IS NULL)
        OR (scope = 'server' AND scope_group IS NULL AND scope_server_id IS NOT NULL))
);
-- Which rule of alert_rules raised an alert (null: a built-in rule of config.yaml); a rule's
-- recent firings on /admin/rules read this index newest first.
ALTER TABLE alerts ADD COLUMN rule_id INTEGER;
CREATE INDEX alerts_by_rule ON alerts (rule_id, rule, started_at);
"""


# The shown name's natural sort key (server_monitor/core/natural.py), as an SQL expression for
# connections with natural_key() registered. Passed as a BLOB, so a name that a hand edit stored
# as text that is not UTF-8 reaches sort_key as bytes (Python's sqlite3 cannot hand such text to
# a function: the start would fail, round 4 attack run B3); valid text gives the same key.
NAME_KEY_SQL = "natural_key(CAST(coalesce(display_name, hostname) AS BLOB))"


def refresh_name_keys(conn):
    """Write ``servers.name_key`` (migration 29) wherever it is missing or stale: rows written
    by a hand edit, an old tool or a restored copy. Registers ``natural_key()`` on ``conn``;
    returns the number of rows fixed. One pass over ``servers`` (~10 ms at 10,000 servers);
    run by :func:`migrate` at every start."""
    if "name_key" not in {row[1] for row in conn.execute("PRAGMA table_info(servers)")}:
        return 0  # a database kept before migration 29 (tests build such ones)
    natural.register(conn)
    return conn.execute(f"UPDATE servers SET name_key = {NAME_KEY_SQL}"
                        f" WHERE name_key IS NOT {NAME_KEY_SQL}").rowcount


def migration_29(conn):
    """Servers in natural order at any fleet size (issue 24 item 3): ``servers.name_key``, the
    natural sort key of the name shown (``natural.sort_key(coalesce(display_name, hostname))``),
    whose plain BINARY order is the natural order, and the index ``servers_name_key (name_key,
    id)`` that /admin's pages and the server lists walk. It replaces ``servers_name`` (the
    case-insensitive text order, migration 25). Existing rows are filled here; new and renamed
    servers get their key from the path that writes the name (docs/schema.md)."""
    conn.execute("ALTER TABLE servers ADD COLUMN name_key TEXT")
    refresh_name_keys(conn)
    conn.execute("DROP INDEX IF EXISTS servers_name")
    conn.execute("CREATE INDEX servers_name_key ON servers (name_key, id)")


MIGRATION_30 = """
-- Overrides of the built-in alert rules (the alerts.* thresholds of config.yaml), made on
-- /admin/rules (server_monitor/storage/builtin_overrides.py). One row per overridden built-in
-- rule, named as server_monitor/jobs/alerts.py fires it; no row: config.yaml's values. A null
-- column follows config.yaml (threshold, minutes) or the rule's own severity / routing by
-- severity (severity, targets); enabled = 0 stops the rule. Reset to config deletes the row.
CREATE TABLE builtin_rule_overrides (
    rule TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    threshold REAL,
    minutes INTEGER,
    severity TEXT CHECK (severity IS NULL OR severity IN ('info', 'warning', 'critical')),
    targets TEXT,
    updated_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
"""


MIGRATIONS = [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5, MIGRATION_6, MIGRATION_7, MIGRATION_8,
              migration_9, MIGRATION_10, MIGRATION_11, MIGRATION_12, MIGRATION_13, MIGRATION_14, MIGRATION_15,
              MIGRATION_16, MIGRATION_17, MIGRATION_18, MIGRATION_19, MIGRATION_20,
              MIGRATION_21, MIGRATION_22, migration_23, MIGRATION_24,
              MIGRATION_25, MIGRATION_26, MIGRATION_27, MIGRATION_28, migration_29, MIGRATION_30]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release than this code knows."""


# Pages in the WAL (4 KiB each) beyond which a writer connection checkpoints on commit.
WAL_AUTOCHECKPOINT_PAGES = 16384


def connect(path, timeout=5.0, cache_mib=64, factory=sqlite3.Connection):
    """Open ``path`` for writing with the pragmas every hub writer uses.

    WAL journal (readers never block the writer), ``synchronous=NORMAL`` (durable at
    checkpoints, safe against corruption), foreign keys on, ``busy_timeout`` =
    ``timeout`` seconds, a page cache of ``cache_mib`` MiB (ingest touches one leaf page
    per GPU and host of the fleet; SQLite's 2 MiB default thrashes beyond ~500 GPUs).
    Returns a ``sqlite3.Connection`` in autocommit mode; callers open transactions with
    ``BEGIN IMMEDIATE``. Raises :class:`server_monitor.storage.dbguard.DatabaseReplaced` (an
    ``sqlite3.OperationalError``) when the hub's database at ``path`` was deleted or
    replaced while it runs, rather than creating a new empty file there.

    The WAL is checkpointed by the hub's checkpoint thread (``rollup.CheckpointThread``, every
    second, outside the writers' lock); a writer checkpoints only when the WAL passes
    :data:`WAL_AUTOCHECKPOINT_PAGES` (a hub without the thread, e.g. ``ingest.py`` alone). With
    SQLite's default of 1,000 pages, the commit of an ingest transaction copied the WAL into
    the database and synced it while every other writer waited. The SQL function
    ``natural_key()`` (:mod:`server_monitor.core.natural`) is registered on it.
    """
    dbguard.ensure(path)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False, factory=factory)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute(f"PRAGMA cache_size=-{int(cache_mib * 1024)}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    # When the WAL restarts, its file is cut back to this size (a WAL that grew while readers
    # held it would otherwise keep its largest size on disk).
    conn.execute(f"PRAGMA journal_size_limit={WAL_AUTOCHECKPOINT_PAGES * 4096}")
    # natural_key(): a writer can compute servers.name_key (migration 29) in SQL, as the
    # admin_set_server canned query does on Datasette's connections (plugins/sm_natural.py).
    natural.register(conn)
    return conn


def migrate(path):
    """Create or upgrade the database at ``path`` to :data:`SCHEMA_VERSION`.

    Each pending step runs in one ``BEGIN IMMEDIATE`` transaction together with the
    ``user_version`` bump, so a crash leaves the previous version intact. Returns the
    version the database had before. Raises :class:`SchemaTooNew` when the file is
    newer than this code. Then writes any missing or stale ``servers.name_key``
    (:func:`refresh_name_keys`).
    """
    sqlite_utils.Database(path).enable_wal()
    conn = connect(path)
    # Off for the migration connection (it cannot change inside a transaction): with it on,
    # DROP TABLE in a table rebuild would cascade into every child table.
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        before = conn.execute("PRAGMA user_version").fetchone()[0]
        if before > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {before}; this release knows {SCHEMA_VERSION}"
            )
        for version in range(before + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                step = MIGRATIONS[version - 1]
                if callable(step):
                    step(conn)
                else:
                    # executescript would COMMIT first; run statement by statement instead.
                    for statement in _statements(step):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        # A hand edit, an old tool or a test fixture may have written a name without its key.
        conn.execute("BEGIN IMMEDIATE")
        try:
            refresh_name_keys(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return before
    finally:
        conn.close()


def _statements(script):
    """Split a migration script into statements (``sqlite3.complete_statement`` aware)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
