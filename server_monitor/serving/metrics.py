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

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

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
    memory_used_bytes, memory_total_bytes, swap_used_bytes, net_rx_bps, net_tx_bps, gpu_count, gpus_busy
FROM server_state
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
FROM gpus g WHERE g.present
"""
MIG_SQL = """
SELECT m.server_id, m.gpu_index, g.uuid, g.name, g.pci_bus_id, m.gpu_instance_id, m.profile, m.memory_used_mib,
    m.memory_total_mib, m.memory_total_mib - m.memory_used_mib AS fb_free_mib, m.process_count
FROM mig_devices m JOIN gpus g ON g.id = m.gpu_id WHERE g.present AND m.gpu_instance_id IS NOT NULL
"""
DISKS_SQL = """
SELECT d.server_id, d.mountpoint, d.used_bytes, d.total_bytes FROM servers s
JOIN disk_samples d ON d.server_id = s.id AND d.ts = s.last_ts
"""


class FleetCollector(Collector):
    """Builds the metric families from rows read by the caller (``servers``, ``gpus``, ``disks``)."""

    def __init__(self, servers, gpus, disks, migs=()):
        self.servers, self.gpus, self.disks, self.migs = servers, gpus, disks, migs

    def collect(self):
        live = {s["id"]: s for s in self.servers if s["state"] in LIVE_STATES}
        up = GaugeMetricFamily("server_monitor_up", "1 when the host reported recently (online), else 0.",
                               labels=["Hostname", "server_id"])
        age = GaugeMetricFamily("server_monitor_last_report_age_seconds", "Seconds since the host's last report.",
                                labels=["Hostname", "server_id"])
        for s in self.servers:
            up.add_metric([s["hostname"], str(s["id"])], 1 if s["id"] in live else 0)
            age.add_metric([s["hostname"], str(s["id"])], s["seen_age_s"])
        yield up
        yield age
        for metric, column, help_text in HOST_METRICS:
            family = GaugeMetricFamily(metric, help_text, labels=["Hostname", "server_id"])
            for s in live.values():
                if s[column] is not None:
                    family.add_metric([s["hostname"], str(s["id"])], s[column])
            yield family
        amd = [g for g in self.gpus if g.get("vendor") == "amd"]
        other = [g for g in self.gpus if g.get("vendor") != "amd"]
        for metric, column, help_text in GPU_METRICS:
            family = GaugeMetricFamily(metric, help_text, labels=GPU_LABELS)
            # The product's own series (not DCGM's) cover every vendor under one label set.
            for g in (self.gpus if metric.startswith("server_monitor_") else other):
                server = live.get(g["server_id"])
                if server is None or g[column] is None:
                    continue
                vendor = g.get("vendor") or "nvidia"
                family.add_metric([str(g["gpu_index"]), g["uuid"], f"{vendor}{g['gpu_index']}", g["name"] or "",
                                   server["hostname"], g["pci_bus_id"] or "", vendor, "", ""], g[column])
            for mig_metric, mig_column in MIG_METRICS:
                if mig_metric != metric:
                    continue
                for m in self.migs:
                    server = live.get(m["server_id"])
                    if server is None or m[mig_column] is None:
                        continue
                    family.add_metric([str(m["gpu_index"]), m["uuid"], f"nvidia{m['gpu_index']}", m["name"] or "",
                                       server["hostname"], m["pci_bus_id"] or "", "nvidia",
                                       str(m["gpu_instance_id"]), m["profile"] or ""], m[mig_column])
            yield family
        families = {}
        for metric, column, help_text, extra in AMD_METRICS:
            if metric not in families:
                families[metric] = GaugeMetricFamily(metric, help_text, labels=AMD_LABELS)
            for g in amd:
                server = live.get(g["server_id"])
                if server is None or g[column] is None:
                    continue
                families[metric].add_metric(
                    [str(g["gpu_index"]), g["uuid"], g["name"] or "", server["hostname"], g["pci_bus_id"] or "",
                     g["compute_partition"] or "", g["memory_partition"] or "", extra.get("clock_type", "")],
                    g[column])
        yield from families.values()
        used = GaugeMetricFamily("server_monitor_filesystem_used_bytes", "Filesystem space used.",
                                 labels=["Hostname", "mountpoint"])
        size = GaugeMetricFamily("server_monitor_filesystem_size_bytes", "Filesystem size.",
                                 labels=["Hostname", "mountpoint"])
        for d in self.disks:
            server = live.get(d["server_id"])
            if server is not None:
                used.add_metric([server["hostname"], d["mountpoint"]], d["used_bytes"] or 0)
                size.add_metric([server["hostname"], d["mountpoint"]], d["total_bytes"] or 0)
        yield used
        yield size


def exposition(servers, gpus, disks, migs=()):
    """Prometheus text format (bytes) for the given rows (lists of dicts; ``migs`` from :data:`MIG_SQL`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(servers, gpus, disks, migs))
    return generate_latest(registry)
