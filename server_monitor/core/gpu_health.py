"""GPU health: clock event (throttle) reasons by name and the per-GPU health badge.

Pure functions over one GPU's latest values (``gpus`` columns, see ``docs/schema.md``);
``store.py`` calls :func:`assess` for every GPU of every report, ``alerts.py`` uses the
same reason names.
"""

# Bits of nvidia-smi's clocks_event_reasons.active / NVML's nvmlClocksEventReason* constants
# (nvml.h: GpuIdle 0x1, ApplicationsClocksSetting 0x2, SwPowerCap 0x4, HwSlowdown 0x8,
# SyncBoost 0x10, SwThermalSlowdown 0x20, HwThermalSlowdown 0x40, HwPowerBrakeSlowdown 0x80,
# DisplayClockSetting 0x100). Names are nvidia-smi's ``clocks_event_reasons.<name>`` fields.
CLOCK_EVENT_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
# Reasons that mean the hardware is protecting itself (heat, power brake): alerted.
HW_SLOWDOWN_MASK = 0x8 | 0x20 | 0x40 | 0x80

# A GPU counts as busy with any compute process or at least this utilization.gpu,
# utilization.encoder or utilization.decoder (%): an NVENC at 100 % with the SMs at 8 % is busy.
BUSY_UTILIZATION = 10


def reason_names(mask):
    """Names of the set bits of a clocks_event_reasons bitmask, e.g. ``["sw_power_cap"]``.

    ``mask``: int or None. Unknown bits are named ``0x...``. Returns [] for None or 0.
    """
    if not mask:
        return []
    names, known = [], 0
    for bit, name in CLOCK_EVENT_REASONS:
        known |= bit
        if mask & bit:
            names.append(name)
    if mask & ~known:
        names.append(hex(mask & ~known))
    return names


def is_busy(process_count, util_gpu, util_enc=None, util_dec=None):
    """True when the GPU has compute processes or any engine at or above :data:`BUSY_UTILIZATION`."""
    return bool(process_count) or any((u or 0) >= BUSY_UTILIZATION for u in (util_gpu, util_enc, util_dec))


def pcie_degraded(row):
    """``"gen 3/5"`` / ``"x8/x16"`` text when the link runs below its max, else None.

    Idle GPUs lower their link generation to save power, so callers judge this only for
    busy GPUs. ``row``: a dict with the ``pcie_link_*`` columns.
    """
    parts = []
    gen, gen_max = row.get("pcie_link_gen_current"), row.get("pcie_link_gen_max")
    width, width_max = row.get("pcie_link_width_current"), row.get("pcie_link_width_max")
    if gen and gen_max and gen < gen_max:
        parts.append(f"PCIe gen {gen} of {gen_max}")
    if width and width_max and width < width_max:
        parts.append(f"PCIe x{width} of x{width_max}")
    return ", ".join(parts) or None


def mode_name(value):
    """nvidia-smi's word for a stored mode flag (``mig.mode.*``, ``ecc.mode.*``): 1 ``Enabled``,
    0 ``Disabled``, None None."""
    if value is None:
        return None
    return "Enabled" if value else "Disabled"


def mode_change(current, pending):
    """``"Enabled → Disabled"`` when a mode's pending value (applied at the next GPU reset or
    reboot) differs from its current one; None when they agree or either is unknown. Values:
    the stored 0/1 flags of ``mig_mode`` / ``mig_mode_pending`` or ``ecc_mode`` / ``ecc_mode_pending``."""
    if current is None or pending is None or bool(current) == bool(pending):
        return None
    return f"{mode_name(current)} → {mode_name(pending)}"


def assess(row):
    """Health badge of one GPU: ``(level, reasons)``.

    ``level``: ``critical`` (uncorrectable ECC errors since driver load, row remap pending
    or failed, page retirement pending, ``[GPU requires reset]``, a recovery action asked by
    the driver), ``warning`` (hardware slowdown or thermal throttling now, a degraded PCIe
    link on a busy GPU, AMD XGMI links down, ECC or MIG mode change pending, named by
    :func:`mode_change`: "MIG mode change pending (Enabled → Disabled after GPU reset)")
    or ``ok``.
    ``reasons``: short English phrases, most severe first. ``row``: the ``gpus`` columns of
    the GPU (``store._gpu_values`` output plus ``busy``).
    """
    critical, warning = [], []
    if row.get("gpu_state") == "requires_reset":
        critical.append("GPU requires reset")
    dbe = row.get("ecc_errors_uncorrected_volatile_total")
    if dbe:
        critical.append(f"{dbe} uncorrectable ECC errors")
    if row.get("remapped_rows_failure"):
        critical.append("row remapping failed (RMA)")
    if row.get("remapped_rows_pending"):
        critical.append("row remapping pending (reset needed)")
    if row.get("retired_pages_pending"):
        critical.append("page retirement pending (reset needed)")
    action = row.get("gpu_recovery_action")
    if action and action.lower() not in ("none", "n/a"):
        critical.append(f"recovery action: {action}")
    active = row.get("clocks_event_reasons_active") or 0
    slow = [name for name in reason_names(active & HW_SLOWDOWN_MASK)]
    if slow:
        warning.append("throttled: " + ", ".join(slow))
    if row.get("busy"):
        degraded = pcie_degraded(row)
        if degraded:
            warning.append(degraded + " while busy")
    mig_change = mode_change(row.get("mig_mode"), row.get("mig_mode_pending"))
    if mig_change:
        warning.append(f"MIG mode change pending ({mig_change} after GPU reset)")
    links_down = row.get("xgmi_links_down")
    if links_down:
        warning.append(f"{links_down} XGMI link{'s' if links_down > 1 else ''} down")
    ecc_change = mode_change(row.get("ecc_mode"), row.get("ecc_mode_pending"))
    if ecc_change:
        warning.append(f"ECC mode change pending ({ecc_change} after reboot)")
    if critical:
        return "critical", critical + warning
    if warning:
        return "warning", warning
    return "ok", []


def canonical_bus_id(bus):
    """One spelling of a PCI bus id (alert keys, the fleet document's lost cells): ``00000000:6D:00.0``.

    nvidia-smi's lost-GPU line says ``0000:6D:00.0`` (or ``GPU0000:6d:00.0``) where its
    ``pci.bus_id`` column says ``00000000:6D:00.0``; both name the same GPU. Text that is not
    a bus id is returned as it is.
    """
    text = str(bus).strip()
    parts = text.split(":")
    if len(parts) == 3 and all(parts):
        domain = parts[0][-8:]
        if all(c in "0123456789abcdefABCDEF" for c in domain):
            return f"{domain.zfill(8)}:{parts[1]}:{parts[2]}".upper()
    return text
