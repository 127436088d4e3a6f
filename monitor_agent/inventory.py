"""Slow-changing host inventory: LXC/Incus instances and ZFS pools.

Collected by bounded calls to ``incus list`` / ``lxc list`` (JSON) and ``zpool list``
at most once per ``inventory_interval`` (default 60 s) and reused in between, so a
normal report cycle starts no process for it. Missing tools mean "none here", not an error.
Parsing is pure (``parse_instances``, ``parse_zpool``).
"""

import json
import shutil
import time

from .runner import BoundedRunner


def _int(value):
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def parse_instances(text, kind):
    """``incus/lxc list --format json`` output to a list of container dicts.

    Each: ``{"name", "project", "kind", "type", "state", "memory_bytes", "disk_bytes",
    "cpu_seconds", "ipv4"}`` (``cpu_seconds`` from ``state.cpu.usage`` ns; ``disk_bytes``
    from the root disk's usage; ``ipv4`` the first global IPv4 address).
    Returns [] for anything that is not the expected JSON.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    out = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        state = item.get("state") if isinstance(item.get("state"), dict) else {}
        memory = state.get("memory") if isinstance(state.get("memory"), dict) else {}
        disk = state.get("disk") if isinstance(state.get("disk"), dict) else {}
        root = disk.get("root") if isinstance(disk.get("root"), dict) else {}
        cpu = state.get("cpu") if isinstance(state.get("cpu"), dict) else {}
        ipv4 = None
        network = state.get("network") if isinstance(state.get("network"), dict) else {}
        for nic_name, nic in sorted(network.items()):
            if nic_name == "lo" or not isinstance(nic, dict):
                continue
            for addr in nic.get("addresses") or []:
                if isinstance(addr, dict) and addr.get("family") == "inet" and addr.get("scope") != "local":
                    ipv4 = str(addr.get("address"))[:64]
                    break
            if ipv4:
                break
        usage_ns = _int(cpu.get("usage"))
        out.append({
            "name": item["name"][:256],
            "project": str(item.get("project") or "default")[:128],
            "kind": kind,
            "type": str(item.get("type") or "container")[:32],
            "state": str(item.get("status") or state.get("status") or "Unknown")[:32],
            "memory_bytes": _int(memory.get("usage")),
            "disk_bytes": _int(root.get("usage")),
            "cpu_seconds": usage_ns / 1e9 if usage_ns is not None else None,
            "ipv4": ipv4,
        })
        if len(out) >= 1024:
            break
    return out


def parse_zpool(text):
    """``zpool list -Hp -o name,size,allocated,health`` to disk dicts (``fstype`` = ``zpool``)."""
    pools = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        name, size, allocated, health = parts
        pools.append({
            "mountpoint": "zpool:" + name[:1000],
            "device": name[:1024],
            "fstype": "zpool",
            "total_bytes": int(size),
            "used_bytes": int(allocated),
            "health": health[:32],
        })
    return pools


class Inventory:
    """Caches container and ZFS pool lists; refreshes them every ``interval`` seconds."""

    def __init__(self, interval=60.0, timeout=10.0, runner=None, which=shutil.which):
        self.interval = interval
        self.timeout = timeout
        self.runner = runner or BoundedRunner()
        self._which = which
        self._at = None
        self.containers = []
        self.zpools = []

    def _list_instances(self):
        for tool, kind in (("incus", "incus"), ("lxc", "lxc")):
            path = self._which(tool)
            if not path:
                continue
            for extra in (["--all-projects"], []):
                result = self.runner.run([path, "list", "--format", "json"] + extra, self.timeout)
                if result.state == "ok" and result.returncode == 0:
                    return parse_instances(result.stdout.decode("utf-8", "replace"), kind)
            return []
        return []

    def _list_zpools(self):
        path = self._which("zpool")
        if not path:
            return []
        result = self.runner.run([path, "list", "-Hp", "-o", "name,size,allocated,health"], self.timeout)
        if result.state == "ok" and result.returncode == 0:
            return parse_zpool(result.stdout.decode("utf-8", "replace"))
        return []

    def refresh(self, now=None):
        """Re-list when ``interval`` has passed; returns ``(containers, zpools)``."""
        now = time.monotonic() if now is None else now
        if self._at is None or now - self._at >= self.interval:
            self._at = now
            self.containers = self._list_instances()
            self.zpools = self._list_zpools()
        return self.containers, self.zpools
