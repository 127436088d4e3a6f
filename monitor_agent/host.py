"""Host metrics from psutil, as rates and percentages over the whole report interval.

CPU percent and network rates come from counter deltas between two calls (the first
call primes them), so a report describes the interval rather than a one-second blip.
Network totals leave out loopback, veth, bridges and container interfaces; a counter
that goes backwards (reboot, wrap, NIC reset) restarts the delta instead of going
negative.
"""

import logging
import os
import platform
import re
import socket
import time

import psutil

from . import __version__

log = logging.getLogger("server_monitor.agent.host")

# Interfaces that carry no traffic of their own (container plumbing, bridges, tunnels).
_VIRTUAL_NIC = re.compile(
    r"^(lo|veth|br-|docker|virbr|vnet|cni|flannel|cali|tunl|vxlan|lxcbr|lxdbr|incusbr|tap|kube-ipvs|weave|genev|dummy)"
)
# Filesystems that are not storage people fill up.
_PSEUDO_FS = {
    "overlay", "squashfs", "tmpfs", "devtmpfs", "proc", "sysfs", "cgroup", "cgroup2",
    "autofs", "nsfs", "tracefs", "debugfs", "securityfs", "pstore", "bpf", "fusectl",
    "configfs", "mqueue", "hugetlbfs", "ramfs", "devpts", "efivarfs", "binfmt_misc",
    "rpc_pipefs", "fuse.lxcfs", "fuse.snapfuse", "nfsd", "iso9660", "shiftfs",
}


def read_machine_id(path="/etc/machine-id"):
    """The 32-hex ``/etc/machine-id`` (stable per install), or None when absent/unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as fp:
            value = fp.read().strip()
    except OSError:
        return None
    return value if re.fullmatch(r"[0-9a-fA-F]{32}", value) else None


def os_pretty_name(path="/etc/os-release"):
    """``PRETTY_NAME`` from os-release, else ``platform.platform()``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fp:
            for line in fp:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')[:256]
    except OSError:
        pass
    return platform.platform()[:256]


def cpu_model(path="/proc/cpuinfo"):
    """CPU model name from /proc/cpuinfo (``model name``), else ``platform.processor()``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fp:
            for line in fp:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()[:256]
    except OSError:
        pass
    return platform.processor()[:256] or None


def is_physical_nic(name):
    """True for interfaces counted in the host's network totals."""
    return not _VIRTUAL_NIC.match(name)


def hub_hostname(name):
    """``name`` in the characters the hub accepts (ASCII letters, digits, '.', '-', '_'; see
    ``server_monitor.storage.contract.HOSTNAME_PATTERN``): others become '-'; empty becomes "unknown"."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name or "")[:253].lstrip("._-")
    return name or "unknown"


class HostCollector:
    """Collects the host part of a report. Keep one instance for the agent's lifetime."""

    def __init__(self, machine_id_path="/etc/machine-id", hostname=None, machine_id=None):
        self._hostname = hostname
        self._name_noted = None  # the host name whose rewrite was logged (once per name)
        self._static = {
            "machine_id": machine_id or read_machine_id(machine_id_path),
            "os": os_pretty_name(),
            "kernel": platform.release()[:256],
            "arch": platform.machine()[:64],
            "cpu_model": cpu_model(),
            "agent_version": __version__,
        }
        self._net_prev = None
        psutil.cpu_percent(interval=None)  # prime the CPU counters
        self._net_rates()  # prime the network counters

    def _net_rates(self):
        now = time.monotonic()
        counters = psutil.net_io_counters(pernic=True)
        current = {
            name: (c.bytes_recv, c.bytes_sent) for name, c in counters.items() if is_physical_nic(name)
        }
        prev, self._net_prev = self._net_prev, (now, current)
        if prev is None or now - prev[0] <= 0:
            return None, None
        elapsed = now - prev[0]
        rx = tx = 0
        for name, (recv, sent) in current.items():
            old = prev[1].get(name)
            if old is None:
                continue
            # A counter that went backwards was reset: count nothing for it this time.
            rx += max(0, recv - old[0])
            tx += max(0, sent - old[1])
        return rx / elapsed, tx / elapsed

    def disks(self):
        """Real mounted filesystems: ``[{"mountpoint","device","fstype","total_bytes","used_bytes"}]``.

        Pseudo, overlay and squashfs mounts are skipped; ZFS datasets are kept (one
        row per pool root), bind mounts of the same device are reported once.
        """
        out, seen = [], set()
        for part in psutil.disk_partitions(all=False):
            if part.fstype in _PSEUDO_FS or part.fstype.startswith("fuse.") and part.fstype != "fuse.zfs":
                continue
            if part.fstype == "zfs" and "/" in part.device:
                continue  # a child dataset; the pool root reports the pool's space
            if part.device in seen and part.fstype != "zfs":
                continue
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            if usage.total == 0:
                continue
            seen.add(part.device)
            out.append(
                {
                    "mountpoint": part.mountpoint[:1024],
                    "device": part.device[:1024],
                    "fstype": part.fstype[:64],
                    "total_bytes": usage.total,
                    "used_bytes": usage.used,
                }
            )
            if len(out) >= 256:
                break
        return out

    def collect(self):
        """Host metrics for one report: ``{"host", "cpu", "memory", "network", "uptime_s", "disks"}``.

        Sources: psutil (cpu_percent since the previous call, virtual_memory,
        swap_memory, net_io_counters deltas, disk_usage, boot_time), os.getloadavg().
        """
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        try:
            load = os.getloadavg()
        except OSError:
            load = (None, None, None)
        rx, tx = self._net_rates()
        boot = psutil.boot_time()
        host = dict(self._static)
        given = self._hostname or socket.gethostname()[:253]
        name = hub_hostname(given)
        if name != given and self._name_noted != given:
            # Said once per name (not every cycle): the hub lists this host under the name sent.
            self._name_noted = given
            log.warning("host name %r is sent as %r: the hub takes only ASCII letters, digits, '.', '-' and '_'"
                        " (each other character becomes '-'); set hostname: in the agent config to choose the name",
                        given, name)
        host.update(hostname=name, cpu_count=psutil.cpu_count() or 1, boot_time=boot)
        return {
            "host": host,
            "cpu": {
                "percent": min(100.0, max(0.0, psutil.cpu_percent(interval=None))),
                "load_1": load[0],
                "load_5": load[1],
                "load_15": load[2],
            },
            "memory": {
                "total_bytes": vm.total,
                "used_bytes": vm.total - vm.available,
                "swap_total_bytes": swap.total,
                "swap_used_bytes": swap.used,
            },
            "network": {"rx_bytes_per_s": rx, "tx_bytes_per_s": tx},
            "uptime_s": max(0.0, time.time() - boot),
            "disks": self.disks(),
        }
