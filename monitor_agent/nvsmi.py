"""Pure parsing of ``nvidia-smi --query-*`` output (no I/O here).

Input is what ``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`` and
``--query-compute-apps=...`` print; output is plain dicts keyed by nvidia-smi field
names, with units implied by the field (MiB, W, °C, %, MHz). Every sentinel nvidia-smi
prints for a value it cannot give becomes ``None`` for that value only.
"""

import re

# Values nvidia-smi prints instead of a number or name. Anything in [brackets] is also one.
SENTINELS = frozenset(
    {"", "N/A", "ERR!", "Unknown Error", "Not Supported", "Insufficient Permissions", "-"}
)

# (report key, query names in order of preference, kind). The report key is the
# nvidia-smi name people know; the query names cover drivers that renamed a field.
GPU_FIELDS = (
    ("index", ("index",), "int"),
    ("uuid", ("uuid",), "str"),
    ("pci.bus_id", ("pci.bus_id",), "str"),
    # driver_version is deprecated from the 595 drivers on ("use kmd_version instead").
    ("driver_version", ("kmd_version", "driver_version"), "str"),
    ("persistence_mode", ("persistence_mode",), "bool"),
    ("utilization.gpu", ("utilization.gpu",), "num"),
    ("utilization.memory", ("utilization.memory",), "num"),
    ("memory.used", ("memory.used",), "int"),
    ("memory.total", ("memory.total",), "int"),
    ("memory.reserved", ("memory.reserved",), "int"),
    ("temperature.gpu", ("temperature.gpu",), "num"),
    ("temperature.memory", ("temperature.memory",), "num"),
    ("power.draw", ("power.draw",), "num"),
    ("power.draw.instant", ("power.draw.instant",), "num"),
    ("power.draw.average", ("power.draw.average",), "num"),
    ("power.limit", ("power.limit",), "num"),
    ("fan.speed", ("fan.speed",), "num"),
    ("clocks.sm", ("clocks.sm", "clocks.current.sm"), "int"),
    ("clocks.mem", ("clocks.mem", "clocks.current.memory"), "int"),
    ("pstate", ("pstate",), "str"),
    ("clocks_event_reasons.active", ("clocks_event_reasons.active", "clocks_throttle_reasons.active"), "hex"),
    ("ecc.errors.uncorrected.volatile.total", ("ecc.errors.uncorrected.volatile.total",), "int"),
    ("retired_pages.pending", ("retired_pages.pending",), "bool"),
    ("remapped_rows.pending", ("remapped_rows.pending",), "bool"),
    ("mig.mode.current", ("mig.mode.current",), "bool"),
    # Health: ECC, retired pages, row remapping (A100 and later), recovery action.
    ("mig.mode.pending", ("mig.mode.pending",), "bool"),
    ("ecc.mode.current", ("ecc.mode.current",), "bool"),
    ("ecc.mode.pending", ("ecc.mode.pending",), "bool"),
    ("ecc.errors.corrected.volatile.total", ("ecc.errors.corrected.volatile.total",), "int"),
    ("ecc.errors.corrected.aggregate.total", ("ecc.errors.corrected.aggregate.total",), "int"),
    ("ecc.errors.uncorrected.aggregate.total", ("ecc.errors.uncorrected.aggregate.total",), "int"),
    ("retired_pages.single_bit_ecc.count", ("retired_pages.single_bit_ecc.count", "retired_pages.sbe"), "int"),
    ("retired_pages.double_bit.count", ("retired_pages.double_bit.count", "retired_pages.dbe"), "int"),
    ("remapped_rows.correctable", ("remapped_rows.correctable",), "int"),
    ("remapped_rows.uncorrectable", ("remapped_rows.uncorrectable",), "int"),
    ("remapped_rows.failure", ("remapped_rows.failure",), "bool"),
    ("gpu_recovery_action", ("gpu_recovery_action",), "str"),
    # Clock event (throttle) reasons: the supported mask and time spent per reason (us since driver load).
    ("clocks_event_reasons.supported",
     ("clocks_event_reasons.supported", "clocks_throttle_reasons.supported"), "hex"),
    ("clocks_event_reasons_counters.sw_power_cap", ("clocks_event_reasons_counters.sw_power_cap",), "int"),
    ("clocks_event_reasons_counters.sync_boost", ("clocks_event_reasons_counters.sync_boost",), "int"),
    ("clocks_event_reasons_counters.sw_thermal_slowdown",
     ("clocks_event_reasons_counters.sw_thermal_slowdown",), "int"),
    ("clocks_event_reasons_counters.hw_thermal_slowdown",
     ("clocks_event_reasons_counters.hw_thermal_slowdown",), "int"),
    ("clocks_event_reasons_counters.hw_power_brake_slowdown",
     ("clocks_event_reasons_counters.hw_power_brake_slowdown",), "int"),
    # PCIe link, current vs max (max = the lower of what the GPU and the host slot allow).
    ("pcie.link.gen.current", ("pcie.link.gen.current",), "int"),
    ("pcie.link.gen.max", ("pcie.link.gen.max",), "int"),
    ("pcie.link.width.current", ("pcie.link.width.current",), "int"),
    ("pcie.link.width.max", ("pcie.link.width.max",), "int"),
    ("temperature.gpu.tlimit", ("temperature.gpu.tlimit",), "num"),
    # Media engines and capacity.
    ("utilization.encoder", ("utilization.encoder",), "num"),
    ("utilization.decoder", ("utilization.decoder",), "num"),
    ("encoder.stats.sessionCount", ("encoder.stats.sessionCount",), "int"),
    ("memory.free", ("memory.free",), "int"),
    # Last, so a product name holding ", " cannot shift the other columns.
    ("name", ("name",), "str"),
)

# process_name goes last: CSV is not quoted and paths may hold ", ", so everything after
# the third separator is the name.
APP_FIELDS = ("gpu_uuid", "pid", "used_gpu_memory", "process_name")

_BUS_ID = r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]"
# "GPU 0000:0B:00.0: GPU is lost", "...device handle for GPU 0000:0B:00.0: Unknown Error" and the
# spelling many drivers print without the space, "...device handle for GPU0000:17:00.0: ..."
# (NVIDIA/nvidia-container-toolkit#69, #846).
_LOST_LINE = re.compile(r"(?:^|\b)GPU\s*(" + _BUS_ID + r")(?=:|\s|$)")
_LOST_WORDS = re.compile(r"Unable to determine the device handle|GPU is lost|Unknown Error|"
                         r"Reboot the system|fallen off the bus", re.I)
_BAD_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')
_HELP_NAME = re.compile(r'"([A-Za-z0-9_.\[\]]+)"')

_TRUE = {"enabled", "yes", "on", "active", "true"}
_FALSE = {"disabled", "no", "off", "not active", "false"}


# Per-GPU states nvidia-smi prints in a value cell instead of data. "[GPU requires reset]"
# means the GPU hit an error (e.g. an uncontained ECC error, Xid 48/79) and must be reset.
CELL_STATES = {"[GPU requires reset]": "requires_reset", "[GPU is lost]": "lost"}


def cell_state(text):
    """The named per-GPU state a cell announces (``requires_reset``, ``lost``), else None."""
    return CELL_STATES.get(text.strip())


def parse_version(text):
    """``nvidia-smi --version`` output to ``{"driver_version", "cuda_version"}`` (str or None).

    Lines look like ``DRIVER version      : 590.48.01`` and ``CUDA Version        : 13.1``.
    """
    found = {"driver_version": None, "cuda_version": None}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or is_sentinel(value):
            continue
        key = key.strip().lower()
        if key == "driver version":
            found["driver_version"] = value.strip()[:64]
        elif key == "cuda version":
            found["cuda_version"] = value.strip()[:64]
    return found


def is_sentinel(text):
    """True for values nvidia-smi prints in place of data (``[N/A]``, ``ERR!``, ...)."""
    text = text.strip()
    return text in SENTINELS or (text.startswith("[") and text.endswith("]"))


def parse_value(text, kind):
    """One CSV cell (``nounits``) to a Python value of ``kind``; sentinels and junk → None.

    ``kind``: ``num`` (float, or int when integral), ``int``, ``hex`` (``0x...`` → int),
    ``bool`` (Enabled/Disabled, Yes/No), ``str``.
    """
    text = text.strip()
    if is_sentinel(text):
        return None
    if kind == "str":
        return text
    if kind == "bool":
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else None
    try:
        if kind == "hex":
            return int(text, 16)
        number = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    if kind == "int" or number.is_integer():
        return int(number)
    return number


def parse_help_query_gpu(text):
    """Names (and aliases) listed by ``nvidia-smi --help-query-gpu``, as a set of str."""
    names = set()
    for line in text.splitlines():
        if line.startswith('"'):
            names.update(_HELP_NAME.findall(line))
    return names


def choose_fields(supported=None, unsupported=()):
    """Pick the query name for each :data:`GPU_FIELDS` entry.

    ``supported`` is the set from :func:`parse_help_query_gpu` (None = unknown: try the
    first name); ``unsupported`` names were rejected by the driver. Returns a list of
    ``(report_key, query_name, kind)``.
    """
    chosen = []
    for key, names, kind in GPU_FIELDS:
        for name in names:
            if name in unsupported:
                continue
            if supported is None or name in supported:
                chosen.append((key, name, kind))
                break
    return chosen


def invalid_field(text):
    """The field named in ``Field "x" is not a valid field to query.``, else None."""
    match = _BAD_FIELD.search(text)
    return match.group(1) if match else None


def parse_gpu_rows(text, fields):
    """Parse ``--query-gpu`` output for ``fields`` (from :func:`choose_fields`).

    Returns ``(gpus, lost, other)``: ``gpus`` a list of dicts keyed by report key;
    ``lost`` a list of ``{"pci.bus_id", "message"}`` for error lines that name a GPU
    (``Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error``,
    ``... GPU is lost``); ``other`` the remaining unparseable lines.
    """
    gpus, lost, other = [], [], []
    n = len(fields)
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split(", ", n - 1)
        match = _LOST_LINE.search(line)
        if len(cells) == n and not (match and _LOST_WORDS.search(line)):
            gpu = {key: parse_value(cell, kind) for (key, _, kind), cell in zip(fields, cells)}
            states = {cell_state(cell) for cell in cells} - {None}
            if states:
                # "[GPU requires reset]" in its cells: a named state, not just nulls.
                gpu["state"] = "requires_reset" if "requires_reset" in states else sorted(states)[0]
            gpus.append(gpu)
            continue
        if match:
            lost.append({"pci.bus_id": match.group(1), "message": line.strip()[:1024]})
        else:
            other.append(line.strip()[:1024])
    return gpus, lost, other


def parse_compute_apps(text):
    """Parse ``--query-compute-apps=gpu_uuid,pid,used_gpu_memory,process_name`` output.

    Returns a list of ``{"gpu_uuid", "pid", "used_gpu_memory", "process_name"}``;
    ``pid`` / ``used_gpu_memory`` (MiB) are None for sentinels (``[N/A]`` on WDDM).
    Lines that do not have the four columns are skipped.
    """
    apps = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split(", ", 3)
        if len(cells) != 4:
            continue
        uuid, pid, mem, name = cells
        uuid = parse_value(uuid, "str")
        if uuid is None or not uuid.startswith(("GPU-", "MIG-")):
            continue
        apps.append(
            {
                "gpu_uuid": uuid,
                "pid": parse_value(pid, "int"),
                "used_gpu_memory": parse_value(mem, "int"),
                "process_name": name.strip()[:4096] if not is_sentinel(name) else None,
            }
        )
    return apps


# (state, pattern in nvidia-smi's output) for whole-tool failures, checked in order.
FAILURES = (
    ("driver_mismatch", re.compile(r"Driver/library version mismatch", re.I)),
    ("insufficient_permissions", re.compile(r"Insufficient Permissions", re.I)),
    ("no_devices", re.compile(r"No devices were found", re.I)),
    ("driver_not_loaded", re.compile(r"couldn't communicate with the NVIDIA driver|NVIDIA driver is not loaded", re.I)),
)


def classify_failure(returncode, text):
    """Name a failed nvidia-smi run: ``(state, message)``.

    ``state`` is one of ``driver_mismatch``, ``insufficient_permissions``,
    ``no_devices``, ``driver_not_loaded`` or ``error``; ``message`` is nvidia-smi's own
    first meaningful line (at most 500 chars), or the exit code when it printed nothing.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    message = lines[0][:500] if lines else f"nvidia-smi exited with code {returncode}"
    for state, pattern in FAILURES:
        if pattern.search(text):
            for line in lines:
                if pattern.search(line):
                    message = line[:500]
                    break
            return state, message
    return "error", message


# ``nvidia-smi -L``: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)" then, under MIG,
# "  MIG 3g.40gb     Device  0: (UUID: MIG-...)".
_L_GPU = re.compile(r"^GPU (\d+): (.*?) \(UUID: (GPU-[0-9A-Za-z-]+)\)\s*$")
_L_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[0-9A-Za-z/-]+)\)\s*$")


def parse_list_gpus(text):
    """``nvidia-smi -L`` to ``{gpu_index: {"uuid", "name", "mig": {mig_index: {"profile", "uuid"}}}}``.

    ``profile`` is the MIG profile name as printed (``3g.40gb``); ``mig`` is empty without MIG.
    """
    gpus, current = {}, None
    for line in text.splitlines():
        match = _L_GPU.match(line)
        if match:
            current = {"uuid": match.group(3), "name": match.group(2)[:256], "mig": {}}
            gpus[int(match.group(1))] = current
            continue
        match = _L_MIG.match(line)
        if match and current is not None:
            current["mig"][int(match.group(2))] = {"profile": match.group(1)[:64], "uuid": match.group(3)[:128]}
    return gpus


# First line of a MIG device row: "|  GPU  GI  CI  MIG | <memory> | SM  Unc | CE ENC ... |". The memory
# cell reads "11091MiB / 40448MiB", "N/A", or is blank: older drivers (R450-R550) print the compute
# instances (CI) of one GPU instance (GI) as merged cells, the memory and BAR1 cells only on the
# GI's first CI row (the NVIDIA MIG User Guide's `nvidia-smi mig -cci 0,0,0 -gi 1` example).
_TABLE_MIG_ROW = re.compile(r"^\|\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\|([^|]*)\|\s+(\d+)\s+(\S+)\s+\|")
_TABLE_MIG_MEMORY = re.compile(r"^\s*(\d+)MiB\s*/\s*(\d+)MiB\s*$")
_TABLE_PROC_ROW = re.compile(r"^\|\s+(\d+)\s+(\d+|N/A)\s+(\d+|N/A)\s+(\d+)\s+(\S+)\s+(.*?)\s+(\d+|N/A)(?:MiB)?\s*\|$")


def parse_mig_table(text):
    """The ``MIG devices:`` and ``Processes:`` boxes of plain ``nvidia-smi`` output.

    Returns ``(devices, processes)``: ``devices`` a list of ``{"gpu_index", "gpu_instance_id",
    "compute_instance_id", "mig_index", "memory.used", "memory.total", "sm_count"}``, one per MIG
    device (= compute instance, CI) in table order; ``processes`` a list of ``{"gpu_index",
    "gpu_instance_id", "compute_instance_id", "pid", "process_name", "used_gpu_memory"}`` (ids None
    for a GPU without MIG, printed ``N/A``).

    Memory (MiB, the first line of the row) belongs to the GPU instance (GI): every CI of a GI
    shares it. Where the driver prints it once for the GI (merged cells: the later CI rows of the
    GI have a blank memory cell), those CIs get the GI's values; ``N/A`` gives None. A CI row never
    takes the memory of another GI.
    """
    devices, processes = [], []
    section = None
    shared = {}  # (gpu, gi) -> (used, total) as printed on the GI's first row
    for line in text.splitlines():
        if "MIG devices:" in line:
            section = "mig"
            continue
        if "Processes:" in line:
            section = "proc"
            continue
        if section == "mig":
            match = _TABLE_MIG_ROW.match(line)
            if match:
                gpu, gi, ci, dev = (int(match.group(i)) for i in range(1, 5))
                cell = match.group(5)
                memory = _TABLE_MIG_MEMORY.match(cell)
                if memory:
                    used, total = int(memory.group(1)), int(memory.group(2))
                    shared[(gpu, gi)] = (used, total)
                elif cell.strip() == "":
                    used, total = shared.get((gpu, gi), (None, None))
                else:
                    used = total = None
                sms = match.group(6)
                devices.append({"gpu_index": gpu, "gpu_instance_id": gi, "compute_instance_id": ci, "mig_index": dev,
                                "memory.used": used, "memory.total": total, "sm_count": int(sms)})
        elif section == "proc":
            match = _TABLE_PROC_ROW.match(line)
            if match:
                gi, ci, mem = match.group(2), match.group(3), match.group(7)
                processes.append({
                    "gpu_index": int(match.group(1)),
                    "gpu_instance_id": int(gi) if gi.isdigit() else None,
                    "compute_instance_id": int(ci) if ci.isdigit() else None,
                    "pid": int(match.group(4)),
                    "process_name": match.group(6).strip()[:4096],
                    "used_gpu_memory": int(mem) if mem.isdigit() else None,
                })
    return devices, processes


def mig_devices(listing, devices):
    """Join :func:`parse_list_gpus` and :func:`parse_mig_table` output by GPU and MIG device index.

    Returns a list of ``{"gpu_index", "gpu_uuid", "mig_index", "uuid", "profile",
    "gpu_instance_id", "compute_instance_id", "memory.used", "memory.total", "sm_count"}``.
    """
    out = []
    for dev in devices:
        gpu = listing.get(dev["gpu_index"]) or {}
        named = (gpu.get("mig") or {}).get(dev["mig_index"]) or {}
        out.append(dict(dev, gpu_uuid=gpu.get("uuid"), uuid=named.get("uuid"), profile=named.get("profile")))
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The named (non-device) columns of ``topo -m``, in the order nvidia-smi prints them.
TOPO_AFFINITY_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
# Connection words of a ``topo -m`` cell (SOC is the pre-2017 name of SYS; NV# bonded NVLinks).
TOPO_LINK = re.compile(r"X|SYS|SOC|NODE|PHB|PXB|PIX|NV\d{1,3}")
# A NUMA node set as nvidia-smi prints it: "0", "0-1", "0,8,252-255".
_NUMA_SET = re.compile(r"\d{1,4}(?:[-,]\d{1,4}){0,63}")
_CPU_SET = re.compile(r"\d{1,5}(?:[-,]\d{1,5}){0,255}")
_GPU_COL = re.compile(r"GPU(\d{1,4})")


def numa_node_text(text):
    """``text`` when it is a NUMA node set (``0``, ``0-1``, ``0,8,252-255``), else None.

    A link word (``SYS``, ``NODE``, ``NV12``, ...), ``N/A`` or anything else is not a NUMA node.
    """
    text = (text or "").strip()
    return text if _NUMA_SET.fullmatch(text) else None


def _topo_columns(header):
    """Column names of a ``topo -m`` header line (tab-separated, or whitespace in pasted copies)."""
    if "\t" in header:
        return [c.strip() for c in header.strip(" \t").split("\t")]
    words, columns, i = header.split(), [], 0
    while i < len(words):
        for name in TOPO_AFFINITY_COLUMNS:
            parts = name.split()
            if words[i:i + len(parts)] == parts:
                columns.append(name)
                i += len(parts)
                break
        else:
            columns.append(words[i])
            i += 1
    return columns


def parse_topo(text):
    """``nvidia-smi topo -m`` to ``{"gpus": [...], "links": [...]}``; None when it is not a matrix.

    Columns are found by their header: every column before the named ones (``CPU Affinity``,
    ``NUMA Affinity``, ``GPU NUMA ID``) is a device, ``GPU<n>`` a GPU and any other name a NIC
    (``NIC0`` with a "NIC Legend", ``mlx5_0`` / ``mlx4_0`` without one). ``gpus``:
    ``{"index", "cpu_affinity", "numa_affinity", "gpu_numa_id"}`` per GPU row; a value that is not
    of its column's kind (a link word such as ``SYS`` in a NUMA column, ``N/A``, empty) is None,
    so a connection word is never stored as a NUMA node. ``links``: ``{"a", "b", "link"}`` for every
    GPU pair ``a < b`` with nvidia-smi's connection name (``NV4``: 4 bonded NVLinks, ``PIX``,
    ``PXB``, ``PHB``, ``NODE``, ``SYS``). NIC rows and columns are skipped. Cells are tab-separated
    as nvidia-smi prints them; a copy whose tabs became spaces (pasted into an issue) also parses.
    """
    lines = [_ANSI.sub("", line).rstrip("\n") for line in text.splitlines()]
    columns = None
    for line in lines:
        words = line.split()
        if "GPU0" in words and "X" not in words and not line.lstrip().startswith(("Legend", "NIC Legend")):
            columns = _topo_columns(line)
            break
    if columns is None:
        return None
    named = [c for c in columns if c in TOPO_AFFINITY_COLUMNS]
    devices = columns[:columns.index(named[0])] if named else list(columns)
    gpu_cols = {i: int(m.group(1)) for i, c in enumerate(devices) for m in [_GPU_COL.fullmatch(c)] if m}
    checks = {"CPU Affinity": _CPU_SET, "NUMA Affinity": _NUMA_SET, "GPU NUMA ID": _NUMA_SET}
    gpus, links = [], []
    for line in lines:
        match = re.match(r"^GPU(\d{1,4})(?:\t|\s+(?=\S))", line)
        if not match:
            continue
        index = int(match.group(1))
        if "\t" in line:
            cells = [c.strip() for c in line.split("\t")[1:]]
        else:
            cells = line.split()[1:]
        device_cells, rest = cells[:len(devices)], cells[len(devices):]
        if len(device_cells) < len(devices) or not all(TOPO_LINK.fullmatch(c) for c in device_cells if c):
            continue  # not a matrix row (a misaligned or cut line)
        for col, other in gpu_cols.items():
            cell = device_cells[col]
            if other > index and cell not in ("", "X"):
                links.append({"a": index, "b": other, "link": cell[:16]})
        values = [c for c in rest if c != ""]
        gpu = {"index": index, "cpu_affinity": None, "numa_affinity": None, "gpu_numa_id": None}
        for name, value in zip(named, values):
            if checks[name].fullmatch(value):
                key = {"CPU Affinity": "cpu_affinity", "NUMA Affinity": "numa_affinity",
                       "GPU NUMA ID": "gpu_numa_id"}[name]
                gpu[key] = value[:256]
        gpus.append(gpu)
    return {"gpus": gpus, "links": links} if gpus else None
