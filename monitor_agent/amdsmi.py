"""Optional ``amd-smi`` calls for what sysfs does not give: ECC/RAS counts and XGMI link state.

Never required: without ``amd-smi`` (or without AMD GPUs) nothing is started and the two
values stay null. With it, two bounded calls run at most once per ``interval`` (the
agent's ``inventory_interval``, default 60 s) and their result is reused in between:

* ``amd-smi metric --ecc --json`` → per GPU ``ecc.total_uncorrectable_count`` and
  ``total_correctable_count`` (RAS error counts since the driver loaded).
* ``amd-smi xgmi --link-status --json`` → per GPU the state of each XGMI link
  (``U`` up, ``D`` down, ``X`` disabled / not connected); we report the number of links down.

Parsing is pure (``parse_ecc``, ``parse_link_status``); both accept the ROCm 6.x shape (a
JSON list of per-GPU objects) and the ROCm 7 shape (an object wrapping that list, e.g.
``{"gpu_data": [...]}``), and ``"N/A"`` for any value.
"""

import json
import os
import shutil
import time

from .runner import BoundedRunner


def _count(value):
    """A non-negative int from a JSON value (``12``, ``"12"``, ``{"value": 12}``), else None."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return None


def _gpu_entries(data):
    """The per-GPU objects of an amd-smi JSON document (list, or object wrapping lists)."""
    if isinstance(data, list):
        out = []
        for item in data:
            if isinstance(item, dict) and ("gpu" in item or "bdf" in item):
                out.append(item)
            else:
                out.extend(_gpu_entries(item))
        return out
    if isinstance(data, dict):
        if "gpu" in data and ("ecc" in data or "link_status" in data):
            return [data]
        out = []
        for value in data.values():
            if isinstance(value, (list, dict)):
                out.extend(_gpu_entries(value))
        return out
    return []


def _key(entry):
    """``("bdf", "0000:05:00.0")`` when the entry names its PCI address, else ``("index", n)``."""
    bdf = entry.get("bdf")
    if isinstance(bdf, str) and len(bdf) >= 7:
        return ("bdf", bdf.strip().lower()[-12:])
    gpu = entry.get("gpu")
    if isinstance(gpu, int) and not isinstance(gpu, bool) and gpu >= 0:
        return ("index", gpu)
    return None


def parse_ecc(text):
    """``amd-smi metric --ecc --json`` to ``{key: {"uncorrectable": int|None, "correctable": int|None}}``.

    ``key`` is from the entry's ``bdf`` or ``gpu`` index (see :func:`_key`). Returns {} for
    text that is not JSON.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    out = {}
    for entry in _gpu_entries(data):
        key, ecc = _key(entry), entry.get("ecc")
        if key is None or not isinstance(ecc, dict):
            continue
        out[key] = {"uncorrectable": _count(ecc.get("total_uncorrectable_count")),
                    "correctable": _count(ecc.get("total_correctable_count"))}
    return out


def parse_link_status(text):
    """``amd-smi xgmi --link-status --json`` to ``{key: links down (int)}``.

    Each GPU entry carries ``link_status``: a list of ``U`` / ``D`` / ``X`` (or the words
    ``Up`` / ``Down`` / ``Disabled``). Entries without such a list are skipped.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    out = {}
    for entry in _gpu_entries(data):
        key, links = _key(entry), entry.get("link_status")
        if key is None or not isinstance(links, list):
            continue
        states = [str(s).strip().upper()[:1] for s in links if isinstance(s, str)]
        if states:
            out[key] = sum(1 for s in states if s == "D")
    return out


class AmdSmi:
    """Runs ``amd-smi`` at a low cadence and adds its values to the AMD GPU dicts.

    ``path``: executable name or path (None disables). ``interval``: seconds between runs.
    ``timeout``: seconds per call (bounded by :class:`BoundedRunner`; a hung amd-smi is
    killed and blocks only later amd-smi calls, not nvidia-smi).
    """

    def __init__(self, path="amd-smi", interval=60.0, timeout=10.0, runner=None, clock=time.monotonic):
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.runner = runner or BoundedRunner()
        self.clock = clock
        self._at = None
        self.ecc, self.links = {}, {}
        self.calls = 0

    def _executable(self):
        if not self.path:
            return None
        if os.sep in self.path:
            return self.path if os.access(self.path, os.X_OK) else None
        return shutil.which(self.path)

    def _run(self, exe, args):
        result = self.runner.run([exe] + args, self.timeout)
        self.calls += 1
        if result.state == "ok" and result.returncode == 0:
            return result.stdout.decode("utf-8", "replace")
        return None

    def refresh(self):
        """Re-run amd-smi when ``interval`` has passed (and it is installed)."""
        now = self.clock()
        if self._at is not None and now - self._at < self.interval:
            return
        self._at = now
        exe = self._executable()
        if exe is None:
            self.ecc, self.links = {}, {}
            return
        text = self._run(exe, ["metric", "--ecc", "--json"])
        self.ecc = parse_ecc(text) if text is not None else {}
        text = self._run(exe, ["xgmi", "--link-status", "--json"])
        self.links = parse_link_status(text) if text is not None else {}

    def apply(self, gpus):
        """Set ``ecc.errors.uncorrected.volatile.total``, ``ecc.errors.corrected.volatile.total``
        and ``xgmi.links_down`` on the AMD GPU dicts in ``gpus`` (matched by bus id, else by
        the per-vendor index, which is amd-smi's order: PCI bus order). Runs amd-smi first when
        due and only when there is an AMD GPU."""
        amd = [g for g in gpus if g.get("vendor") == "amd"]
        if not amd:
            return
        self.refresh()
        for gpu in amd:
            keys = (("bdf", (gpu.get("pci.bus_id") or "").lower()[-12:]), ("index", gpu.get("index")))
            ecc = next((self.ecc[k] for k in keys if k in self.ecc), None)
            if ecc is not None:
                gpu["ecc.errors.uncorrected.volatile.total"] = ecc["uncorrectable"]
                gpu["ecc.errors.corrected.volatile.total"] = ecc["correctable"]
            down = next((self.links[k] for k in keys if k in self.links), None)
            if down is not None:
                gpu["xgmi.links_down"] = down
