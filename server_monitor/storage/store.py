"""Writing one validated report into ``monitor.db`` in a single transaction.

``store_report`` appends the raw samples and refreshes the latest-state rows in
``servers`` and ``gpus``. A report older than the latest one stored for its host
(spool replay) is appended to history but leaves the latest state alone. A report whose
id is already stored, or whose host already has a sample at the same second, is a
duplicate: nothing is written and the caller answers 2xx.
"""

import json
import sqlite3

from monitor_agent.temperatures import per_chip as temperatures_per_chip

from ..core import gpu_health, natural, topology
from . import groups, schema, xidtext
from .rollup import merge_late_sample

# Raw retention is at least two days; only samples older than this may predate the cutoff.
_MIN_RAW_RETENTION_S = 2 * 86400

# Beyond this |agent clock - hub clock| the agent's clock is not trusted for ordering.
SKEW_THRESHOLD_S = 30

# Collector states in which the GPU list is complete, so a GPU missing from it is gone.
_COMPLETE_GPU_STATES = (None, "ok", "gpu_lost", "not_installed")


def machine_identity(host):
    """Stable server key: ``/etc/machine-id`` when the agent sent one, else the hostname."""
    return host.get("machine_id") or "hostname:" + host["hostname"]


def gpu_identity(gpu):
    """Stable GPU key within a server: uuid, else PCI bus id, else index."""
    if gpu.get("uuid"):
        return gpu["uuid"]
    if gpu.get("pci.bus_id"):
        return "bus:" + gpu["pci.bus_id"]
    return "index:%s" % gpu.get("index")


_TS_SHIFT_MAX = 5  # seconds a report may move when its host already has a sample in that second


def sample_time(report, received_at):
    """Hub-clock time of the sample and the measured clock skew (both int seconds).

    Skew is ``sent_at - received_at`` (transit time is negligible at this resolution).
    Within :data:`SKEW_THRESHOLD_S` the agent's ``sample_time`` is used as is; beyond it
    the skew is subtracted, so a host with a wrong clock still lands in order.
    """
    ts = report["sample_time"]
    skew = 0
    if report.get("sent_at") is not None:
        skew = report["sent_at"] - received_at
        if abs(skew) > SKEW_THRESHOLD_S:
            ts -= skew
    return int(min(ts, received_at + SKEW_THRESHOLD_S)), int(round(skew))


def _num(obj, key):
    return None if obj is None else obj.get(key)


def _bool(value):
    return None if value is None else int(value)


def store_report(conn, report, received_at):
    """Store ``report`` (output of ``contract.validate_report``) received at ``received_at``.

    ``conn`` is a connection from ``schema.connect`` (autocommit mode); the whole report
    is written inside one ``BEGIN IMMEDIATE`` transaction. Returns
    ``{"stored": bool, "server_id": int | None}``; ``stored`` is False for a duplicate.
    Raises ``sqlite3.Error`` (nothing written) when the database fails.
    """
    result = store_reports(conn, [(report, received_at)])[0]
    if isinstance(result, BaseException):
        raise result
    return result


class NotStored(sqlite3.OperationalError):
    """A report not written because an earlier report of its host failed in the same write:
    storing it would put the host's history out of order once the earlier one is retried."""


def store_reports(conn, items, failed_hosts=None):
    """Store several validated reports in one transaction (ingest's group commit).

    ``items``: ``[(report, received_at), ...]``. Each report is written inside its own
    ``SAVEPOINT`` of one ``BEGIN IMMEDIATE`` … ``COMMIT``, so a report that fails is undone
    alone and the other hosts' reports are still stored: the result list has, per item in
    order, the :func:`store_report` result dict or the exception that report raised. After a
    report fails, the later reports of the same host (machine identity) are not written
    (:class:`NotStored`), so that its agent's retry keeps the host's history in order;
    ``failed_hosts`` (a set, updated) carries that across calls. Nothing is durable before the
    ``COMMIT``, so the caller answers agents after this returns. Raises ``sqlite3.Error`` with
    nothing written when the transaction itself fails (``BEGIN``, ``COMMIT``, or an error after
    which SQLite rolled the whole transaction back, such as a full disk).
    """
    failed_hosts = set() if failed_hosts is None else failed_hosts
    results = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for report, received_at in items:
            host = machine_identity(report["host"])
            if host in failed_hosts:
                results.append(NotStored("not stored: an earlier report of this host failed; send it again"))
                continue
            conn.execute("SAVEPOINT report")
            try:
                result = _store(conn, report, received_at)
            except Exception as exc:  # this report only; SQLite may have ended the whole transaction
                if not conn.in_transaction:
                    raise
                conn.execute("ROLLBACK TO report")
                failed_hosts.add(host)
                result = exc
            else:
                if not result["stored"]:
                    conn.execute("ROLLBACK TO report")
            conn.execute("RELEASE report")
            results.append(result)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _store(conn, report, received_at):
    """Write one report inside the open transaction; ``{"stored": False}`` asks the caller to undo it."""
    host = report["host"]
    ts, skew = sample_time(report, received_at)
    gpu_status = report.get("gpu_status") or {}
    gpu_state = gpu_status.get("state")
    known = conn.execute("SELECT id FROM servers WHERE machine_id = ?", (machine_identity(host),)).fetchone()
    if known is not None and conn.execute(
        "SELECT 1 FROM host_samples WHERE server_id = ? AND report_id = ?", (known[0], report["report_id"])
    ).fetchone():
        # A duplicate only of this host's own reports (see docs/security.md L10: ids are not unique across hosts).
        return {"stored": False, "server_id": known[0]}
    server_id, newest = _upsert_server(conn, report, host, ts, skew, received_at)
    cpu, mem, net = report.get("cpu"), report.get("memory"), report.get("network")
    # host_samples is keyed by (server_id, ts) at 1 s. Another report of this host (a
    # different report_id: duplicates were answered above) in the same second happens
    # with short intervals under load, when a slow cycle samples just past a second
    # boundary and the next cycle samples in that second too: move this one to the next
    # free second instead of dropping an acknowledged report.
    for _ in range(_TS_SHIFT_MAX + 1):
        cur = conn.execute(
            "INSERT OR IGNORE INTO host_samples (server_id, ts, received_at, report_id,"
            " cpu_percent, load_1, memory_used_bytes, memory_total_bytes, swap_used_bytes,"
            " net_rx_bps, net_tx_bps, gpu_state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                server_id, ts, received_at, report["report_id"],
                _num(cpu, "percent"), _num(cpu, "load_1"),
                _num(mem, "used_bytes"), _num(mem, "total_bytes"), _num(mem, "swap_used_bytes"),
                _num(net, "rx_bytes_per_s"), _num(net, "tx_bytes_per_s"), gpu_state,
            ),
        )
        if cur.rowcount:
            break
        ts += 1
    else:  # a burst of reports for one host in a few seconds: keep the ones stored
        return {"stored": False, "server_id": server_id}
    if (ts // 3600 + 1) * 3600 <= received_at:
        # Its hour is complete and may be rolled up already: have the roll-up redone.
        conn.execute("INSERT OR IGNORE INTO rollup_dirty (hour) VALUES (?)", (ts // 3600 * 3600,))
    # Values of a slow nvidia-smi that finished after the previous report come stale with
    # their age: they are history at the time they were read, not at this report's.
    age = gpu_status.get("age_s") if gpu_status.get("stale") else None
    gpu_ts = ts - int(round(age)) if age else ts
    allocations = slurm_allocations(report)
    gpu_ids, gpu_rows = _store_gpus(conn, server_id, report.get("gpus") or [], gpu_ts, newest, gpu_state,
                                    _process_counts(report.get("processes") or []), allocations)
    if ts < received_at - _MIN_RAW_RETENTION_S:
        cutoff = conn.execute("SELECT value FROM maintenance_state WHERE name = 'raw_deleted_before'").fetchone()
        if cutoff is not None and ts < cutoff[0]:
            host_row = dict(cpu_percent=_num(cpu, "percent"), load_1=_num(cpu, "load_1"),
                            memory_used_bytes=_num(mem, "used_bytes"), memory_total_bytes=_num(mem, "total_bytes"),
                            swap_used_bytes=_num(mem, "swap_used_bytes"), net_rx_bps=_num(net, "rx_bytes_per_s"),
                            net_tx_bps=_num(net, "tx_bytes_per_s"))
            merge_late_sample(conn, server_id, ts, host_row, gpu_rows, named_rows={
                "disk_samples": [(d["mountpoint"], d) for d in report.get("disks") or []],
                "temperature_samples": [(t["sensor"], t) for t in chip_temperatures(report.get("temperatures"))]})
    _store_processes(conn, server_id, ts, gpu_ids, report.get("processes") or [])
    _store_allocation_holders(conn, server_id, ts, gpu_ids, report.get("processes") or [], allocations)
    _store_xid_events(conn, server_id, ts, received_at, report.get("xid_events") or [])
    disks = report.get("disks") or []
    if disks:
        conn.executemany(
            "INSERT OR IGNORE INTO disk_samples (server_id, ts, mountpoint, device, fstype,"
            " total_bytes, used_bytes, health) VALUES (?,?,?,?,?,?,?,?)",
            [
                (server_id, ts, d["mountpoint"], d["device"], d["fstype"],
                 d["total_bytes"], d["used_bytes"], d["health"])
                for d in disks
            ],
        )
    temperatures = chip_temperatures(report.get("temperatures"))
    if temperatures:
        conn.executemany(
            "INSERT OR IGNORE INTO temperature_samples (server_id, ts, sensor, temperature_c, high_c, critical_c)"
            " VALUES (?,?,?,?,?,?)",
            [(server_id, ts, t["sensor"], t["temperature_c"], t["high_c"], t["critical_c"]) for t in temperatures],
        )
    if newest:
        _store_inventory(conn, server_id, ts, report)
        groups.sync_reported(conn, server_id, "agent", report.get("groups"))
        groups.sync_reported(conn, server_id, "slurm", report.get("slurm_partitions"))
    return {"stored": True, "server_id": server_id}


def chip_temperatures(temperatures):
    """The ``temperature_samples`` rows of a report's ``temperatures`` (hwmon readings, °C): one per chip.

    ``temperatures``: the checked report's list of ``{"chip", "label", "current_c", "high_c",
    "critical_c"}`` or None. Reduced by :func:`monitor_agent.temperatures.per_chip` (the rule the
    agent already applies, so any agent's readings are stored alike): ``[{"sensor": chip,
    "temperature_c": its hottest current_c, "high_c", "critical_c": its lowest limits}]`` (None
    where no reading has one). Stored per chip, not per reading: a 64-core CPU has 65 coretemp
    readings per report, and the history page charts the chip (its hottest point).
    """
    return [{"sensor": c["chip"], "temperature_c": c["current_c"], "high_c": c["high_c"], "critical_c": c["critical_c"]}
            for c in temperatures_per_chip(temperatures)]


_SERVER_LATEST = (
    "hostname", "last_ts", "interval_s", "clock_skew_s", "agent_version", "os", "kernel",
    "arch", "cpu_model", "cpu_count", "boot_time", "cpu_percent", "load_1", "load_5",
    "load_15", "memory_used_bytes", "memory_total_bytes", "swap_used_bytes",
    "swap_total_bytes", "net_rx_bps", "net_tx_bps", "uptime_s", "gpu_state",
    "gpu_message", "gpu_lost", "spool_depth", "spool_dropped", "rejected_reports", "kmsg_state",
)


_SERVER_UPDATE = ("UPDATE servers SET last_seen = max(last_seen, ?), "
                  + ", ".join(f"{c} = ?" for c in _SERVER_LATEST) + " WHERE id = ?")


def _upsert_server(conn, report, host, ts, skew, received_at):
    """Insert or refresh the ``servers`` row; returns ``(id, is_newest_report)``."""
    cpu = report.get("cpu") or {}
    mem = report.get("memory") or {}
    net = report.get("network") or {}
    status = report.get("gpu_status") or {}
    lost = status.get("lost")
    agent = report.get("agent") or {}
    boot = host.get("boot_time")
    interval = report.get("interval")
    latest = dict(
        hostname=host["hostname"], last_ts=ts,
        interval_s=int(round(interval)) if interval else 30, clock_skew_s=skew,
        agent_version=host.get("agent_version"), os=host.get("os"),
        kernel=host.get("kernel"), arch=host.get("arch"), cpu_model=host.get("cpu_model"),
        cpu_count=host.get("cpu_count"), boot_time=int(boot) if boot is not None else None,
        cpu_percent=cpu.get("percent"), load_1=cpu.get("load_1"), load_5=cpu.get("load_5"),
        load_15=cpu.get("load_15"), memory_used_bytes=mem.get("used_bytes"),
        memory_total_bytes=mem.get("total_bytes"), swap_used_bytes=mem.get("swap_used_bytes"),
        swap_total_bytes=mem.get("swap_total_bytes"), net_rx_bps=net.get("rx_bytes_per_s"),
        net_tx_bps=net.get("tx_bytes_per_s"),
        uptime_s=int(report["uptime_s"]) if report.get("uptime_s") is not None else None,
        gpu_state=status.get("state"), gpu_message=status.get("message"),
        gpu_lost=json.dumps(lost) if lost else None,
        spool_depth=agent.get("spool_depth"), spool_dropped=agent.get("spool_dropped"),
        rejected_reports=agent.get("rejected"), kmsg_state=report.get("kmsg_state"),
    )
    identity = machine_identity(host)
    row = conn.execute(
        "SELECT id, last_ts, hostname FROM servers WHERE machine_id = ?", (identity,)
    ).fetchone()
    if row is None:
        # name_key: the natural sort key of the name shown (migration 29; no display name yet).
        cols = ("machine_id", "first_seen", "last_seen", "name_key") + _SERVER_LATEST
        values = ((identity, received_at, received_at, natural.sort_key(host["hostname"]))
                  + tuple(latest[c] for c in _SERVER_LATEST))
        cur = conn.execute(
            f"INSERT INTO servers ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            values,
        )
        note_identity_change(conn, cur.lastrowid, host["hostname"], None, received_at)
        return cur.lastrowid, True
    server_id, last_ts, previous = row
    if last_ts is None or ts >= last_ts:
        if previous != host["hostname"]:
            note_identity_change(conn, server_id, host["hostname"], previous, received_at)
        conn.execute(
            _SERVER_UPDATE,
            (received_at,) + tuple(latest[c] for c in _SERVER_LATEST) + (server_id,),
        )
        if previous != host["hostname"]:  # the shown name changed unless an admin named the server
            conn.execute("UPDATE servers SET name_key = ? WHERE id = ? AND display_name IS NULL",
                         (natural.sort_key(host["hostname"]), server_id))
        return server_id, True
    conn.execute(
        "UPDATE servers SET last_seen = max(last_seen, ?) WHERE id = ?", (received_at, server_id)
    )
    return server_id, False


# Characters that look alike in a host name (which the contract keeps to ASCII letters, digits,
# ".", "-", "_"): compared after lower-casing.
_LOOK_ALIKE = str.maketrans({"0": "o", "1": "l", "i": "l", "_": "-"})


def name_skeleton(name):
    """A host name reduced to what a reader sees: lower case, ``0``→``o``, ``1``/``i``→``l``,
    ``_``→``-``, ``rn``→``m``, ``vv``→``w``. Two different names with one skeleton look alike.
    The same rule in SQL, indexed over ``servers``' host and display names, is
    :func:`server_monitor.storage.schema.skeleton_sql` (migration 25)."""
    return name.lower().translate(_LOOK_ALIKE).replace("rn", "m").replace("vv", "w")


# The other servers whose host or display name has the new name's skeleton: two index seeks
# (migration 25's expression indexes), whatever the size of the fleet.
# One SELECT per index, not one with an OR: after the hub's own ANALYZE of a fleet whose display
# names are mostly NULL, the display-name skeleton index looked unselective and SQLite planned
# the OR as a scan of every server (a new host's first report: 13 ms at 10,000 servers, 1 ms at 100).
_SAME_SKELETON = (f"SELECT id, hostname, display_name FROM servers WHERE id != ?1"
                  f" AND {schema.skeleton_sql('hostname')} = ?2"
                  f" UNION SELECT id, hostname, display_name FROM servers WHERE id != ?1"
                  f" AND {schema.skeleton_sql('display_name')} = ?2"
                  f" ORDER BY id")


def note_identity_change(conn, server_id, hostname, previous, now):
    """Record in ``host_identity_events`` what an admin should look at about ``hostname``, the
    name server ``server_id`` reports now (``previous``: the name it reported before, None for a
    new server). Called inside the ingest transaction only when a server is new or its name
    changed. Kinds: ``renamed`` (same machine id, another name), ``name_taken`` (another server
    has this host or display name), ``look_alike`` (another server's name has the same
    :func:`name_skeleton`). Security review L10 (docs/security.md): an agent with the shared
    token can send any host name; nothing is refused, the admin is told. The other servers are
    found through the skeleton indexes (issue 24: the cost does not grow with the fleet).
    """
    if previous is not None:
        conn.execute("INSERT INTO host_identity_events (server_id, ts, kind, hostname, previous)"
                     " VALUES (?, ?, 'renamed', ?, ?)", (server_id, now, hostname, previous))
    skeleton = name_skeleton(hostname)
    for other_id, other_host, other_display in conn.execute(_SAME_SKELETON, (server_id, skeleton)).fetchall():
        for name in {other_host, other_display} - {None}:
            kind = "name_taken" if name == hostname else "look_alike" if name_skeleton(name) == skeleton else None
            if kind:
                conn.execute("INSERT INTO host_identity_events (server_id, ts, kind, hostname, previous,"
                             " other_server_id) VALUES (?, ?, ?, ?, ?, ?)", (server_id, now, kind, hostname, name, other_id))
                break


_GPU_LATEST = {
    # gpus column: report key (nvidia-smi field name)
    "gpu_index": "index",
    "vendor": "vendor",
    "name": "name",
    "pci_bus_id": "pci.bus_id",
    "driver_version": "driver_version",
    "utilization_gpu": "utilization.gpu",
    "utilization_memory": "utilization.memory",
    "memory_used_mib": "memory.used",
    "memory_total_mib": "memory.total",
    "memory_reserved_mib": "memory.reserved",
    "temperature_gpu_c": "temperature.gpu",
    "temperature_memory_c": "temperature.memory",
    "power_draw_w": "power.draw",
    "power_limit_w": "power.limit",
    "fan_speed": "fan.speed",
    "clocks_sm_mhz": "clocks.sm",
    "clocks_mem_mhz": "clocks.mem",
    "pstate": "pstate",
    "clocks_event_reasons_active": "clocks_event_reasons.active",
    "ecc_errors_uncorrected_volatile_total": "ecc.errors.uncorrected.volatile.total",
    "retired_pages_pending": "retired_pages.pending",
    "remapped_rows_pending": "remapped_rows.pending",
    "mig_mode": "mig.mode.current",
    "persistence_mode": "persistence_mode",
    "temperature_junction_c": "temperature.junction",
    "compute_partition": "compute_partition",
    "memory_partition": "memory_partition",
    "gpu_state": "state",
    "cuda_version": "cuda_version",
    "mig_mode_pending": "mig.mode.pending",
    "ecc_mode": "ecc.mode.current",
    "ecc_mode_pending": "ecc.mode.pending",
    "ecc_errors_corrected_volatile_total": "ecc.errors.corrected.volatile.total",
    "ecc_errors_corrected_aggregate_total": "ecc.errors.corrected.aggregate.total",
    "ecc_errors_uncorrected_aggregate_total": "ecc.errors.uncorrected.aggregate.total",
    "retired_pages_sbe": "retired_pages.single_bit_ecc.count",
    "retired_pages_dbe": "retired_pages.double_bit.count",
    "remapped_rows_correctable": "remapped_rows.correctable",
    "remapped_rows_uncorrectable": "remapped_rows.uncorrectable",
    "remapped_rows_failure": "remapped_rows.failure",
    "gpu_recovery_action": "gpu_recovery_action",
    "clocks_event_reasons_supported": "clocks_event_reasons.supported",
    "sw_power_cap_us": "clocks_event_reasons_counters.sw_power_cap",
    "sync_boost_us": "clocks_event_reasons_counters.sync_boost",
    "sw_thermal_slowdown_us": "clocks_event_reasons_counters.sw_thermal_slowdown",
    "hw_thermal_slowdown_us": "clocks_event_reasons_counters.hw_thermal_slowdown",
    "hw_power_brake_slowdown_us": "clocks_event_reasons_counters.hw_power_brake_slowdown",
    "pcie_link_gen_current": "pcie.link.gen.current",
    "pcie_link_gen_max": "pcie.link.gen.max",
    "pcie_link_width_current": "pcie.link.width.current",
    "pcie_link_width_max": "pcie.link.width.max",
    "temperature_gpu_tlimit_c": "temperature.gpu.tlimit",
    "utilization_encoder": "utilization.encoder",
    "utilization_decoder": "utilization.decoder",
    "encoder_sessions": "encoder.stats.sessionCount",
    "memory_free_mib": "memory.free",
    "xgmi_links_down": "xgmi.links_down",
}
_BOOL_COLUMNS = {"retired_pages_pending", "remapped_rows_pending", "mig_mode", "persistence_mode",
                 "mig_mode_pending", "ecc_mode", "ecc_mode_pending", "remapped_rows_failure"}
_INT_COLUMNS = {"temperature_gpu_c", "temperature_memory_c", "temperature_junction_c", "fan_speed", "utilization_gpu",
                "utilization_memory", "utilization_encoder", "utilization_decoder"}
# Columns derived at ingest from the values above (gpu_health).
_GPU_DERIVED = ("clocks_event_reasons", "health", "health_reasons")
# gpu_samples columns, in insert order (the time series among the GPU values).
_GPU_SAMPLE_COLUMNS = (
    "utilization_gpu", "utilization_memory", "memory_used_mib", "temperature_gpu_c", "power_draw_w", "fan_speed",
    "utilization_encoder", "utilization_decoder", "clocks_event_reasons_active", "pcie_link_gen_current",
    "pcie_link_width_current", "ecc_errors_corrected_volatile_total", "ecc_errors_uncorrected_volatile_total",
    "sw_power_cap_us", "sw_thermal_slowdown_us", "hw_thermal_slowdown_us", "temperature_gpu_tlimit_c",
)


_GPU_KEYS = tuple(_GPU_LATEST.items())


def _gpu_values(gpu):
    get = gpu.get
    out = {column: get(key) for column, key in _GPU_KEYS}
    for column in _BOOL_COLUMNS:
        if out[column] is not None:
            out[column] = int(out[column])
    for column in _INT_COLUMNS:
        if out[column] is not None:
            out[column] = int(round(out[column]))
    if out["vendor"] is None:
        out["vendor"] = "nvidia"  # agents before AMD/Intel support read nvidia-smi only
    return out


# A GPU counts as busy with any compute process or at least this utilization (%) of its
# SMs, encoder or decoder (see gpu_health.is_busy).
BUSY_UTILIZATION = gpu_health.BUSY_UTILIZATION


def _process_counts(processes):
    counts = {}
    for p in processes:
        counts[p.get("gpu_uuid")] = counts.get(p.get("gpu_uuid"), 0) + 1
    return counts


# The statements of _store_gpus, built once.
_GPU_COLUMNS = list(_GPU_LATEST) + ["process_count", "busy"] + list(_GPU_DERIVED) + ["slurm_job", "slurm_user"]
_GPU_INSERT = (f"INSERT INTO gpus ({', '.join(['server_id', 'uuid', 'first_seen', 'last_ts', 'present'] + _GPU_COLUMNS)})"
               f" VALUES ({', '.join('?' * (len(_GPU_COLUMNS) + 5))})")
_GPU_UPDATE = ("UPDATE gpus SET last_ts = ?, present = CASE WHEN ? THEN 1 ELSE present END, "
               + ", ".join(f"{c} = ?" for c in _GPU_COLUMNS) + " WHERE id = ?")
_GPU_SAMPLE_INSERT = (f"INSERT OR IGNORE INTO gpu_samples (gpu_id, ts, {', '.join(_GPU_SAMPLE_COLUMNS)})"
                      f" VALUES ({', '.join('?' * (len(_GPU_SAMPLE_COLUMNS) + 2))})")


def slurm_allocations(report):
    """``{gpu uuid: (job, user, uid, job_id)}`` of the report's ``slurm_jobs`` (empty without Slurm):
    ``job`` the id users know (``array_id`` of an array task, else the JobId), ``job_id`` the JobId.

    A GPU named by two jobs (Slurm never does that; a confused report might) keeps the first.
    """
    out = {}
    for job in report.get("slurm_jobs") or []:
        for uuid in job.get("gpu_uuids") or []:
            out.setdefault(uuid, (job.get("array_id") or job["job_id"], job.get("user"), job.get("uid"),
                                  job["job_id"]))
    return out


def _store_gpus(conn, server_id, gpus, ts, newest, gpu_state, process_counts, allocations=None):
    """Upsert ``gpus`` rows, append ``gpu_samples`` and refresh the server's GPU counts.

    ``process_counts``: ``{gpu uuid: processes in this report}``; ``allocations``: the
    :func:`slurm_allocations` of the report (``slurm_job`` / ``slurm_user`` of each GPU).
    Returns ``({identity: gpu_id}, [(gpu_id, {sample column: value})])``.
    """
    known = {
        uuid: (gpu_id, last_ts)
        for gpu_id, uuid, last_ts in conn.execute(
            "SELECT id, uuid, last_ts FROM gpus WHERE server_id = ?", (server_id,)
        )
    }
    ids, samples, rows = {}, [], []
    columns = _GPU_COLUMNS
    for gpu in gpus:
        identity = gpu_identity(gpu)
        if identity in ids:  # duplicated row in one report: keep the first
            continue
        values = _gpu_values(gpu)
        values["process_count"] = process_counts.get(gpu.get("uuid"), 0)
        job = (allocations or {}).get(gpu.get("uuid"))
        values["slurm_job"], values["slurm_user"] = (job[0], job[1]) if job else (None, None)
        values["busy"] = int(gpu_health.is_busy(values["process_count"], values["utilization_gpu"],
                                                values["utilization_encoder"], values["utilization_decoder"]))
        names = gpu_health.reason_names(values["clocks_event_reasons_active"])
        values["clocks_event_reasons"] = ",".join(names) if names else None
        values["health"], reasons = gpu_health.assess(values)
        values["health_reasons"] = "; ".join(reasons) or None
        if identity not in known:
            present = 1
            if not newest:
                # First seen in a replayed older report: absent from the newest report, so gone,
                # unless that newest report could not list the GPUs (driver failure, timeout).
                latest_state = conn.execute("SELECT gpu_state FROM servers WHERE id = ?", (server_id,)).fetchone()[0]
                present = int(latest_state not in _COMPLETE_GPU_STATES)
            cur = conn.execute(_GPU_INSERT, [server_id, identity, ts, ts, present] + [values[c] for c in columns])
            gpu_id = cur.lastrowid
        else:
            gpu_id, last_ts = known[identity]
            if last_ts is None or ts >= last_ts:
                conn.execute(_GPU_UPDATE, [ts, int(newest)] + [values[c] for c in columns] + [gpu_id])
        ids[identity] = gpu_id
        rows.append((gpu_id, values))
        samples.append((gpu_id, ts) + tuple(values[c] for c in _GPU_SAMPLE_COLUMNS))
    if samples:
        conn.executemany(_GPU_SAMPLE_INSERT, samples)
    if newest and gpu_state in _COMPLETE_GPU_STATES:
        gone = [gpu_id for identity, (gpu_id, _) in known.items() if identity not in ids]
        if gone:
            conn.executemany("UPDATE gpus SET present = 0 WHERE id = ?", [(g,) for g in gone])
    if newest:
        conn.execute(
            "UPDATE servers SET"
            " gpu_count = (SELECT count(*) FROM gpus WHERE server_id = ?1 AND present),"
            " gpus_busy = (SELECT coalesce(sum(busy), 0) FROM gpus WHERE server_id = ?1 AND present),"
            " gpu_models = (SELECT group_concat(model, ', ') FROM (SELECT name || ' × ' || count(*) AS model"
            "   FROM gpus WHERE server_id = ?1 AND present GROUP BY name ORDER BY name))"
            " WHERE id = ?1",
            (server_id,),
        )
    return ids, rows


def _bus_key(bus_id):
    """``00000000:3B:00.0`` and ``0000:3b:00.0`` compare equal: (domain, bus, device, function) ints."""
    try:
        domain, bus, rest = bus_id.strip().split(":")
        device, _, function = rest.partition(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function or "0", 16)
    except (AttributeError, ValueError):
        return None


def _store_xid_events(conn, server_id, ts, received_at, events):
    """Append XID events (each kernel record once) and keep ``gpus.xid_last`` / ``xid_last_ts``.

    An event's GPU is the server's GPU with its UUID, else with its PCI bus id; its time is the
    agent's ``time`` (boot time + record usec), else the report's. ``message`` is stored without
    the line's ``pid=…, name=…`` part (:func:`server_monitor.storage.xidtext.without_process`), the full
    line in ``kernel_line`` (see docs/security.md N6).
    """
    if not events:
        return
    gpus = conn.execute("SELECT id, uuid, pci_bus_id FROM gpus WHERE server_id = ?", (server_id,)).fetchall()
    by_uuid = {uuid: gpu_id for gpu_id, uuid, _ in gpus}
    by_bus = {_bus_key(bus): gpu_id for gpu_id, _, bus in gpus if bus}
    for e in events:
        gpu_id = by_uuid.get(e["gpu_uuid"]) or by_bus.get(_bus_key(e["pci.bus_id"]))
        when = int(e["time"]) if e["time"] is not None and e["time"] > 1e9 else ts
        # The process (pid=, name=) stays out of the text every viewer reads (see docs/security.md N6): message holds
        # the line without it, kernel_line the line as the kernel printed it (null when the same).
        public = xidtext.without_process(e["message"])
        cur = conn.execute(
            "INSERT OR IGNORE INTO xid_events (server_id, gpu_id, ts, received_at, seq, usec, pci_bus_id, xid, name,"
            " pid, process_name, message, kernel_line) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (server_id, gpu_id, when, received_at, e["seq"], e["usec"], e["pci.bus_id"], e["xid"], e["name"],
             e["pid"], e["process_name"], public, None if public == e["message"] else e["message"]))
        if cur.rowcount and gpu_id is not None:
            conn.execute("UPDATE gpus SET xid_last = ?, xid_last_ts = ? WHERE id = ? AND coalesce(xid_last_ts, 0) <= ?",
                         (e["xid"], when, gpu_id, when))


def _store_processes(conn, server_id, ts, gpu_ids, processes):
    if not processes:
        return
    by_uuid = dict(gpu_ids)
    conn.executemany(
        "INSERT INTO gpu_processes (server_id, ts, gpu_id, pid, process_name,"
        " used_gpu_memory_mib, user, uid, container, container_kind, utilization_gpu, gpu_instance_id,"
        " compute_instance_id, mig_uuid)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (server_id, ts, by_uuid.get(p.get("gpu_uuid")), p["pid"], p["process_name"],
             p["used_gpu_memory"], p["user"], p["uid"], p["container"], p["container_kind"],
             p.get("utilization.gpu"), p.get("gpu_instance_id"), p.get("compute_instance_id"), p.get("mig_uuid"))
            for p in processes
        ],
    )


# container_kind of the gpu_processes rows that stand for a Slurm allocation with no process.
SLURM_ALLOCATION_KIND = "slurm-alloc"


def _store_allocation_holders(conn, server_id, ts, gpu_ids, processes, allocations):
    """One ``gpu_processes`` row per GPU a Slurm job holds with no process on it in this report.

    The row stands for the job as the GPU's holder: ``pid`` and ``process_name`` NULL,
    ``used_gpu_memory_mib`` 0, ``user``/``uid`` the job's, ``container`` ``job <JobId>`` (the name a
    process inside the job gets from its cgroup, monitor_agent/cgroups.py) and ``container_kind``
    :data:`SLURM_ALLOCATION_KIND`. So the who-panel, the holder history and GPU-hours count
    an allocated GPU for the job's user from the moment it is allocated, and a GPU whose
    job's processes run is counted through those processes only (never twice).
    """
    if not allocations:
        return
    used = {p.get("gpu_uuid") for p in processes}
    rows = [(server_id, ts, gpu_ids[uuid], user, uid, f"job {job_id}", SLURM_ALLOCATION_KIND)
            for uuid, (_, user, uid, job_id) in allocations.items() if uuid in gpu_ids and uuid not in used]
    conn.executemany(
        "INSERT INTO gpu_processes (server_id, ts, gpu_id, pid, process_name, used_gpu_memory_mib, user, uid,"
        " container, container_kind) VALUES (?, ?, ?, NULL, NULL, 0, ?, ?, ?, ?)", rows)


def _store_mig(conn, server_id, ts, devices, processes):
    """Replace the server's ``mig_devices`` rows with ``devices`` (report's ``mig_devices``)."""
    conn.execute("DELETE FROM mig_devices WHERE server_id = ?", (server_id,))
    gpu_ids = dict(conn.execute("SELECT uuid, id FROM gpus WHERE server_id = ?", (server_id,)).fetchall())
    counts = {}
    for p in processes:
        if p.get("mig_uuid"):
            counts[p["mig_uuid"]] = counts.get(p["mig_uuid"], 0) + 1
    conn.executemany(
        "INSERT OR REPLACE INTO mig_devices (server_id, uuid, gpu_id, gpu_index, mig_index, profile, gpu_instance_id,"
        " compute_instance_id, memory_used_mib, memory_total_mib, sm_count, process_count, sampled_at, ts)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(server_id, d["uuid"], gpu_ids.get(d["gpu_uuid"]), d["gpu_index"], d["mig_index"], d["profile"],
          d["gpu_instance_id"], d["compute_instance_id"], d["memory.used"], d["memory.total"], d["sm_count"],
          counts.get(d["uuid"], 0), int(d["sampled_at"]) if d["sampled_at"] is not None else None, ts)
         for d in devices if d["uuid"]])


def _store_inventory(conn, server_id, ts, report):
    """Latest-only tables: the LXC/Incus list (replaced when sent), probe results, MIG devices."""
    topo = report.get("gpu_topology")
    if topo is not None:
        conn.execute("DELETE FROM gpu_links WHERE server_id = ?", (server_id,))
        conn.executemany("INSERT OR REPLACE INTO gpu_links (server_id, gpu_a, gpu_b, link) VALUES (?,?,?,?)",
                         [(server_id, min(link["a"], link["b"]), max(link["a"], link["b"]), link["link"])
                          for link in topo["links"] or [] if link["a"] != link["b"]])
        conn.executemany("UPDATE gpus SET cpu_affinity = ?, numa_node = ? WHERE server_id = ? AND gpu_index = ?"
                         " AND vendor = 'nvidia'",
                         [(topology.cpu_list(g["cpu_affinity"]), topology.numa_node(g["numa_affinity"]), server_id,
                           g["index"])
                          for g in topo["gpus"] or []])
    if report.get("mig_devices") is not None:
        _store_mig(conn, server_id, ts, report["mig_devices"], report.get("processes") or [])
    containers = report.get("containers")
    if containers is not None:
        conn.execute("DELETE FROM containers WHERE server_id = ?", (server_id,))
        conn.executemany(
            "INSERT OR REPLACE INTO containers (server_id, project, name, kind, type, state,"
            " memory_bytes, disk_bytes, cpu_seconds, ipv4, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (server_id, c["project"] or "default", c["name"], c["kind"], c["type"], c["state"],
                 c["memory_bytes"], c["disk_bytes"], c["cpu_seconds"], c["ipv4"], ts)
                for c in containers
            ],
        )
    probes = report.get("probes")
    if probes is not None:
        conn.execute("DELETE FROM probes WHERE server_id = ?", (server_id,))
        conn.executemany(
            "INSERT OR REPLACE INTO probes (server_id, name, url, ok, latency_ms, status, error,"
            " checked_at, ts) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (server_id, p["name"], p["url"], _bool(p["ok"]), p["latency_ms"], p["status"], p["error"],
                 int(p["checked_at"]) if p["checked_at"] is not None else None, ts)
                for p in probes
            ],
        )


# Tables holding a server's rows, children first (connections without foreign keys
# enabled, such as Datasette's write connection, need the cascade spelled out).
_GPU_CHILD_TABLES = ("gpu_samples", "gpu_samples_5m", "gpu_samples_1h", "idle_nudges")
_SERVER_CHILD_TABLES = ("server_groups", "host_identity_events", "gpu_links", "mig_devices", "xid_events", "gpu_processes", "host_samples",
                        "host_samples_5m", "host_samples_1h", "disk_samples", "disk_samples_5m", "disk_samples_1h",
                        "temperature_samples", "temperature_samples_5m", "temperature_samples_1h",
                        "containers", "probes",
                        "gpu_usage_1h", "gpu_usage_user_1d", "alerts", "silences", "gpus")


def delete_server(conn, server_id):
    """Delete server ``server_id`` and all its history in one transaction.

    History includes the GPU-hours accounting (``gpu_usage_1h``) and the alerts of the server
    (see docs/security.md M4: they attached to the next server that got the id). Ids are never reused (schema
    migration 9), so a new server never inherits anything. ``conn`` may be any writable
    connection (autocommit or not). Returns False when there is no such server. Its agent, if
    still running, will create a new server row with a new id. Viewer scopes in ``auth.db``
    are cleaned by :meth:`server_monitor.auth.accounts.Accounts.forget_server`.
    """
    in_txn = conn.in_transaction
    fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    if fk and not in_txn:
        # Children are deleted explicitly below; with foreign keys on, SQLite would also
        # scan gpu_processes (no gpu_id index) once per deleted GPU to check the constraint.
        conn.execute("PRAGMA foreign_keys=OFF")
    if not in_txn:
        conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM servers WHERE id = ?", (server_id,)).fetchone() is None:
            found = False
        else:
            for table in _GPU_CHILD_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE gpu_id IN (SELECT id FROM gpus WHERE server_id = ?)",
                             (server_id,))
            conn.execute("DELETE FROM alert_acks WHERE alert_id IN (SELECT id FROM alerts WHERE server_id = ?)",
                         (server_id,))
            for table in _SERVER_CHILD_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE server_id = ?", (server_id,))
            conn.execute("DELETE FROM servers WHERE id = ?", (server_id,))
            found = True
        if not in_txn:
            conn.execute("COMMIT")
        return found
    except BaseException:
        if not in_txn:
            conn.execute("ROLLBACK")
        raise
    finally:
        if fk and not in_txn:
            conn.execute("PRAGMA foreign_keys=ON")
