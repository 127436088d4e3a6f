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

import json
import logging
import os
import sqlite3
import signal
import time
import zlib

from ..core.process import die_with_parent
from ..storage.instance import check_private_dir

_log = logging.getLogger("server_monitor.metrics")

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
    family (written once, even when a family's samples come from several loops), then its lines.

    With a ``sink`` (a callable taking bytes), a family :meth:`seal` ed as complete is written to it
    at once and its lines freed: a 2,500-server shard is 142 MB of text, which a builder holding it
    whole (lines, joined text, its encoding) kept three times over at its peak."""

    def __init__(self, sink=None):
        self.chunks = []
        self.families = {}
        self.sink = sink
        self.length = 0

    def _write(self, name, help_text, lines):
        text = (f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2)}\n# TYPE {name} gauge\n"
                + "".join(lines)).encode("utf-8")
        self.length += len(text)
        self.sink(text)

    def seal(self, name):
        """Family ``name`` is complete: with a sink, written out now (later lines for it are an error)."""
        if self.sink is None:
            return
        for i, (family, help_text, lines) in enumerate(self.chunks):
            if family == name and lines is not None:
                self._write(family, help_text, lines)
                self.chunks[i] = (family, help_text, None)
                lines.clear()
                self.families[name] = None  # appending to a sealed family fails loudly

    def finish(self):
        """Write every family not sealed yet to the sink; returns the text's length (bytes)."""
        for name, help_text, lines in self.chunks:
            if lines is not None:
                self._write(name, help_text, lines)
        self.chunks = []
        return self.length

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


def exposition(servers, gpus, disks, migs=(), hostname_label=True, sink=None):
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

    ``sink``: a callable that takes the text in parts (bytes, each family whole); then the text is
    not kept and the return value is its length (int).
    """
    out = _Writer(sink)
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
    # The hot loop (2.7 million samples at 10,000 servers × 8 GPUs): each GPU's "metric{labels} "
    # prefix is one concatenation, integers (most values) are written by str() without _number's checks.
    for metric, column, help_text in GPU_METRICS:
        lines = out.family(metric, help_text)
        append = lines.append
        # The product's own series (not DCGM's) cover every vendor under one label set.
        for g, labels in (all_gpus if metric.startswith("server_monitor_") else dcgm):
            value = g[column]
            if value is not None:
                append(metric + labels + (" " + str(value) if type(value) is int else " " + _number(value)) + "\n")
        for mig_column in mig_columns.get(metric, ()):
            for m, labels in mig_labels:
                if m[mig_column] is not None:
                    lines.append(f"{metric}{labels} {_number(m[mig_column])}\n")
        out.seal(metric)
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
    if sink is not None:
        return out.finish()
    return out.text().encode("utf-8")


class SharedBuilds:
    """Built expositions and scrape times shared by every worker of a hub, in ``<db_path>.metrics/``
    (mode 0700, checked like the fleet shelf: never served from a directory others could write).

    A scraper's connection does not stay with one worker (uvicorn closes an idle keep-alive
    connection after 5 s; Prometheus' interval is 15-60 s), so what one worker built, and when the
    scrapes of a scope came, must be seen by all of them. Per scope ``name`` (e.g. ``shard-0-4``):

    * ``<name>.gz``: the gzip exposition; its modification time is the time (epoch s) until which
      it may be served (set with ``os.utime``);
    * ``<name>.json``: ``{"times": [epoch s of the last scrapes], "cost": s of the last build}``.

    Every method swallows ``OSError`` (a full or read-only disk): the worker then builds itself.
    """

    def __init__(self, db_path):
        self.dir = db_path + ".metrics"

    def _path(self, name, ext):
        return os.path.join(self.dir, name + ext)

    def _ready(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        check_private_dir(self.dir)

    def _write(self, path, data, until=None):
        tmp = f"{path}.{os.getpid()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(tmp, flags, 0o600), "wb") as fp:
            fp.write(data)
        if until is not None:
            os.utime(tmp, (until, until))
        os.replace(tmp, path)

    def get(self, name, now=None):
        """The gzip bytes of scope ``name`` while still servable, else None."""
        path = self._path(name, ".gz")
        try:
            check_private_dir(self.dir)
            if os.stat(path).st_mtime <= (time.time() if now is None else now):
                return None
            with open(path, "rb") as fp:
                return fp.read()
        except OSError:
            return None

    def put(self, name, packed, until):
        """Keep ``packed`` for scope ``name``, servable until ``until`` (epoch s)."""
        try:
            self._ready()
            self._write(self._path(name, ".gz"), packed, until)
        except OSError as exc:
            _log.warning("cannot share a built exposition: %s", exc)

    def scraped(self, name, keep, now=None):
        """Record a scrape of ``name`` now; returns ``(its last ``keep`` scrape times, last build cost)``."""
        now = time.time() if now is None else now
        state = self.state(name)
        times = (state.get("times") or [])[-(keep - 1):] + [now]
        self._save(name, times, state.get("cost", 0.0))
        return times, float(state.get("cost", 0.0))

    def built(self, name, cost):
        """Record what the last build of ``name`` cost (s)."""
        self._save(name, self.state(name).get("times") or [], cost)

    def state(self, name):
        try:
            check_private_dir(self.dir)
            with open(self._path(name, ".json"), "rb") as fp:
                found = json.loads(fp.read())
            return found if isinstance(found, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, name, times, cost):
        try:
            self._ready()
            self._write(self._path(name, ".json"), json.dumps({"times": times, "cost": cost}).encode())
        except OSError as exc:
            _log.warning("cannot record a scrape: %s", exc)


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
        _connections[db_path] = conn
    rows = []
    for sql, params in scoped_queries(shard, of, server_id):
        cursor = conn.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        # dict(zip()) over plain tuples: dict(sqlite3.Row) took 1.0 s of a 2,500-server shard's 2.4 s.
        rows.append([dict(zip(columns, row)) for row in cursor.fetchall()])
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: a gzip member (mtime 0)
    parts = []
    length = exposition(*rows, hostname_label=hostname_label, sink=lambda data: parts.append(packer.compress(data)))
    parts.append(packer.flush())
    return b"".join(parts), length
