"""Host temperatures from the kernel's hwmon sysfs tree (no child process, no pip package).

The kernel's hwmon interface (Documentation/hwmon/sysfs-interface.rst in the Linux source)
gives each sensor chip a directory ``/sys/class/hwmon/hwmonN`` with

* ``name``: the chip's driver name (``coretemp``, ``k10temp``, ``nvme``, ``drivetemp``,
  ``acpitz``, ``pch_cometlake``, …; the kernel refuses names with ``-``, ``*`` or spaces);
* ``tempN_input``: the temperature in millidegrees Celsius;
* ``tempN_label`` (optional): what it measures (``Package id 0``, ``Core 3``, ``Composite``,
  ``Tctl``); without it ``lm-sensors`` shows ``tempN``;
* ``tempN_max`` / ``tempN_crit`` (optional): the chip's high and critical limits, millidegrees.

Old drivers keep these files in ``hwmonN/device/`` instead; both places are read. This is
what ``psutil.sensors_temperatures()`` reads too, but psutil cannot be pointed at another
root, and the agent setting ``sysfs_root`` (tests: a fixture tree) must apply here as well.

The agent reports one reading per chip (:func:`per_chip`: the hottest), which is what the hub
stores and charts: a two-socket 64-core host has 130 coretemp readings, and sending each every
report would cost every report's size and the hub's contract check for nothing it keeps. The hub
applies the same :func:`per_chip` to what any agent sends (this module is shared with the hub, like
``textrule``: standard library only).

A file that cannot be read or parsed (a sensor that answers ``EIO`` or ``ENODATA`` while
its device sleeps, which ``lm-sensors`` shows as ``N/A``) leaves that value out only. Values
outside -60…250 °C are dropped as not initialised: NVMe drives report an unset limit as
65261.85 °C (0xFFFF kelvin), see tests/fixtures/hwmon/SOURCE.md.
"""

import os
import re

_TEMP_INPUT = re.compile(r"^temp(\d{1,3})_input$")
_CHIP_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
MIN_C, MAX_C = -60.0, 250.0
MAX_READINGS = 256  # the report contract's limit for ``temperatures``


def _read(path):
    try:
        with open(path, encoding="ascii", errors="replace") as fp:
            return fp.read(256).strip()
    except OSError:
        return None


def _millidegrees(path):
    """°C from a millidegree file, or None (missing, unreadable, not a number, out of range)."""
    text = _read(path)
    if text is None:
        return None
    try:
        value = int(text) / 1000.0
    except ValueError:
        return None
    return value if MIN_C <= value <= MAX_C else None


def _chip_dir(hwmon):
    """The directory holding ``name`` and ``temp*`` files: ``hwmonN`` or, for old drivers, ``hwmonN/device``."""
    if os.path.exists(os.path.join(hwmon, "name")):
        return hwmon
    device = os.path.join(hwmon, "device")
    return device if os.path.exists(os.path.join(device, "name")) else None


def read_temperatures(sysfs_root="/sys"):
    """Every temperature reading under ``<sysfs_root>/class/hwmon``.

    Returns a list (at most :data:`MAX_READINGS`) of ``{"chip", "label", "current_c",
    "high_c", "critical_c"}`` in hwmon order (hwmon0, hwmon1, … numerically), readings of a
    chip by sensor number. ``chip`` is the ``name`` file, with ``#2``, ``#3`` appended for a
    second and third chip of the same name (two NVMe drives, two CPU sockets: hwmon numbering
    is stable across reboots only as long as the drivers load in the same order). Values in °C
    (float) or None; a reading with no parsable ``tempN_input`` is skipped. Returns ``[]``
    when the tree is missing (containers, non-Linux); never raises ``OSError``.
    """
    base = os.path.join(sysfs_root, "class", "hwmon")
    try:
        entries = os.listdir(base)
    except OSError:
        return []

    def order(name):
        digits = name[5:] if name.startswith("hwmon") else ""
        return (0, int(digits)) if digits.isdigit() else (1, name)

    out, seen = [], {}
    for entry in sorted(entries, key=order):
        chip_dir = _chip_dir(os.path.join(base, entry))
        if chip_dir is None:
            continue
        name = _CHIP_NAME.sub("_", _read(os.path.join(chip_dir, "name")) or "")[:60] or entry
        seen[name] = seen.get(name, 0) + 1
        chip = name if seen[name] == 1 else f"{name}#{seen[name]}"
        try:
            files = os.listdir(chip_dir)
        except OSError:
            continue
        numbers = sorted(int(m.group(1)) for m in map(_TEMP_INPUT.match, files) if m)
        for n in numbers:
            current = _millidegrees(os.path.join(chip_dir, f"temp{n}_input"))
            if current is None:
                continue
            label = (_read(os.path.join(chip_dir, f"temp{n}_label")) or f"temp{n}")[:64]
            out.append({
                "chip": chip,
                "label": label,
                "current_c": current,
                "high_c": _millidegrees(os.path.join(chip_dir, f"temp{n}_max")),
                "critical_c": _millidegrees(os.path.join(chip_dir, f"temp{n}_crit")),
            })
            if len(out) >= MAX_READINGS:
                return out
    return out


def per_chip(readings):
    """One reading per chip: the hottest, with the chip's lowest limits.

    ``readings``: dicts with ``chip``, ``label``, ``current_c``, ``high_c``, ``critical_c`` (as
    :func:`read_temperatures` returns them, or a report's ``temperatures`` after the hub's
    contract check, where a bad value is None). Returns, in order of each chip's first reading,
    ``{"chip", "label", "current_c", "high_c", "critical_c"}``: ``label`` and ``current_c`` of the
    hottest reading with a value (the first on a tie; None when none has one), ``high_c`` and
    ``critical_c`` the lowest the chip reports (the first limit reached), None when none.
    """
    chips = {}
    for item in readings or ():
        chip = chips.setdefault(item["chip"], {"chip": item["chip"], "label": None, "current_c": None,
                                               "high_c": None, "critical_c": None})
        current = item.get("current_c")
        if current is not None and (chip["current_c"] is None or current > chip["current_c"]):
            chip["current_c"], chip["label"] = current, item.get("label")
        for key in ("high_c", "critical_c"):
            value = item.get(key)
            if value is not None and (chip[key] is None or value < chip[key]):
                chip[key] = value
    return list(chips.values())
