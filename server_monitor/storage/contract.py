"""The agent report contract (version 1): a declarative spec and a total validator.

``validate_report(obj)`` either returns a normalised copy of the report (every known key
present, missing optional values as ``None``, unknown keys dropped) or raises
:class:`ContractError` naming the first bad field by its path, e.g.
``gpus[1].utilization.gpu: expected a number from 0 to 100, got 140``.

The validator never raises anything else for any JSON value, so ingest can map
``ContractError`` to HTTP 400 and treat every other exception as a bug. ``docs/api.md``
documents the same spec (generated from :data:`REPORT` by ``scripts/contract_doc.py``).
"""

import math
import re
import threading

from monitor_agent import textrule
from . import groups as _groups

# Which characters no string may carry: the rule the agent cleans with (one module, see
# docs/security.md N2): control characters (C0 but tab and newline, DEL, C1), bidi controls, invisible
# marks (see docs/security.md L10) and lone surrogates. In a free-text field each one is replaced by U+FFFD and the
# field named in the answer's ``replaced`` list; an identity field (``identity=True``, or one
# with a pattern or a list of choices) is refused.
_UNSAFE_CHARS = textrule.UNSAFE
# Host names as RFC 1123 spells them (plus '_', common on lab machines): ASCII letters,
# digits, '.', '-' and '_'. No spaces, newlines or look-alike letters from other scripts.
HOSTNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# A host group name (server_monitor/storage/groups.py; the agent's config checks the same pattern).
GROUP_PATTERN = _groups.GROUP_PATTERN

CONTRACT_VERSION = 1


class _Nulled(threading.local):
    """Messages for soft fields nulled (``items``) and free-text fields cleaned (``replaced``)
    during the current :func:`validate_report` call."""

    def __init__(self):
        self.items = []
        self.replaced = []


_NULLED = _Nulled()


class ContractError(ValueError):
    """A report that breaks the contract; ``str()`` is the message sent to the agent."""

    def __init__(self, path, message):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


def _describe(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Bad(Exception):
    """A scalar value's problem without its path; the enclosing object or array adds the path
    (building every field's path string up front cost more than checking the field)."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class _Replaced(_Bad):
    """Not an error: a free-text value that was cleaned by the text rule. ``value`` is the
    cleaned string to keep; the enclosing object records ``message`` with the field's path."""

    def __init__(self, value, message):
        super().__init__(message)
        self.value = value


def _note_replaced(path, message):
    _NULLED.replaced.append(f"{path}: {message}"[:300])


_MISSING = object()


class Spec:
    """Base of the field specs. ``doc`` and ``unit`` feed the API documentation.

    Scalar specs (``leaf = True``) implement ``_leaf(value)``, which returns the checked value
    or raises :class:`_Bad`; containers implement ``_check(value, path)``.
    """

    type_name = "value"
    leaf = False

    def __init__(self, required=False, nullable=True, doc="", unit="", soft=False):
        self.required = required
        self.nullable = nullable
        self.doc = doc
        self.unit = unit
        # soft: a bad value is replaced by null (and named in the report's ``nulled`` list)
        # instead of refusing the whole report.
        self.soft = soft

    def check(self, value, path):
        """The checked (normalised) ``value``; raises :class:`ContractError` naming ``path``."""
        if value is None:
            if not self.nullable:
                raise ContractError(path, f"must not be null (expected {self.type_name})")
            return None
        return self._check(value, path)

    def _check(self, value, path):
        try:
            return self._leaf(value)
        except _Replaced as cleaned:
            _note_replaced(path, cleaned.message)
            return cleaned.value
        except _Bad as bad:
            raise ContractError(path, bad.message) from None

    def _leaf(self, value):  # pragma: no cover - abstract
        raise NotImplementedError

    def range_text(self):
        return ""


class Num(Spec):
    """A JSON number (bool excluded), finite, within ``[min, max]``."""

    type_name = "number"
    leaf = True

    def __init__(self, min=None, max=None, integer=False, **kw):
        super().__init__(**kw)
        self.min, self.max, self.integer = min, max, integer
        if integer:
            self.type_name = "integer"

    def _leaf(self, value):
        kind = type(value)
        if kind is not int and (kind is bool or not isinstance(value, (int, float))):
            raise _Bad(f"expected {self.type_name}, got {_describe(value)}")
        if kind is not int and isinstance(value, float):
            if not math.isfinite(value):
                raise _Bad(f"expected a finite {self.type_name}")
            if self.integer:
                if not value.is_integer():
                    raise _Bad(f"expected integer, got {_describe(value)}")
                value = int(value)
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise _Bad(f"expected {self.type_name} {self.range_text()}, got {_describe(value)}")
        return value

    def range_text(self):
        if self.min is not None and self.max is not None:
            return f"from {self.min:g} to {self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        if self.max is not None:
            return f"<= {self.max:g}"
        return ""


def Int(min=None, max=None, **kw):
    """An integral number (``3`` or ``3.0``), returned as ``int``."""
    return Num(min=min, max=max, integer=True, **kw)


class Str(Spec):
    """A string of at most ``maxlen`` characters; optional regex or choices.

    Characters unsafe by :mod:`monitor_agent.textrule` (controls, bidi, invisible marks, lone
    surrogates): an identity string (``identity=True``, or one with a ``pattern``) and a value
    from ``choices`` are refused; free text has each one replaced by U+FFFD (same length) and is kept, the field
    named in the answer's ``replaced`` list (see docs/security.md N2).
    """

    type_name = "string"
    leaf = True

    def __init__(self, maxlen=256, minlen=0, pattern=None, choices=None, identity=False, **kw):
        super().__init__(**kw)
        self.maxlen, self.minlen = maxlen, minlen
        self.pattern = re.compile(pattern) if pattern else None
        self.choices = tuple(choices) if choices else None
        self.identity = bool(identity or pattern)  # a value from a fixed list is refused too (below)

    def _leaf(self, value):
        if type(value) is not str and not isinstance(value, str):
            raise _Bad(f"expected string, got {_describe(value)}")
        if len(value) > self.maxlen:
            raise _Bad(f"longer than {self.maxlen} characters ({len(value)})")
        if len(value) < self.minlen:
            raise _Bad(f"shorter than {self.minlen} characters")
        unsafe = _UNSAFE_CHARS.search(value)
        if unsafe:
            char = unsafe.group()
            if "\ud800" <= char <= "\udfff":
                what = f"is not valid Unicode (lone surrogate {textrule.describe(char)})"
            elif char == "\x00":
                what = "contains a NUL character (U+0000)"
            else:
                what = f"contains the control character {textrule.describe(char)}"
            if self.identity or self.choices is not None:
                raise _Bad(what)
            raise _Replaced(textrule.clean(value), f"{what}; replaced by U+FFFD")
        if self.choices is not None and value not in self.choices:
            raise _Bad(f"expected one of {', '.join(self.choices)}, got {_describe(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _Bad(f"does not match {self.pattern.pattern}")
        return value

    def range_text(self):
        if self.choices:
            return "one of " + ", ".join(f"`{c}`" for c in self.choices)
        return f"≤ {self.maxlen} chars"


class Bool(Spec):
    """``true`` or ``false``."""

    type_name = "boolean"
    leaf = True

    def _leaf(self, value):
        if not isinstance(value, bool):
            raise _Bad(f"expected boolean, got {_describe(value)}")
        return value


class Obj(Spec):
    """A JSON object with known ``fields``; unknown keys are ignored."""

    type_name = "object"

    def __init__(self, fields, **kw):
        super().__init__(**kw)
        self.fields = fields
        self._plan = None

    def _check(self, value, path):
        if not isinstance(value, dict):
            raise ContractError(path, f"expected object, got {_describe(value)}")
        plan = self._plan
        if plan is None:
            plan = self._plan = tuple((key, spec, spec.leaf) for key, spec in self.fields.items())
        out = {}
        get = value.get
        for key, spec, leaf in plan:
            item = get(key, _MISSING)
            if item is None or item is _MISSING:
                if item is _MISSING and spec.required:
                    raise ContractError(f"{path}.{key}" if path else key, "is required")
                if item is _MISSING or spec.nullable:
                    out[key] = None
                    continue
                error = ContractError(f"{path}.{key}" if path else key,
                                      f"must not be null (expected {spec.type_name})")
            elif leaf:
                try:
                    out[key] = spec._leaf(item)
                    continue
                except _Replaced as cleaned:
                    out[key] = cleaned.value
                    _note_replaced(f"{path}.{key}" if path else key, cleaned.message)
                    continue
                except _Bad as bad:
                    error = ContractError(f"{path}.{key}" if path else key, bad.message)
            else:
                try:
                    out[key] = spec._check(item, f"{path}.{key}" if path else key)
                    continue
                except ContractError as exc:
                    error = exc
            if not spec.soft:
                raise error
            out[key] = None
            _NULLED.items.append(str(error)[:300])
        return out


class List(Spec):
    """A JSON array of at most ``max_items`` items, each checked by ``items``."""

    type_name = "array"

    def __init__(self, items, max_items, **kw):
        super().__init__(**kw)
        self.items, self.max_items = items, max_items

    def _check(self, value, path):
        if not isinstance(value, list):
            raise ContractError(path, f"expected array, got {_describe(value)}")
        if len(value) > self.max_items:
            raise ContractError(path, f"more than {self.max_items} items ({len(value)})")
        return [self.items.check(item, f"{path}[{i}]") for i, item in enumerate(value)]

    def range_text(self):
        return f"≤ {self.max_items} items"


def _pct(doc, source):
    return Num(0, 100, doc=doc, unit=f"% ({source})")


BYTES = 2**62
MIB = 2**40

# Collector states the agent reports by name (see docs/api.md for their meaning).
GPU_STATES = (
    "ok",
    "not_installed",
    "gpu_lost",
    "driver_mismatch",
    "no_devices",
    "driver_not_loaded",
    "insufficient_permissions",
    "timeout",
    "busy",
    "error",
)

# Per-GPU states printed by nvidia-smi in place of values.
GPU_CELL_STATES = ("requires_reset", "lost")

HOST = Obj(
    {
        "machine_id": Str(128, pattern=r"[A-Za-z0-9_.:-]+", doc="/etc/machine-id; stable host identity"),
        "hostname": Str(253, minlen=1, required=True, nullable=False, pattern=HOSTNAME_PATTERN,
                        doc="socket.gethostname(); ASCII letters, digits, '.', '-', '_'"),
        "os": Str(256, doc="OS name and version, from /etc/os-release PRETTY_NAME"),
        "kernel": Str(256, doc="platform.release()"),
        "arch": Str(64, doc="platform.machine()"),
        "cpu_model": Str(256, doc="/proc/cpuinfo 'model name'"),
        "cpu_count": Int(1, 65536, doc="logical CPUs, psutil.cpu_count()"),
        "boot_time": Num(0, 1e11, doc="psutil.boot_time()", unit="epoch s"),
        "agent_version": Str(64, doc="agent release"),
    },
    required=True,
    nullable=False,
)

CPU = Obj(
    {
        "percent": Num(0, 100, doc="busy share over the whole report interval (psutil counter delta)", unit="%"),
        "load_1": Num(0, 1e6, doc="os.getloadavg()[0]"),
        "load_5": Num(0, 1e6, doc="os.getloadavg()[1]"),
        "load_15": Num(0, 1e6, doc="os.getloadavg()[2]"),
    }
)

MEMORY = Obj(
    {
        "total_bytes": Int(0, BYTES, doc="psutil.virtual_memory().total", unit="B"),
        "used_bytes": Int(0, BYTES, doc="total - available", unit="B"),
        "swap_total_bytes": Int(0, BYTES, doc="psutil.swap_memory().total", unit="B"),
        "swap_used_bytes": Int(0, BYTES, doc="psutil.swap_memory().used", unit="B"),
    }
)

NETWORK = Obj(
    {
        "rx_bytes_per_s": Num(0, 1e13, doc="receive rate over the interval, physical NICs only", unit="B/s"),
        "tx_bytes_per_s": Num(0, 1e13, doc="transmit rate over the interval, physical NICs only", unit="B/s"),
    }
)

DISK = Obj(
    {
        "mountpoint": Str(1024, minlen=1, required=True, nullable=False, doc="mount point"),
        "device": Str(1024, doc="block device or pool name"),
        "fstype": Str(64, doc="filesystem type"),
        "total_bytes": Int(0, BYTES, doc="psutil.disk_usage().total", unit="B"),
        "used_bytes": Int(0, BYTES, doc="psutil.disk_usage().used", unit="B"),
        "health": Str(32, doc="ZFS pool health (zpool list), else absent"),
    },
    nullable=False,  # a list item must be an object
)

TEMPERATURE = Obj(
    {
        "chip": Str(64, minlen=1, required=True, nullable=False, pattern=r"[A-Za-z0-9_.:#-]+",
                    doc="hwmon chip: the hwmonN/name file (coretemp, k10temp, nvme, acpitz, …), '#2', '#3' "
                        "added for a second, third chip of that name"),
        "label": Str(64, doc="tempN_label (e.g. 'Package id 0', 'Composite'), else 'tempN'"),
        "current_c": Num(-60, 250, soft=True, doc="tempN_input / 1000", unit="°C"),
        "high_c": Num(-60, 250, soft=True, doc="tempN_max / 1000", unit="°C"),
        "critical_c": Num(-60, 250, soft=True, doc="tempN_crit / 1000", unit="°C"),
    },
    nullable=False,  # a list item must be an object
)

LOST_GPU = Obj(
    {
        "pci.bus_id": Str(64, identity=True, doc="bus id named in nvidia-smi's error line"),
        "message": Str(1024, doc="nvidia-smi's error line"),
    },
    nullable=False,  # a list item must be an object
)

GPU_STATUS = Obj(
    {
        "state": Str(32, choices=GPU_STATES, doc="collector state by name"),
        "message": Str(4096, doc="nvidia-smi's own error text, when not ok"),
        "lost": List(LOST_GPU, 64, doc="GPUs nvidia-smi could not read this time"),
        "stale": Bool(doc="true when the GPU values are from an earlier collection"),
        "age_s": Num(0, 86400, soft=True, unit="s",
                     doc="with stale: how old the GPU values are (a slow nvidia-smi finished after the last report)"),
    }
)

GPU_VENDORS = ("nvidia", "amd", "intel")

GPU = Obj(
    {
        "index": Int(0, 1023, doc="nvidia-smi index; AMD/Intel: position in PCI bus order among the vendor's GPUs "
                                  "(ROCR_VISIBLE_DEVICES / ZE_AFFINITY_MASK numbering)"),
        "uuid": Str(128, identity=True, doc="identity of the GPU: nvidia-smi uuid; AMD `GPU-<unique_id>` (as rocminfo), "
                             "else the PCI bus id"),
        "vendor": Str(16, choices=GPU_VENDORS, doc="who made it; absent (null) from older agents = nvidia"),
        "name": Str(256, doc="nvidia-smi name; AMD product_name or libdrm amdgpu.ids; Intel pci.ids"),
        "pci.bus_id": Str(64, identity=True, doc="nvidia-smi pci.bus_id; AMD/Intel the sysfs PCI address (0000:05:00.0)"),
        "driver_version": Str(64, doc="nvidia-smi driver_version; AMD/Intel /sys/module/<driver>/version"),
        "utilization.gpu": _pct("kernel duty cycle; null under MIG", "utilization.gpu"),
        "utilization.memory": _pct("memory controller duty cycle; null under MIG", "utilization.memory"),
        "memory.used": Int(0, MIB, doc="nvidia-smi memory.used", unit="MiB"),
        "memory.total": Int(0, MIB, doc="nvidia-smi memory.total", unit="MiB"),
        "memory.reserved": Int(0, MIB, doc="nvidia-smi memory.reserved", unit="MiB"),
        "temperature.gpu": Num(-100, 250, doc="nvidia-smi temperature.gpu", unit="°C"),
        "temperature.memory": Num(-100, 250, doc="nvidia-smi temperature.memory (HBM); AMD hwmon `mem`",
                                  unit="°C"),
        "temperature.junction": Num(-100, 250, doc="AMD hwmon `junction` (hotspot), Intel xe `pkg`; NVIDIA null",
                                    unit="°C"),
        "power.draw": Num(0, 10000, doc="nvidia-smi power.draw", unit="W"),
        "power.draw.instant": Num(0, 10000, doc="nvidia-smi power.draw.instant", unit="W"),
        "power.draw.average": Num(0, 10000, doc="nvidia-smi power.draw.average", unit="W"),
        "power.limit": Num(0, 10000, doc="nvidia-smi power.limit", unit="W"),
        "fan.speed": Num(0, 1000, doc="nvidia-smi fan.speed (may exceed 100); null when fanless", unit="%"),
        "clocks.sm": Int(0, 100000, doc="nvidia-smi clocks.sm", unit="MHz"),
        "clocks.mem": Int(0, 100000, doc="nvidia-smi clocks.mem", unit="MHz"),
        "pstate": Str(8, doc="nvidia-smi pstate (P0..P15)"),
        "clocks_event_reasons.active": Int(0, 2**63 - 1, doc="bitmask (clocks_throttle_reasons.active on old drivers)"),
        "ecc.errors.uncorrected.volatile.total": Int(0, 2**62, doc="since last driver load; AMD: amd-smi "
                                                     "metric --ecc total_uncorrectable_count (where installed)"),
        "retired_pages.pending": Bool(doc="nvidia-smi retired_pages.pending (Yes/No)"),
        "remapped_rows.pending": Bool(doc="nvidia-smi remapped_rows.pending (Yes/No)"),
        "mig.mode.current": Bool(doc="nvidia-smi mig.mode.current (Enabled/Disabled)"),
        "persistence_mode": Bool(doc="nvidia-smi persistence_mode (Enabled/Disabled)"),
        "compute_partition": Str(16, pattern=r"[A-Z0-9]{2,16}",
                                 doc="AMD MI300 current_compute_partition (SPX, DPX, QPX, CPX)"),
        "memory_partition": Str(16, pattern=r"[A-Z0-9]{2,16}",
                                doc="AMD MI300 current_memory_partition (NPS1, NPS4)"),
        # Health and capacity fields (issue 15). Soft: a bad value nulls that field only.
        "state": Str(32, choices=GPU_CELL_STATES, soft=True,
                     doc="per-GPU state nvidia-smi printed in its cells (`[GPU requires reset]`); null = normal"),
        "cuda_version": Str(64, soft=True, doc="CUDA Version from nvidia-smi --version"),
        "mig.mode.pending": Bool(soft=True, doc="nvidia-smi mig.mode.pending: the mode after the next GPU reset"),
        "ecc.mode.current": Bool(soft=True, doc="nvidia-smi ecc.mode.current (Enabled/Disabled)"),
        "ecc.mode.pending": Bool(soft=True, doc="nvidia-smi ecc.mode.pending (after the next reboot)"),
        "ecc.errors.corrected.volatile.total": Int(0, 2**62, soft=True, doc="single-bit ECC errors since driver load"),
        "ecc.errors.corrected.aggregate.total": Int(0, 2**62, soft=True, doc="single-bit ECC errors, GPU lifetime"),
        "ecc.errors.uncorrected.aggregate.total": Int(0, 2**62, soft=True,
                                                      doc="double-bit ECC errors, GPU lifetime"),
        "retired_pages.single_bit_ecc.count": Int(0, 2**31, soft=True,
                                                  doc="pages retired for single-bit errors (pre-A100)"),
        "retired_pages.double_bit.count": Int(0, 2**31, soft=True, doc="pages retired for double-bit errors (pre-A100)"),
        "remapped_rows.correctable": Int(0, 2**31, soft=True, doc="rows remapped for correctable errors (A100+)"),
        "remapped_rows.uncorrectable": Int(0, 2**31, soft=True, doc="rows remapped for uncorrectable errors"),
        "remapped_rows.failure": Bool(soft=True, doc="a row remapping failed: the GPU needs service (RMA)"),
        "gpu_recovery_action": Str(64, soft=True, doc="nvidia-smi gpu_recovery_action (None, GPU Reset, Node Reboot, ...)"),
        "clocks_event_reasons.supported": Int(0, 2**63 - 1, soft=True, doc="bitmask of the reasons this GPU reports"),
        "clocks_event_reasons_counters.sw_power_cap": Int(0, 2**63 - 1, soft=True, unit="µs",
                                                          doc="time clocks were held by the power cap since driver load"),
        "clocks_event_reasons_counters.sync_boost": Int(0, 2**63 - 1, soft=True, unit="µs",
                                                        doc="time held by sync boost"),
        "clocks_event_reasons_counters.sw_thermal_slowdown": Int(0, 2**63 - 1, soft=True, unit="µs",
                                                                 doc="time held by software thermal slowdown"),
        "clocks_event_reasons_counters.hw_thermal_slowdown": Int(0, 2**63 - 1, soft=True, unit="µs",
                                                                 doc="time held by hardware thermal slowdown"),
        "clocks_event_reasons_counters.hw_power_brake_slowdown": Int(0, 2**63 - 1, soft=True, unit="µs",
                                                                     doc="time held by the external power brake"),
        "pcie.link.gen.current": Int(1, 16, soft=True, doc="current PCIe generation (drops when idle)"),
        "pcie.link.gen.max": Int(1, 16, soft=True, doc="max PCIe generation of GPU and slot"),
        "pcie.link.width.current": Int(1, 64, soft=True, doc="current PCIe lanes"),
        "pcie.link.width.max": Int(1, 64, soft=True, doc="max PCIe lanes"),
        "temperature.gpu.tlimit": Num(-100, 250, soft=True, unit="°C",
                                      doc="headroom to the slowdown temperature (nvidia-smi temperature.gpu.tlimit)"),
        "utilization.encoder": Num(0, 100, soft=True, unit="%", doc="NVENC duty cycle; null under MIG"),
        "utilization.decoder": Num(0, 100, soft=True, unit="%", doc="NVDEC duty cycle; null under MIG"),
        "encoder.stats.sessionCount": Int(0, 100000, soft=True, doc="encoder sessions running"),
        "memory.free": Int(0, MIB, soft=True, unit="MiB", doc="free memory as the driver reports it (total - reserved - used)"),
        "xgmi.links_down": Int(0, 1024, doc="AMD: XGMI links reported down by `amd-smi xgmi --link-status` "
                                            "(only where amd-smi is installed)"),
    },
    nullable=False,  # a list item must be an object
)

PROCESS = Obj(
    {
        "gpu_uuid": Str(128, identity=True, doc="--query-compute-apps gpu_uuid"),
        "pid": Int(0, 2**31, doc="--query-compute-apps pid (host PID namespace)"),
        "process_name": Str(4096, doc="--query-compute-apps process_name"),
        "used_gpu_memory": Int(0, MIB, doc="--query-compute-apps used_gpu_memory; null on WDDM; AMD/Intel "
                                           "device memory from DRM fdinfo (drm-resident-vram / -local0)", unit="MiB"),
        "utilization.gpu": _pct("AMD/Intel: busiest DRM engine of the process over the interval (fdinfo "
                                "drm-engine-* deltas); NVIDIA null", "fdinfo"),
        "user": Str(256, doc="owner's name from the host or the container's passwd"),
        "uid": Int(0, 2**32, doc="real UID from /proc/<pid>/status"),
        "container": Str(512, doc="container / job name from /proc/<pid>/cgroup"),
        "container_kind": Str(32, doc="lxc, incus, docker, podman, kubernetes, slurm, user-slice"),
        "gpu_instance_id": Int(0, 1023, soft=True, doc="MIG GPU instance (GI) the process runs in"),
        "compute_instance_id": Int(0, 1023, soft=True, doc="MIG compute instance (CI) the process runs in"),
        "mig_uuid": Str(128, soft=True, identity=True, doc="MIG device UUID of that instance (MIG-...)"),
    },
    nullable=False,  # a list item must be an object
)

CONTAINER = Obj(
    {
        "name": Str(256, minlen=1, required=True, nullable=False, doc="instance name (incus/lxc list)"),
        "project": Str(128, doc="Incus/LXD project"),
        "kind": Str(16, choices=("incus", "lxc"), doc="which tool listed it"),
        "type": Str(32, doc="container or virtual-machine"),
        "state": Str(32, doc="Running, Stopped, ..."),
        "memory_bytes": Int(0, BYTES, doc="state.memory.usage", unit="B"),
        "disk_bytes": Int(0, BYTES, doc="state.disk.root.usage", unit="B"),
        "cpu_seconds": Num(0, 1e13, doc="state.cpu.usage / 1e9", unit="s"),
        "ipv4": Str(64, doc="first global IPv4 address"),
    },
    nullable=False,  # a list item must be an object
)

PROBE = Obj(
    {
        "name": Str(64, minlen=1, required=True, nullable=False, doc="probe name from agent_config.yaml"),
        "url": Str(1024, doc="probed URL"),
        "ok": Bool(doc="an HTTP answer below 500 arrived in time"),
        "latency_ms": Num(0, 1e7, doc="time to the response headers", unit="ms"),
        "status": Int(100, 599, doc="HTTP status"),
        "error": Str(512, doc="network error text"),
        "checked_at": Num(1e9, 1e11, doc="agent clock when checked", unit="epoch s"),
    },
    nullable=False,  # a list item must be an object
)

MIG_DEVICE = Obj(
    {
        "gpu_uuid": Str(128, identity=True, doc="the MIG-enabled GPU (nvidia-smi -L)"),
        "gpu_index": Int(0, 1023, doc="its nvidia-smi index"),
        "mig_index": Int(0, 1023, doc="MIG device index on that GPU (nvidia-smi -L `Device N`)"),
        "uuid": Str(128, identity=True, doc="MIG device UUID, the value for CUDA_VISIBLE_DEVICES"),
        "profile": Str(64, soft=True, doc="MIG profile, e.g. 3g.40gb (nvidia-smi -L)"),
        "gpu_instance_id": Int(0, 1023, soft=True, doc="GPU instance id (GI)"),
        "compute_instance_id": Int(0, 1023, soft=True, doc="compute instance id (CI)"),
        "memory.used": Int(0, MIB, soft=True, unit="MiB",
                           doc="memory used in its GPU instance (nvidia-smi table; shared by the GI's compute instances)"),
        "memory.total": Int(0, MIB, soft=True, unit="MiB", doc="memory size of its GPU instance"),
        "sm_count": Int(0, 100000, soft=True, doc="streaming multiprocessors of the instance"),
        "sampled_at": Num(0, 1e11, soft=True, unit="epoch s",
                          doc="when the table this usage comes from was read; null: not read yet (never offered as free)"),
    },
    nullable=False,  # a list item must be an object
)

GPU_TOPOLOGY = Obj(
    {
        "gpus": List(Obj({
            "index": Int(0, 1023, required=True, nullable=False, doc="GPU<n> row of nvidia-smi topo -m"),
            "cpu_affinity": Str(256, doc="CPU Affinity column (e.g. 0-31,64-95)"),
            "numa_affinity": Str(64, doc="NUMA Affinity column"),
            "gpu_numa_id": Str(64, doc="GPU NUMA ID column"),
        }, nullable=False), 64, doc="per GPU"),
        "links": List(Obj({
            "a": Int(0, 1023, required=True, nullable=False, doc="GPU index"),
            "b": Int(0, 1023, required=True, nullable=False, doc="GPU index, > a"),
            "link": Str(16, required=True, nullable=False, pattern=r"[A-Z]{2,4}[0-9]{0,3}",
                        doc="connection: NV<n> (n bonded NVLinks), PIX, PXB, PHB, NODE, SYS"),
        }, nullable=False), 2016, doc="every GPU pair"),
    },
    soft=True,
)

KMSG_STATES = ("ok", "not_found", "permission_denied", "error", "disabled")

XID_EVENT = Obj(
    {
        "xid": Int(0, 100000, required=True, nullable=False, doc="NVIDIA XID code from `NVRM: Xid (PCI:...): <code>`"),
        "pci.bus_id": Str(64, identity=True, doc="bus id in the Xid line, in nvidia-smi's form"),
        "gpu_uuid": Str(128, identity=True, doc="the GPU of this report with that bus id, if any"),
        "name": Str(128, doc="the code's name in NVIDIA's XID table (null for codes the agent does not know)"),
        "pid": Int(0, 2**31, doc="pid= in the Xid line"),
        "process_name": Str(256, doc="name= in the Xid line"),
        "gpu_instance_id": Int(0, 1023, soft=True, doc="MIG GPU instance the driver tagged the line with (GPU-I:<n>)"),
        "compute_instance_id": Int(0, 1023, soft=True,
                                   doc="MIG compute instance the driver tagged the line with (GPU-CI:<n>)"),
        "message": Str(1024, doc="the kernel log message"),
        "seq": Int(0, 2**63 - 1, doc="/dev/kmsg record sequence number"),
        "usec": Int(0, 2**63 - 1, doc="/dev/kmsg record time since boot", unit="µs"),
        "time": Num(0, 1e11, doc="boot_time + usec", unit="epoch s"),
    },
    nullable=False,  # a list item must be an object
)

SLURM_STATES = ("ok", "timeout", "error")

SLURM_JOB = Obj(
    {
        "job_id": Str(20, minlen=1, pattern=r"[0-9]{1,20}", required=True, nullable=False,
                      doc="Slurm JobId (as in the job's cgroup job_<id>)"),
        "array_id": Str(32, pattern=r"[0-9]{1,20}_[0-9]{1,10}", soft=True,
                        doc="ArrayJobId_ArrayTaskId of an array task, as squeue prints it; null otherwise"),
        "user": Str(256, soft=True, doc="the job's user (scontrol UserId name)"),
        "uid": Int(0, 2**32, soft=True, doc="the job's UID (scontrol UserId number)"),
        "partition": Str(128, soft=True, doc="scontrol Partition"),
        "name": Str(256, soft=True, doc="scontrol JobName (free text the job's owner chose)"),
        "state": Str(32, soft=True, doc="scontrol JobState (RUNNING, CONFIGURING, COMPLETING, SUSPENDED, ...)"),
        "start_time": Num(0, 1e11, soft=True, unit="epoch s", doc="scontrol StartTime"),
        "gpu_indexes": List(Int(0, 1023, nullable=False), 64, soft=True,
                            doc="Slurm GRES indexes of this node's GPUs allocated to the job (IDX: of scontrol -d)"),
        "gpu_uuids": List(Str(128, nullable=False, identity=True), 64, soft=True,
                          doc="the GPUs of this report with those indexes (nvidia-smi index = Slurm IDX)"),
    },
    nullable=False,  # a list item must be an object
)

AGENT = Obj(
    {
        "spool_depth": Int(0, 10**9, doc="reports waiting in the agent's spool"),
        "spool_bytes": Int(0, BYTES, doc="size of the spool", unit="B"),
        "spool_dropped": Int(0, 10**12, doc="reports dropped from a full or too old spool, ever"),
        "rejected": Int(0, 10**12, doc="reports the hub rejected as invalid, ever"),
    }
)

REPORT = Obj(
    {
        "contract_version": Int(CONTRACT_VERSION, CONTRACT_VERSION, required=True, nullable=False, doc="always 1"),
        "report_id": Str(64, minlen=8, pattern=r"[A-Za-z0-9_.:-]+", required=True, nullable=False,
                         doc="unique per report; a repeated id is stored once"),
        "sample_time": Num(1e9, 1e11, required=True, nullable=False, doc="agent clock at collection", unit="epoch s"),
        "sent_at": Num(1e9, 1e11, doc="agent clock at sending (used to measure clock skew)", unit="epoch s"),
        "interval": Num(1, 86400, doc="agent's reporting interval", unit="s"),
        "host": HOST,
        "cpu": CPU,
        "memory": MEMORY,
        "network": NETWORK,
        "uptime_s": Num(0, 1e10, doc="now - boot_time", unit="s"),
        "disks": List(DISK, 256, doc="real mounted filesystems"),
        "temperatures": List(TEMPERATURE, 256, soft=True,
                             doc="host temperatures from the hwmon sysfs tree (/sys/class/hwmon): the agent sends "
                                 "one reading per chip (its hottest, monitor_agent.temperatures.per_chip); the hub "
                                 "stores the hottest per chip of whatever it gets; null/absent = not collected"),
        "gpu_status": GPU_STATUS,
        "gpus": List(GPU, 64, doc="one object per GPU read this cycle (nvidia-smi, AMD/Intel sysfs)"),
        "processes": List(PROCESS, 4096, doc="compute processes (NVIDIA) and DRM clients holding memory or "
                                             "engine time (AMD/Intel) on any GPU"),
        "containers": List(CONTAINER, 1024, doc="LXC/Incus instances; null = not collected"),
        "probes": List(PROBE, 32, doc="reachability probe results"),
        "agent": AGENT,
        "gpu_topology": GPU_TOPOLOGY,
        "mig_devices": List(MIG_DEVICE, 448, doc="MIG devices of MIG-enabled GPUs; null = no MIG GPU"),
        "kmsg_state": Str(32, choices=KMSG_STATES, soft=True,
                          doc="reading the kernel log for XID errors: ok, not_found, permission_denied, error, disabled"),
        "xid_events": List(XID_EVENT, 256, doc="NVIDIA XID errors read from the kernel log since the last report"),
        "slurm_state": Str(32, choices=SLURM_STATES, soft=True,
                           doc="reading Slurm allocations (scontrol show job -d): ok, timeout, error; "
                               "absent where Slurm is not installed"),
        "slurm_jobs": List(SLURM_JOB, 1024, soft=True,
                           doc="Slurm jobs holding GPUs of this node; null/absent = no Slurm on the host"),
        "slurm_partitions": List(Str(64, nullable=False, pattern=GROUP_PATTERN), _groups.MAX_GROUPS, soft=True,
                                 doc="the node's Slurm partitions (scontrol show node: Partitions=), stored as host "
                                     "groups of source slurm; null/absent = not known (the stored ones stay)"),
        "groups": List(Str(64, nullable=False, pattern=GROUP_PATTERN), _groups.MAX_GROUPS, soft=True,
                       doc="host groups from the agent's config (groups:), 1-64 of [A-Za-z0-9_.-] each; "
                           "null/absent = not sent (the stored ones stay), [] = none"),
    },
    nullable=False,
)


def validate_report(obj):
    """Check one decoded JSON report against :data:`REPORT`.

    Returns the normalised report dict, plus ``nulled``: a list of messages for soft fields
    whose bad value was replaced by null, and ``replaced``: a list of messages for free-text
    fields whose unsafe characters (:mod:`monitor_agent.textrule`) were replaced by U+FFFD,
    each naming the field by its path. Raises :class:`ContractError` for anything else; no
    other exception escapes for any JSON-decodable input.
    """
    del _NULLED.items[:]
    del _NULLED.replaced[:]
    try:
        report = REPORT.check(obj, "")
        report["nulled"] = list(_NULLED.items)
        report["replaced"] = list(_NULLED.replaced)
    finally:
        del _NULLED.items[:]
        del _NULLED.replaced[:]
    return report
