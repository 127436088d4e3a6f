"""AMD and Intel GPUs through the kernel's own interfaces: DRM sysfs and DRM fdinfo.

No vendor tool is needed (this is how nvtop and Beszel read them). Two sources:

* **sysfs** ``<sysfs_root>/class/drm/card<N>/device`` for every PCI GPU of vendor
  ``0x1002`` (amdgpu) or ``0x8086`` (i915 / xe): utilisation, VRAM, hwmon sensors,
  clocks, identity. Files documented in the kernel's ``Documentation/gpu/amdgpu/thermal.rst``,
  ``amdgpu/driver-misc.rst`` (``gpu_busy_percent``, ``mem_info_vram_*``, ``unique_id``,
  ``product_name``, ``pp_dpm_*``), ``Documentation/hwmon/sysfs-interface.rst`` (units:
  millidegree Celsius, microwatt, microjoule, Hz) and ``amdgpu/amdgpu-partition`` (MI300
  ``current_compute_partition`` / ``current_memory_partition``).
* **fdinfo** ``<procfs_root>/<pid>/fdinfo/<fd>`` of every fd that links to ``/dev/dri/*``:
  the DRM client statistics of ``Documentation/gpu/drm-usage-stats.rst`` (``drm-driver``,
  ``drm-pdev``, ``drm-client-id``, ``drm-engine-<name>`` ns, ``drm-cycles-<name>`` /
  ``drm-total-cycles-<name>``, ``drm-engine-capacity-<name>``, ``drm-memory-<region>``,
  ``drm-resident-<region>``, ``drm-total-<region>``; sizes with an optional ``KiB`` /
  ``MiB`` unit).

Parsing (``parse_*``) is pure and separate from the I/O in :class:`DrmCollector`. Values
use the report's vendor-neutral keys (nvidia-smi field names: ``memory.used`` MiB,
``temperature.gpu`` °C, ``power.draw`` W, ``clocks.sm`` MHz). A file that is missing,
unreadable or not a number nulls that value only; a card without hwmon still reports.

What stays null, by driver:

* amdgpu: ``utilization.memory`` on boards without ``mem_busy_percent``; ``temperature.gpu``
  falls back to the junction (hotspot) sensor where there is no edge sensor (MI200/MI300).
* i915 / xe: there is no ``gpu_busy_percent`` and no VRAM total/used in sysfs, so
  ``utilization.gpu`` is the busiest engine summed over all DRM clients' fdinfo deltas,
  ``memory.used`` the sum of the clients' resident device memory (``local0`` / ``vram0``),
  ``memory.total`` only on xe (``tile0/physical_vram_size_bytes``); ``power.draw`` comes from
  the hwmon energy counter's delta (so from the second cycle on); ``temperature.*`` only where
  the hwmon has a ``temp*_input``; ``utilization.memory`` and ``clocks.mem`` stay null.
"""

import os
import re
import time

from .procinfo import _read

VENDORS = {"0x1002": "amd", "0x8086": "intel"}
MIB = 1048576

# System paths of libdrm's PCI-id -> marketing name table (packaged by libdrm / ROCm).
AMDGPU_IDS_PATHS = (
    "/usr/share/libdrm/amdgpu.ids",
    "/opt/amdgpu/share/libdrm/amdgpu.ids",
    "/opt/rocm/share/libdrm/amdgpu.ids",
)

# The PCI id database (pciutils / hwdata), for names libdrm's table does not have (Intel).
PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")

_CARD = re.compile(r"card\d+$")
_BUS_ID = re.compile(r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-9a-fA-F]$")
_DPM_LINE = re.compile(r"^\s*\d+:\s*(\d+)\s*[Mm][Hh]z.*\*\s*$")
# Device-local memory regions: amdgpu "vram", xe "vram0", i915 "local0".
_DEVICE_REGION = re.compile(r"^(vram|local|lmem)\d*$")
_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}
# AMD APUs that labs run compute on (PCI device id -> what it is). Their GPU has no memory of its
# own: "VRAM" is a BIOS carve-out of system RAM (512 MiB - 96 GiB) and compute allocates from the GTT
# pool (system RAM mapped for the GPU, mem_info_gtt_*). Strix Halo 0x1586 (Ryzen AI Max, Radeon
# 8060S/8050S/8040S; amdgpu_top "DeviceID 5510"), MI300A 0x74A0. Other AMD GPUs with a carve-out
# under drm_min_vram_mib are desktop/laptop iGPUs and stay skipped (drm_min_vram_mib: 0 keeps them).
COMPUTE_APUS = {0x1586: "Strix Halo", 0x74A0: "Instinct MI300A"}
# An AMD GPU with less "VRAM" than this is an APU's carve-out (no discrete compute GPU is that small).
APU_CARVEOUT_MAX = 4096 * MIB


# --------------------------------------------------------------------------- parsing


def parse_int(text):
    """A sysfs integer file (``"12345\\n"``, ``"0x1002"``) to int; anything else → None."""
    if text is None:
        return None
    text = text.strip()
    try:
        return int(text, 16) if text[:2].lower() == "0x" else int(text)
    except ValueError:
        return None


def parse_percent(text):
    """``gpu_busy_percent`` / ``mem_busy_percent``: an int 0..100, else None."""
    value = parse_int(text)
    return value if value is not None and 0 <= value <= 100 else None


def parse_dpm_current(text):
    """Current clock in MHz from ``pp_dpm_sclk`` / ``pp_dpm_mclk`` (the line marked ``*``).

    Lines look like ``1: 2100Mhz *``. Returns None when no line is marked or parseable.
    """
    for line in (text or "").splitlines():
        match = _DPM_LINE.match(line)
        if match:
            return int(match.group(1))
    return None


def parse_uevent(text):
    """``KEY=value`` lines of a sysfs ``uevent`` file to a dict."""
    out = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_amdgpu_ids(text):
    """libdrm's ``amdgpu.ids`` (``744C,\\tC8,\\tAMD Radeon RX 7900 XTX``) to ``{(device, revision): name}``.

    ``device`` and ``revision`` are ints. Comment lines (``#``) and the version line are skipped.
    """
    names = {}
    for line in (text or "").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) != 3:
            continue
        try:
            names[(int(parts[0], 16), int(parts[1], 16))] = parts[2]
        except ValueError:
            continue
    return names


def pci_ids_name(text, vendor_id, device_id):
    """The device name for ``vendor_id:device_id`` (ints) in a ``pci.ids`` text, else None.

    ``pci.ids`` lists ``<vendor hex>  <name>`` lines, each followed by ``\t<device hex>  <name>``
    lines (``\t\t`` lines are subsystems).
    """
    vendor_line = "%04x  " % vendor_id
    device_line = "\t%04x  " % device_id
    in_vendor = False
    for line in (text or "").splitlines():
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            if in_vendor:
                return None
            in_vendor = line.lower().startswith(vendor_line)
        elif in_vendor and line.lower().startswith(device_line):
            return line[len(device_line):].strip()[:200] or None
    return None


def hwmon_temperatures(files):
    """Temperatures in °C from hwmon ``temp*_input`` (m°C) and ``temp*_label`` texts.

    ``files``: ``{"temp1_input": "45000", "temp1_label": "edge", ...}``. Returns
    ``{"edge", "junction", "mem"}`` (°C, float or int; None where absent or not a number).
    amdgpu labels: ``edge``, ``junction`` (hotspot), ``mem`` (HBM/GDDR). xe: ``pkg`` (→ junction),
    ``vram`` (→ mem). An unlabelled ``temp1`` counts as the edge sensor.
    """
    out = {"edge": None, "junction": None, "mem": None}
    aliases = {"edge": "edge", "junction": "junction", "hotspot": "junction", "pkg": "junction",
               "mem": "mem", "vram": "mem", "hbm": "mem"}
    for name, text in files.items():
        match = re.fullmatch(r"temp(\d+)_input", name)
        if not match:
            continue
        label = (files.get(f"temp{match.group(1)}_label") or "").strip().lower()
        if not label and match.group(1) == "1":
            label = "edge"
        key = aliases.get(label)
        value = parse_int(text)
        if key is None or value is None or out[key] is not None:
            continue
        celsius = value / 1000
        if -100 <= celsius <= 250:
            out[key] = int(celsius) if celsius.is_integer() else round(celsius, 1)
    return out


def micro(text, low=0, high=10000):
    """A µW/µJ hwmon value to W/J (float, 2 decimals) within ``[low, high]``, else None."""
    value = parse_int(text)
    if value is None:
        return None
    value = value / 1e6
    return round(value, 2) if low <= value <= high else None


def parse_size(text):
    """An fdinfo memory value (``1234 KiB``, ``5 MiB``, ``4096``) to bytes, else None."""
    number, _, unit = text.strip().partition(" ")
    if not number.isdigit() or unit.strip() not in _UNITS:
        return None
    return int(number) * _UNITS[unit.strip()]


def parse_fdinfo(text):
    """One ``/proc/<pid>/fdinfo/<fd>`` text to a DRM client dict, or None if not a DRM client.

    Returns ``{"driver", "pdev", "client_id", "engines": {name: ns}, "cycles": {name: n},
    "total_cycles": {name: n}, "capacity": {name: n}, "device_bytes": int | None,
    "gtt_bytes": int | None}``. ``device_bytes`` is the client's device-local memory: the sum
    over regions named ``vram*`` / ``local*`` of ``drm-resident-<region>`` (else
    ``drm-memory-<region>``, the older amdgpu key, else ``drm-total-<region>``); ``gtt_bytes``
    the same for amdgpu's ``gtt`` region (system RAM mapped for the GPU: what an APU's compute
    uses). A key whose value does not parse is skipped alone.
    """
    info = {"driver": None, "pdev": None, "client_id": None, "engines": {}, "cycles": {},
            "total_cycles": {}, "capacity": {}}
    memory = {"resident": {}, "memory": {}, "total": {}}
    for line in (text or "").splitlines():
        if not line.startswith("drm-"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key[4:], value.strip()
        group, _, name = key.partition("-")
        if group == "engine":
            if name.startswith("capacity-"):
                if value.isdigit() and int(value) > 0:
                    info["capacity"][name[9:]] = int(value)
            else:
                number, _, unit = value.partition(" ")
                if unit.strip() == "ns" and number.isdigit():
                    info["engines"][name] = int(number)
        elif group in memory:
            if group == "total" and name.startswith("cycles-"):
                if value.isdigit():
                    info["total_cycles"][name[7:]] = int(value)
            elif _DEVICE_REGION.match(name) or name == "gtt":
                size = parse_size(value)
                if size is not None:
                    memory[group][name] = size
        elif group == "cycles":
            if value.isdigit():
                info["cycles"][name] = int(value)
        elif key == "driver":
            info["driver"] = value[:64] or None
        elif key == "pdev":
            info["pdev"] = value.lower() if _BUS_ID.match(value) else None
        elif key == "client-id":
            info["client_id"] = int(value) if value.isdigit() else None
    if info["driver"] is None or info["client_id"] is None:
        return None
    info["device_bytes"] = info["gtt_bytes"] = None
    for kind in ("resident", "memory", "total"):
        device = {k: v for k, v in memory[kind].items() if k != "gtt"}
        if device and info["device_bytes"] is None:
            info["device_bytes"] = sum(device.values())
        if "gtt" in memory[kind] and info["gtt_bytes"] is None:
            info["gtt_bytes"] = memory[kind]["gtt"]
    return info


def engine_busy(prev, cur, elapsed_ns):
    """Busy share (%) of each engine between two :func:`parse_fdinfo` results of one client.

    Uses ``drm-cycles-X / drm-total-cycles-X`` deltas where both are given (xe), else
    ``drm-engine-X`` ns deltas over ``elapsed_ns`` divided by ``drm-engine-capacity-X``.
    A counter that went backwards (client id reuse) gives no value. Returns ``{engine: %}``.
    """
    out = {}
    for name, cycles in cur["cycles"].items():
        total, p_cycles, p_total = cur["total_cycles"].get(name), prev["cycles"].get(name), \
            prev["total_cycles"].get(name)
        if None in (total, p_cycles, p_total) or total <= p_total or cycles < p_cycles:
            continue
        out[name] = min(100.0, 100.0 * (cycles - p_cycles) / (total - p_total) / cur["capacity"].get(name, 1))
    if elapsed_ns <= 0:
        return out
    for name, ns in cur["engines"].items():
        before = prev["engines"].get(name)
        if name in out or before is None or ns < before:
            continue
        out[name] = min(100.0, 100.0 * (ns - before) / elapsed_ns / cur["capacity"].get(name, 1))
    return out


# --------------------------------------------------------------------------- I/O


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


class _Card:
    """Static facts about one GPU, read once per discovery."""

    __slots__ = ("card", "path", "card_path", "bus_id", "vendor", "driver", "device_id", "revision", "name",
                 "uuid", "hwmon", "files", "integrated", "apu")


class DrmCollector:
    """Reads AMD / Intel GPUs and their DRM clients from sysfs and procfs, no forks.

    ``sysfs_root`` / ``procfs_root``: where sysfs and procfs are mounted (``/sys``, ``/proc``;
    tests point them at fixture trees). ``ids_paths``: candidate ``amdgpu.ids`` files;
    ``pci_ids_paths``: candidate ``pci.ids`` files (the name when ``product_name`` and
    ``amdgpu.ids`` do not give one).
    ``rediscover_s``: seconds between re-listing the cards (hot-plug is rare).
    ``min_vram_mib``: AMD GPUs with less VRAM than this are integrated graphics (a Ryzen's
    Radeon iGPU has a 512 MiB - 2 GiB carve-out) and are skipped; 0 keeps them.
    ``clock``: monotonic seconds (tests inject one).
    """

    def __init__(self, sysfs_root="/sys", procfs_root="/proc", ids_paths=AMDGPU_IDS_PATHS,
                 pci_ids_paths=PCI_IDS_PATHS, rediscover_s=60.0, min_vram_mib=4096, clock=time.monotonic):
        self.sysfs_root = sysfs_root.rstrip("/") or "/"
        self.procfs_root = procfs_root.rstrip("/") or "/"
        self.ids_paths = ids_paths
        self.pci_ids_paths = pci_ids_paths
        self._pci_names = {}  # (vendor, device) -> name or None, looked up once
        self.rediscover_s = rediscover_s
        self.min_vram_mib = min_vram_mib
        self.clock = clock
        self._cards = None
        self._found_at = None
        self._ids = None
        self._clients = {}  # (pdev, client id) -> (parse_fdinfo dict, clock ns)
        self._energy = {}  # bus id -> (joules, clock s)
        self._pools = {}  # bus id -> "vram" or "gtt": the memory pool memory.* reports (gtt on an APU)
        self._sysfs_drivers = {}
        self._fd_cache = {}  # pid -> (fd names at the last scan, those that link to /dev/dri/)
        self._scans = 0

    # -- discovery

    def _amdgpu_names(self):
        if self._ids is None:
            self._ids = {}
            for path in self.ids_paths:
                text = _read(path, 1 << 20)
                if text:
                    self._ids = parse_amdgpu_ids(text)
                    break
        return self._ids

    def discover(self):
        """List the AMD / Intel GPUs under ``class/drm``; returns a list of :class:`_Card`.

        Connector (``card0-DP-1``) and render (``renderD128``) nodes are skipped; two
        ``card`` nodes of one PCI device count once. Integrated graphics are skipped (they are not
        compute devices a lab hands out): Intel GPUs on PCI bus 0 (``00:02.0``) and AMD GPUs with
        less than ``min_vram_mib`` of VRAM, except the compute APUs of :data:`COMPUTE_APUS`
        (Strix Halo, MI300A), whose small VRAM is only a carve-out. ``apu`` marks an AMD GPU
        whose memory is the GTT pool (see :meth:`read_gpu`).
        """
        base = f"{self.sysfs_root}/class/drm"
        cards, seen = [], set()
        for card in sorted(_listdir(base), key=lambda n: (len(n), n)):
            if not _CARD.match(card):
                continue
            path = f"{base}/{card}/device"
            vendor = VENDORS.get((_read(f"{path}/vendor") or "").strip().lower())
            if vendor is None:
                continue
            bus_id = None
            try:
                bus_id = os.path.basename(os.readlink(path))
            except OSError:
                pass
            uevent = parse_uevent(_read(f"{path}/uevent"))
            if not bus_id or not _BUS_ID.match(bus_id):
                bus_id = uevent.get("PCI_SLOT_NAME")
            if not bus_id or not _BUS_ID.match(bus_id):
                continue
            bus_id = bus_id.lower()
            if bus_id in seen:
                continue
            seen.add(bus_id)
            c = _Card()
            c.card, c.path, c.card_path, c.bus_id, c.vendor = card, path, f"{base}/{card}", bus_id, vendor
            c.integrated = vendor == "intel" and bus_id.split(":")[-2] == "00"
            c.device_id = parse_int(_read(f"{path}/device"))
            c.apu = False
            if vendor == "amd":
                vram = parse_int(_read(f"{path}/mem_info_vram_total"))
                c.apu = c.device_id in COMPUTE_APUS or (vram is not None and vram < APU_CARVEOUT_MAX)
                if self.min_vram_mib and c.device_id not in COMPUTE_APUS:
                    c.integrated = vram is not None and vram < self.min_vram_mib * MIB
            if c.integrated:
                continue
            c.driver = uevent.get("DRIVER")
            if c.driver is None:
                try:
                    c.driver = os.path.basename(os.readlink(f"{path}/driver"))
                except OSError:
                    c.driver = "amdgpu" if vendor == "amd" else None
            c.revision = parse_int(_read(f"{path}/revision"))
            c.name = self._product_name(c)
            unique = (_read(f"{path}/unique_id") or "").strip().lower()
            c.uuid = "GPU-" + unique if re.fullmatch(r"[0-9a-f]{1,32}", unique) else bus_id
            c.hwmon = None
            for entry in sorted(_listdir(f"{path}/hwmon")):
                if entry.startswith("hwmon"):
                    c.hwmon = f"{path}/hwmon/{entry}"
                    break
            c.files = set(_listdir(path))
            if c.hwmon:
                c.files.update("hwmon/" + f for f in _listdir(c.hwmon))
            cards.append(c)
        return cards

    def _product_name(self, c):
        name = (_read(f"{c.path}/product_name") or "").strip()
        if name:
            return name[:256]
        if c.vendor == "amd" and c.device_id is not None:
            names = self._amdgpu_names()
            name = names.get((c.device_id, c.revision)) or names.get((c.device_id, 0))
            if name:
                return name[:256]
        label = "AMD" if c.vendor == "amd" else "Intel"
        if c.device_id is not None:
            key = (0x1002 if c.vendor == "amd" else 0x8086, c.device_id)
            if key not in self._pci_names:
                self._pci_names[key] = None
                for path in self.pci_ids_paths:
                    text = _read(path, 8 << 20)
                    if text:
                        self._pci_names[key] = pci_ids_name(text, *key)
                        break
            if self._pci_names[key]:
                return f"{label} {self._pci_names[key]}"[:256]
        return f"{label} GPU [{c.device_id:04x}]" if c.device_id is not None else f"{label} GPU"

    def cards(self):
        """The cached card list, re-discovered every ``rediscover_s`` seconds."""
        now = self.clock()
        if self._cards is None or now - self._found_at >= self.rediscover_s:
            self._cards, self._found_at = self.discover(), now
        return self._cards

    def _driver_version(self, driver):
        if driver not in self._sysfs_drivers:
            text = (_read(f"{self.sysfs_root}/module/{driver}/version") or "").strip() if driver else ""
            self._sysfs_drivers[driver] = text[:64] or None
        return self._sysfs_drivers[driver]

    # -- one GPU

    def read_gpu(self, c, index, now):
        """Current values of card ``c`` as a report GPU dict (contract keys; see module doc)."""
        p = c.path
        hw = {}
        if c.hwmon:
            for name in c.files:
                if name.startswith("hwmon/") and name[6:].startswith(("temp", "power1_", "energy1_", "freq",
                                                                      "pwm1", "fan1_")):
                    hw[name[6:]] = _read(f"{c.hwmon}/{name[6:]}")
        temps = hwmon_temperatures({k: v for k, v in hw.items() if k.startswith("temp") and v is not None})
        total = parse_int(_read(f"{p}/mem_info_vram_total")) if "mem_info_vram_total" in c.files else None
        used = parse_int(_read(f"{p}/mem_info_vram_used")) if "mem_info_vram_used" in c.files else None
        pool = "vram"
        if c.apu and "mem_info_gtt_total" in c.files:
            # An APU: memory is the larger of the carve-out and the GTT pool, as the kernel's KFD
            # picks it for compute allocations and amd-smi reports it (used and total of that pool).
            gtt_total = parse_int(_read(f"{p}/mem_info_gtt_total"))
            if gtt_total is not None and (total is None or gtt_total > total):
                pool, total = "gtt", gtt_total
                used = parse_int(_read(f"{p}/mem_info_gtt_used")) if "mem_info_gtt_used" in c.files else None
        self._pools[c.bus_id] = pool
        if total is None and c.driver == "xe":
            total = parse_int(_read(f"{p}/tile0/physical_vram_size_bytes"))
        power = micro(hw.get("power1_average")) if hw.get("power1_average") else None
        if power is None and hw.get("power1_input"):
            power = micro(hw.get("power1_input"))
        energy = parse_int(hw.get("energy1_input"))
        if power is None and energy is not None:
            before = self._energy.get(c.bus_id)
            if before is not None and now > before[1] and energy >= before[0]:
                watts = (energy - before[0]) / 1e6 / (now - before[1])
                power = round(watts, 2) if watts <= 10000 else None
        if energy is not None:
            self._energy[c.bus_id] = (energy, now)
        limit = micro(hw.get("power1_cap")) if hw.get("power1_cap") else micro(hw.get("power1_max"))
        sclk = parse_dpm_current(_read(f"{p}/pp_dpm_sclk")) if "pp_dpm_sclk" in c.files else None
        mclk = parse_dpm_current(_read(f"{p}/pp_dpm_mclk")) if "pp_dpm_mclk" in c.files else None
        if sclk is None and hw.get("freq1_input"):
            hz = parse_int(hw["freq1_input"])
            sclk = hz // 1000000 if hz is not None and 0 <= hz < 10**11 else None
        if mclk is None and hw.get("freq2_input"):
            hz = parse_int(hw["freq2_input"])
            mclk = hz // 1000000 if hz is not None and 0 <= hz < 10**11 else None
        if sclk is None and c.vendor == "intel":
            sclk = parse_int(_read(f"{c.card_path}/gt_act_freq_mhz") or _read(f"{p}/tile0/gt0/freq0/act_freq"))
        fan = None
        if hw.get("pwm1"):
            pwm = parse_int(hw["pwm1"])
            fan = round(pwm * 100 / 255) if pwm is not None and 0 <= pwm <= 255 else None
        gpu = {
            "index": index,
            "uuid": c.uuid,
            "vendor": c.vendor,
            "name": c.name,
            "pci.bus_id": c.bus_id,
            "driver_version": self._driver_version(c.driver),
            "utilization.gpu": parse_percent(_read(f"{p}/gpu_busy_percent")) if "gpu_busy_percent" in c.files
            else None,
            "utilization.memory": parse_percent(_read(f"{p}/mem_busy_percent")) if "mem_busy_percent" in c.files
            else None,
            "memory.used": used // MIB if used is not None and 0 <= used < 2**60 else None,
            "memory.total": total // MIB if total is not None and 0 < total < 2**60 else None,
            "temperature.gpu": temps["edge"] if temps["edge"] is not None else temps["junction"],
            "temperature.junction": temps["junction"],
            "temperature.memory": temps["mem"],
            "power.draw": power,
            "power.limit": limit,
            "fan.speed": fan,
            "clocks.sm": sclk if sclk is not None and 0 <= sclk <= 100000 else None,
            "clocks.mem": mclk if mclk is not None and 0 <= mclk <= 100000 else None,
            "compute_partition": None,
            "memory_partition": None,
        }
        for key, name in (("compute_partition", "current_compute_partition"),
                          ("memory_partition", "current_memory_partition")):
            if name in c.files:
                value = (_read(f"{p}/{name}") or "").strip()
                gpu[key] = value[:16] if re.fullmatch(r"[A-Z0-9]{2,16}", value) else None
        return gpu

    # -- DRM clients

    # Every this many scans each process's fd links are all resolved again even when its fd
    # numbers are unchanged (a tenth of the processes per scan, so no scan is much dearer).
    FULL_SCAN_EVERY = 10

    def scan_clients(self):
        """Every DRM client in ``<procfs_root>/*/fdinfo``, de-duplicated by (pdev, client id).

        Only fds whose link target starts with ``/dev/dri/`` are read. To stay cheap on hosts
        with thousands of open files, a process whose list of fd numbers is the same as in the
        previous scan is assumed to hold the same files (its known DRM fds are re-read, the rest
        are not re-resolved); each process's links are all resolved again every
        :data:`FULL_SCAN_EVERY` scans (staggered by PID).
        A process or fd that vanishes while we look is skipped. Returns
        ``{(pdev, client_id): (info, pids)}`` where ``info`` is :func:`parse_fdinfo`'s dict and
        ``pids`` the PIDs holding the client, in scan order.
        """
        root = self.procfs_root
        clients = {}
        readlink = os.readlink
        self._scans += 1
        turn = self._scans % self.FULL_SCAN_EVERY
        known, cache = self._fd_cache, {}
        try:
            pids = os.listdir(root)
        except OSError:
            return clients
        for pid in pids:
            if not pid.isdigit():
                continue
            fd_dir = f"{root}/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            before = known.get(pid)
            if before is not None and before[0] == fds and int(pid) % self.FULL_SCAN_EVERY != turn:
                drm_fds = before[1]
            else:
                drm_fds = []
                for fd in fds:
                    try:
                        if readlink(f"{fd_dir}/{fd}").startswith("/dev/dri/"):
                            drm_fds.append(fd)
                    except OSError:
                        continue
            cache[pid] = (fds, drm_fds)
            for fd in drm_fds:
                info = parse_fdinfo(_read(f"{root}/{pid}/fdinfo/{fd}", 16384))
                if info is None or info["pdev"] is None:
                    continue
                key = (info["pdev"], info["client_id"])
                if key in clients:
                    clients[key][1].append(int(pid))
                else:
                    clients[key] = (info, [int(pid)])
        self._fd_cache = cache
        return clients

    def collect(self, skip_bus_ids=()):
        """One collection. Returns ``{"gpus": [...], "processes": [...]}``.

        ``gpus``: report GPU dicts (``vendor`` ``amd`` / ``intel``), indexed per vendor in PCI
        bus order (the numbering of ``ROCR_VISIBLE_DEVICES`` / ``HIP_VISIBLE_DEVICES`` and
        ``ZE_AFFINITY_MASK``). ``skip_bus_ids``: GPUs already reported by another collector.
        ``processes``: one dict per (PID, GPU) with ``gpu_uuid``, ``pid``, ``process_name``,
        ``used_gpu_memory`` (MiB of device-local memory, rounded) and ``utilization.gpu``
        (busiest engine over the interval, %; null on the first cycle). A client held by
        several PIDs counts once, for the lowest PID.
        """
        now = self.clock()
        skip = {b.lower()[-12:] for b in skip_bus_ids if b}
        gpus, by_bus = [], {}
        counters = {}
        for c in sorted(self.cards(), key=lambda c: c.bus_id):
            if c.bus_id[-12:] in skip:
                continue
            index = counters.get(c.vendor, 0)
            counters[c.vendor] = index + 1
            gpu = self.read_gpu(c, index, now)
            gpus.append(gpu)
            by_bus[c.bus_id] = gpu
        if not gpus:
            self._clients = {}
            return {"gpus": [], "processes": []}
        now_ns = int(now * 1e9)
        clients = self.scan_clients()
        per_proc, engine_sum, device_sum, fresh = {}, {}, {}, {}
        for key, (info, pids) in clients.items():
            gpu = by_bus.get(key[0])
            if gpu is None:
                continue
            fresh[key] = (info, now_ns)
            busy = {}
            before = self._clients.get(key)
            if before is not None:
                busy = engine_busy(before[0], info, now_ns - before[1])
                sums = engine_sum.setdefault(key[0], {})
                for name, pct in busy.items():
                    sums[name] = sums.get(name, 0.0) + pct
            vram = info["gtt_bytes"] if self._pools.get(key[0]) == "gtt" else info["device_bytes"]
            if vram is not None:
                device_sum[key[0]] = device_sum.get(key[0], 0) + vram
            if not vram and not any(busy.values()) and not any(info["engines"].values()) \
                    and not any(info["cycles"].values()):
                continue  # an idle handle (e.g. a tool that only probed the device)
            owner = (min(pids), key[0])
            proc = per_proc.setdefault(owner, {"vram": None, "util": None, "seen": before is not None})
            if vram is not None:
                proc["vram"] = (proc["vram"] or 0) + vram
            if busy:
                proc["util"] = max([proc["util"] or 0.0] + list(busy.values()))
        self._clients = fresh
        for bus, gpu in by_bus.items():
            if gpu["vendor"] != "intel":
                continue
            if gpu["utilization.gpu"] is None and bus in engine_sum:
                gpu["utilization.gpu"] = int(round(min(100.0, max(engine_sum[bus].values(), default=0.0))))
            if gpu["memory.used"] is None and bus in device_sum:
                gpu["memory.used"] = device_sum[bus] // MIB
        processes = []
        for (pid, bus), proc in sorted(per_proc.items()):
            util = proc["util"]
            processes.append({
                "gpu_uuid": by_bus[bus]["uuid"],
                "pid": pid,
                "process_name": self._process_name(pid),
                "used_gpu_memory": int(round(proc["vram"] / MIB)) if proc["vram"] is not None else None,
                "utilization.gpu": round(util, 1) if util is not None else None,
            })
        return {"gpus": gpus, "processes": processes}

    def _process_name(self, pid):
        cmdline = _read(f"{self.procfs_root}/{pid}/cmdline", 4096)
        if cmdline:
            first = cmdline.split("\x00", 1)[0].strip()
            if first:
                return first[:4096]
        comm = (_read(f"{self.procfs_root}/{pid}/comm", 256) or "").strip()
        return comm or None
