"""Prometheus exposition of the fleet's latest state, with DCGM-exporter metric names.

GPU series use the names and labels of NVIDIA's dcgm-exporter (``DCGM_FI_DEV_GPU_UTIL``,
``DCGM_FI_DEV_FB_USED``, ... with ``gpu``, ``UUID``, ``device``, ``modelName``,
``Hostname``), so the stock Grafana DCGM dashboard works on them. Host series are
``server_monitor_*``. AMD GPUs use the names and labels of AMD's device-metrics-exporter
instead (``gpu_gfx_activity``, ``gpu_used_vram``, ``gpu_junction_temperature``, ... with
``gpu_id``, ``gpu_uuid``, ``card_model``, ``hostname``), so AMD's Grafana dashboards work on
them; Intel GPUs, for which no exporter name set is established, use the DCGM names. Every
DCGM series carries a ``vendor`` label (``nvidia`` / ``intel``). Only hosts that reported recently (status online, or error with a
partial GPU list) export values; stale, offline and maintenance hosts export just
``server_monitor_up 0``, so a dead host never looks live.
"""

import gzip
import os
import sqlite3
import signal

from ..core.process import die_with_parent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# zlib level 1: 56 MB of text at 1,000 servers x 8 GPUs -> 3.2 MB in 0.4 s (level 5: 2.1 MB in 1.0 s).
GZIP_LEVEL = 1
# Niceness of the process that builds expositions (see build_gzip): the agents' reports first.
BUILDER_NICE = 10
LIVE_STATES = ("online", "error")

# (metric, gpus column, help)
GPU_METRICS = (
    ("DCGM_FI_DEV_GPU_UTIL", "utilization_gpu", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "utilization_memory", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "memory_used_mib", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "fb_free_mib", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_TOTAL", "memory_total_mib", "Framebuffer memory total (in MiB)."),
    ("DCGM_FI_DEV_GPU_TEMP", "temperature_gpu_c", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "temperature_memory_c", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "power_draw_w", "Power draw (in W)."),
    ("DCGM_FI_DEV_SM_CLOCK", "clocks_sm_mhz", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "clocks_mem_mhz", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "ecc_errors_uncorrected_volatile_total", "Total uncorrectable (double-bit) volatile ECC errors."),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "remapped_rows_pending", "Row remapping pending (1 = GPU reset needed)."),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "ecc_errors_corrected_volatile_total", "Total single-bit volatile ECC errors."),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "ecc_errors_corrected_aggregate_total", "Total single-bit persistent ECC errors."),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "ecc_errors_uncorrected_aggregate_total",
     "Total double-bit persistent ECC errors."),
    ("DCGM_FI_DEV_RETIRED_SBE", "retired_pages_sbe", "Total number of retired pages due to single-bit errors."),
    ("DCGM_FI_DEV_RETIRED_DBE", "retired_pages_dbe", "Total number of retired pages due to double-bit errors."),
    ("DCGM_FI_DEV_RETIRED_PENDING", "retired_pages_pending", "Number of pages pending retirement (1 = pending)."),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "remapped_rows_correctable",
     "Number of remapped rows for correctable errors."),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "remapped_rows_uncorrectable",
     "Number of remapped rows for uncorrectable errors."),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "remapped_rows_failure", "Whether remapping of rows has failed."),
    ("DCGM_FI_DEV_PCIE_LINK_GEN", "pcie_link_gen_current", "PCIe link generation (current)."),
    ("DCGM_FI_DEV_PCIE_LINK_WIDTH", "pcie_link_width_current", "PCIe link width (current lanes)."),
    ("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "pcie_link_gen_max", "PCIe link generation (max of GPU and slot)."),
    ("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "pcie_link_width_max", "PCIe link width (max lanes)."),
    ("DCGM_FI_DEV_ENC_UTIL", "utilization_encoder", "Encoder utilization (in %)."),
    ("DCGM_FI_DEV_DEC_UTIL", "utilization_decoder", "Decoder utilization (in %)."),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "clocks_event_reasons_active",
     "Current clock throttle reasons (bitmask of nvmlClocksEventReason*)."),
    ("DCGM_FI_DEV_POWER_VIOLATION", "sw_power_cap_us", "Throttling duration due to power constraints (in us)."),
    ("DCGM_FI_DEV_THERMAL_VIOLATION", "thermal_violation_us",
     "Throttling duration due to thermal constraints (in us; software + hardware thermal slowdown)."),
    ("DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "sync_boost_us", "Throttling duration due to sync-boost constraints (in us)."),
    ("DCGM_FI_DEV_FB_RESERVED", "memory_reserved_mib", "Framebuffer memory reserved (in MiB)."),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "power_limit_w", "Current power limit for the device (in W)."),
    ("server_monitor_gpu_temperature_tlimit_celsius", "temperature_gpu_tlimit_c",
     "Headroom to the GPU's slowdown temperature (nvidia-smi temperature.gpu.tlimit, in C)."),
    ("server_monitor_gpu_encoder_sessions", "encoder_sessions", "NVENC sessions running."),
    ("DCGM_FI_DEV_XID_ERRORS", "xid_errors", "Value of the last XID error encountered."),
    ("server_monitor_gpu_health", "health_level", "GPU health badge: 0 ok, 1 warning, 2 critical."),
    ("server_monitor_gpu_processes", "process_count", "Compute processes on the GPU."),
)
# GPU_I_ID / GPU_I_PROFILE: the MIG GPU instance id and profile, as dcgm-exporter labels MIG
# series; empty (absent for Prometheus) on whole-GPU series.
GPU_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "pci_bus_id", "vendor", "GPU_I_ID", "GPU_I_PROFILE"]
# Per MIG instance (metric, mig_devices column).
MIG_METRICS = (
    ("DCGM_FI_DEV_FB_USED", "memory_used_mib"),
    ("DCGM_FI_DEV_FB_FREE", "fb_free_mib"),
    ("DCGM_FI_DEV_FB_TOTAL", "memory_total_mib"),
    ("server_monitor_gpu_processes", "process_count"),
)

# AMD device-metrics-exporter names (lower case of its GPUMetricField enum) and units.
# (metric, gpus column, help, extra label values)
AMD_METRICS = (
    ("gpu_gfx_activity", "utilization_gpu", "Graphics/compute engine activity (in %).", {}),
    ("gpu_umc_activity", "utilization_memory", "Memory controller activity (in %).", {}),
    ("gpu_used_vram", "memory_used_mib", "Used VRAM (in MiB).", {}),
    ("gpu_free_vram", "fb_free_mib", "Free VRAM (in MiB).", {}),
    ("gpu_total_vram", "memory_total_mib", "Total VRAM (in MiB).", {}),
    ("gpu_edge_temperature", "temperature_edge_c", "Edge temperature (in C).", {}),
    ("gpu_junction_temperature", "temperature_junction_c", "Junction (hotspot) temperature (in C).", {}),
    ("gpu_memory_temperature", "temperature_memory_c", "Memory temperature (in C).", {}),
    ("gpu_power_usage", "power_draw_w", "Power draw (in W).", {}),
    ("gpu_clock", "clocks_sm_mhz", "Current clock (in MHz).", {"clock_type": "GPU_CLOCK_TYPE_SYSTEM"}),
    ("gpu_clock", "clocks_mem_mhz", "Current clock (in MHz).", {"clock_type": "GPU_CLOCK_TYPE_MEMORY"}),
    ("gpu_ecc_uncorrect_total", "ecc_errors_uncorrected_volatile_total", "Uncorrectable ECC errors (amd-smi).", {}),
)
AMD_LABELS = ["gpu_id", "gpu_uuid", "card_model", "hostname", "pci_bus_id", "gpu_compute_partition_type",
              "gpu_memory_partition_type", "clock_type"]

HOST_METRICS = (
    ("server_monitor_cpu_percent", "cpu_percent", "CPU busy over the last report interval (in %)."),
    ("server_monitor_load1", "load_1", "1-minute load average."),
    ("server_monitor_memory_used_bytes", "memory_used_bytes", "Memory used (total - available)."),
    ("server_monitor_memory_total_bytes", "memory_total_bytes", "Memory total."),
    ("server_monitor_swap_used_bytes", "swap_used_bytes", "Swap used."),
    ("server_monitor_network_receive_bytes_per_second", "net_rx_bps", "Receive rate, physical NICs."),
    ("server_monitor_network_transmit_bytes_per_second", "net_tx_bps", "Transmit rate, physical NICs."),
    ("server_monitor_gpus", "gpu_count", "GPUs present in the latest report."),
    ("server_monitor_gpus_busy", "gpus_busy", "GPUs with a compute process or utilization >= 10 %."),
)

SERVERS_SQL = """
SELECT id, hostname, coalesce(display_name, hostname) AS name, state, seen_age_s, cpu_percent, load_1,
    memory_used_bytes, memory_total_bytes, swap_used_bytes, net_rx_bps, net_tx_bps, gpu_count, gpus_busy,
    (SELECT group_concat(sg.grp, ' ') FROM server_groups sg WHERE sg.server_id = server_state.id) AS groups
FROM server_state WHERE {where}
"""
GPUS_SQL = """
SELECT g.*,
    CASE WHEN g.temperature_gpu_c IS NOT g.temperature_junction_c THEN g.temperature_gpu_c END AS temperature_edge_c,
    -- memory.free as the driver reports it (total - reserved - used); total - used on old agents.
    coalesce(g.memory_free_mib, g.memory_total_mib - g.memory_used_mib) AS fb_free_mib,
    CASE WHEN g.sw_thermal_slowdown_us IS NULL AND g.hw_thermal_slowdown_us IS NULL THEN NULL
         ELSE coalesce(g.sw_thermal_slowdown_us, 0) + coalesce(g.hw_thermal_slowdown_us, 0) END
        AS thermal_violation_us,
    -- The last XID seen (dcgm-exporter's value); 0 where the kernel log is read and none came.
    CASE WHEN g.xid_last IS NOT NULL THEN g.xid_last
         WHEN (SELECT kmsg_state FROM servers s WHERE s.id = g.server_id) = 'ok' THEN 0 END AS xid_errors,
    CASE g.health WHEN 'ok' THEN 0 WHEN 'warning' THEN 1 WHEN 'critical' THEN 2 END AS health_level
FROM gpus g WHERE g.present AND {where}
"""
# One series per MIG GPU instance (GI), as dcgm-exporter labels them: the compute instances (CIs) of a GI
# share its memory and each carries the GI's values (monitor_agent.nvsmi.parse_mig_table), so they are
# folded into one row (one label set: a series per CI would repeat it); GPU_I_PROFILE is the GI's profile,
# "3g.40gb" for CIs named "1c.3g.40gb" / "2c.3g.40gb"; processes are summed over the CIs.
MIG_SQL = """
SELECT m.server_id, m.gpu_index, g.uuid, g.name, g.pci_bus_id, m.gpu_instance_id,
    CASE WHEN m.profile GLOB '[0-9]c.*' OR m.profile GLOB '[0-9][0-9]c.*'
         THEN substr(m.profile, instr(m.profile, '.') + 1) ELSE m.profile END AS profile,
    max(m.memory_used_mib) AS memory_used_mib, max(m.memory_total_mib) AS memory_total_mib,
    max(m.memory_total_mib) - max(m.memory_used_mib) AS fb_free_mib, sum(m.process_count) AS process_count
FROM mig_devices m JOIN gpus g ON g.id = m.gpu_id WHERE g.present AND m.gpu_instance_id IS NOT NULL AND {where}
GROUP BY m.gpu_id, m.gpu_instance_id
"""
DISKS_SQL = """
SELECT d.server_id, d.mountpoint, d.used_bytes, d.total_bytes FROM servers s
JOIN disk_samples d ON d.server_id = s.id AND d.ts = s.last_ts WHERE {where}
"""


def scoped_queries(shard=None, of=None, server_id=None):
    """The four queries of :func:`exposition` (servers, GPUs, disks, MIG instances) as
    ``(sql, params)`` pairs, for the whole fleet, one shard (servers whose id % ``of`` ==
    ``shard``: ids are given in order, so shards hold equal shares) or one ``server_id``."""
    if server_id is not None:
        cond, params = "{col} = :server_id", {"server_id": server_id}
    elif of:
        cond, params = "{col} % :of = :shard", {"of": of, "shard": shard}
    else:
        cond, params = "1", {}
    return [(SERVERS_SQL.format(where=cond.format(col="id")), params),
            (GPUS_SQL.format(where=cond.format(col="g.server_id")), params),
            (DISKS_SQL.format(where=cond.format(col="s.id")), params),
            (MIG_SQL.format(where=cond.format(col="g.server_id")), params)]



def _escape(value):
    """A label value in the text format: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value):
    """A sample value in the text format (ints as such, floats with ``repr``, IEEE specials spelled
    as Prometheus reads them)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels(pairs):
    """``{a="x",b="y"}`` for the (name, value) pairs whose value is not empty (Prometheus treats an
    empty label as absent, so writing it only costs bytes)."""
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs if value not in (None, ""))
    return "{" + inner + "}" if inner else ""


class _Writer:
    """Builds the exposition as a list of text chunks: one ``# HELP`` / ``# TYPE gauge`` header per
    family (written once, even when a family's samples come from several loops), then its lines."""

    def __init__(self):
        self.chunks = []
        self.families = {}

    def family(self, name, help_text):
        """The list of sample lines of family ``name`` (created with its help text on first use)."""
        lines = self.families.get(name)
        if lines is None:
            lines = self.families[name] = []
            self.chunks.append((name, help_text, lines))
        return lines

    def text(self):
        out = []
        for name, help_text, lines in self.chunks:
            out.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2)}\n# TYPE {name} gauge\n")
            out.extend(lines)
        return "".join(out)


def _dcgm_labels(row, vendor, hostname, extra):
    """dcgm-exporter's label string of a GPU or MIG ``row`` (``gpu_index``, ``uuid``, ``pci_bus_id``,
    ``name``, ``server_id``), ``Hostname`` when given, then the ``extra`` (name, value) pairs.
    A GPU's series are told apart by its ``UUID`` (unique per board); a GPU that reported none (the
    store keys it ``bus:<pci id>`` / ``index:<n>``, unique only within its server) gets ``server_id``
    too when ``hostname`` is given, so two same-named hosts never give duplicate series."""
    return _labels([("gpu", str(row["gpu_index"])), ("UUID", row["uuid"]), ("pci_bus_id", row["pci_bus_id"]),
                    ("device", f"{vendor}{row['gpu_index']}"), ("modelName", row["name"]), ("Hostname", hostname)]
                   + _no_uuid_server_id(row, hostname) + extra)


def _no_uuid_server_id(row, hostname):
    """``[("server_id", id)]`` for a GPU row without a board UUID when host labels are written, else ``[]``
    (see :func:`server_monitor.storage.store.gpu_identity` for the stand-in keys)."""
    uuid = row.get("uuid") or ""
    if hostname is None or (uuid and not uuid.startswith(("bus:", "index:"))):
        return []
    return [("server_id", str(row["server_id"]))]


def exposition(servers, gpus, disks, migs=(), hostname_label=True):
    """Prometheus text format 0.0.4 (bytes) for the given rows: ``servers`` from
    :data:`SERVERS_SQL`, ``gpus`` from :data:`GPUS_SQL`, ``disks`` from :data:`DISKS_SQL`, ``migs``
    from :data:`MIG_SQL` (lists of dicts).

    Labels are dcgm-exporter's (``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``,
    ``Hostname``; ``GPU_I_ID`` / ``GPU_I_PROFILE`` on MIG series; ``vendor`` only where it is not
    NVIDIA) and AMD device-metrics-exporter's for AMD GPUs; empty labels are left out.
    ``hostname_label=False`` leaves ``Hostname`` / ``hostname`` / ``server_id`` out of every sample:
    for ``/metrics/servers/<id>``, whose target carries them (HTTP service discovery).

    Written directly rather than through ``prometheus_client``'s registry: at 1,000 servers × 8 GPUs
    (280,000 samples) that spent two thirds of an 8.8 s scrape building per-sample objects; here each
    GPU's label string is built once and reused by its 35 series (tests parse the output with
    ``prometheus_client.parser``).
    """
    out = _Writer()
    live = {s["id"]: s for s in servers if s["state"] in LIVE_STATES}
    host = {}  # server id -> label pairs of its host series
    for s in servers:
        host[s["id"]] = [("Hostname", s["hostname"]), ("server_id", str(s["id"]))] if hostname_label else []
    up = out.family("server_monitor_up", "1 when the host reported recently (online), else 0.")
    age = out.family("server_monitor_last_report_age_seconds", "Seconds since the host's last report.")
    for s in servers:
        labels = _labels(host[s["id"]])
        up.append(f"server_monitor_up{labels} {1 if s['id'] in live else 0}\n")
        if s["seen_age_s"] is not None:
            age.append(f"server_monitor_last_report_age_seconds{labels} {_number(s['seen_age_s'])}\n")
    # Host groups (issue 24 item 1): one info series of value 1 per (server, group), not a label on
    # every sample (a server is in several groups); PromQL joins it, see docs/scaling.md.
    member = out.family("server_monitor_server_groups",
                        "1 for each host group the server is in (agent config, Slurm partition or admin).")
    for s in servers:
        for name in sorted(set((s.get("groups") or "").split())):
            member.append(f"server_monitor_server_groups{_labels(host[s['id']] + [('group', name)])} 1\n")
    for metric, column, help_text in HOST_METRICS:
        lines = out.family(metric, help_text)
        for s in live.values():
            if s[column] is not None:
                lines.append(f"{metric}{_labels(host[s['id']])} {_number(s[column])}\n")
    dcgm, amd = [], []
    for g in gpus:
        server = live.get(g["server_id"])
        if server is None:
            continue
        vendor = g.get("vendor") or "nvidia"
        if vendor == "amd":
            pairs = [("gpu_id", str(g["gpu_index"])), ("gpu_uuid", g["uuid"]), ("card_model", g["name"]),
                     ("hostname", server["hostname"] if hostname_label else None), ("pci_bus_id", g["pci_bus_id"]),
                     ("gpu_compute_partition_type", g["compute_partition"]),
                     ("gpu_memory_partition_type", g["memory_partition"])]
            pairs += _no_uuid_server_id(g, server["hostname"] if hostname_label else None)
            amd.append((g, pairs))
            continue
        dcgm.append((g, _dcgm_labels(g, vendor, server["hostname"] if hostname_label else None, [("vendor", vendor)])))
    all_gpus = dcgm + [(g, _dcgm_labels(g, "amd", live[g["server_id"]]["hostname"] if hostname_label else None,
                                        [("vendor", "amd")])) for g, _ in amd]
    mig_labels = []
    for m in migs:
        server = live.get(m["server_id"])
        if server is not None:
            mig_labels.append((m, _dcgm_labels(m, "nvidia", server["hostname"] if hostname_label else None,
                                               [("GPU_I_ID", str(m["gpu_instance_id"])),
                                                ("GPU_I_PROFILE", m["profile"])])))
    mig_columns = {}
    for metric, column in MIG_METRICS:
        mig_columns.setdefault(metric, []).append(column)
    for metric, column, help_text in GPU_METRICS:
        lines = out.family(metric, help_text)
        # The product's own series (not DCGM's) cover every vendor under one label set.
        for g, labels in (all_gpus if metric.startswith("server_monitor_") else dcgm):
            value = g[column]
            if value is not None:
                lines.append(f"{metric}{labels} {_number(value)}\n")
        for mig_column in mig_columns.get(metric, ()):
            for m, labels in mig_labels:
                if m[mig_column] is not None:
                    lines.append(f"{metric}{labels} {_number(m[mig_column])}\n")
    for metric, column, help_text, extra in AMD_METRICS:
        lines = out.family(metric, help_text)
        for g, pairs in amd:
            if g[column] is not None:
                lines.append(f"{metric}{_labels(pairs + [('clock_type', extra.get('clock_type'))])} "
                             f"{_number(g[column])}\n")
    used = out.family("server_monitor_filesystem_used_bytes", "Filesystem space used.")
    size = out.family("server_monitor_filesystem_size_bytes", "Filesystem size.")
    for d in disks:
        server = live.get(d["server_id"])
        if server is not None:
            # The host's label pairs (Hostname and server_id), as on every other host series: two
            # servers may share a host name, and without server_id their series would be duplicates.
            labels = _labels(host[d["server_id"]] + [("mountpoint", d["mountpoint"])])
            used.append(f"server_monitor_filesystem_used_bytes{labels} {_number(d['used_bytes'] or 0)}\n")
            size.append(f"server_monitor_filesystem_size_bytes{labels} {_number(d['total_bytes'] or 0)}\n")
    return out.text().encode("utf-8")


_connections = {}  # db path -> read-only connection of the builder process


def builder_init():
    """Initializer of the exposition builder process (``plugins/sm_metrics.py``): lower CPU
    priority (:data:`BUILDER_NICE`) and SIGKILL when the worker that started it dies (Linux).
    Ctrl-C (SIGINT to the terminal's process group) is ignored: the worker shuts the builder down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(BUILDER_NICE)
    except OSError:
        pass
    die_with_parent()


def build_gzip(db_path, shard=None, of=None, server_id=None, hostname_label=True):
    """The exposition of one scope (see :func:`scoped_queries`), read from ``db_path`` on a
    read-only connection of this process, gzip-compressed (:data:`GZIP_LEVEL`). Returns
    ``(gzip bytes, text length)``. Runs in the builder process: the Python that formats 280,000
    samples (1,000 servers × 8 GPUs) never holds a hub worker's GIL while it stores reports.
    Raises ``sqlite3.Error``."""
    conn = _connections.get(db_path)
    if conn is None:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        _connections[db_path] = conn
    rows = [[dict(r) for r in conn.execute(sql, params)] for sql, params in scoped_queries(shard, of, server_id)]
    text = exposition(*rows, hostname_label=hostname_label)
    return gzip.compress(text, GZIP_LEVEL, mtime=0), len(text)
