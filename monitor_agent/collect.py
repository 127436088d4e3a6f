"""Assembling one report (contract version 1) from the host, GPU, process and inventory collectors."""

import gc
import logging
import threading
import time
import uuid

import psutil

from . import textrule
from .amdsmi import AmdSmi
from .drm import DrmCollector
from .gpu import BackgroundGpu, GpuCollector
from .host import HostCollector
from .inventory import Inventory
from .kmsg import KmsgReader, bus_key
from .procinfo import ProcessInfo
from .runner import BoundedRunner
from .slurm import SlurmCollector
from .temperatures import per_chip, read_temperatures

log = logging.getLogger("server_monitor.agent")

CONTRACT_VERSION = 1


def clean_text(value):
    """``value`` with every string inside it, at any depth, cleaned by the shared text rule
    (:mod:`monitor_agent.textrule`, the same rule the hub checks): each control, bidi,
    invisible character or lone surrogate becomes U+FFFD. Text read from nvidia-smi, /proc or
    container tools may hold them; the hub would otherwise replace them itself."""
    return textrule.clean_tree(value)


def freeze_startup_objects():
    """Collect once, then move every object alive now to the collector's permanent generation.

    Called after the first report (modules, collectors and their caches exist by then). Without
    it, each full (generation 2) collection walks all of them again, ~8 ms of CPU on a 2-vCPU
    VM (``python -m bench agent`` prints the figure), landing on whichever cycle triggers it;
    with it, a full collection walks only what later cycles allocated (~0.1 ms). Objects frozen
    here are never collected (they live as long as the agent anyway). Returns the number frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def incus_display_names(containers):
    """Map cgroup names of Incus/LXD instances in non-default projects to ``name (project)``.

    Incus names the cgroup of instance ``c1`` in project ``vision`` ``lxc.payload.vision_c1``.
    """
    names = {}
    for c in containers:
        if c.get("project") and c["project"] != "default":
            names[f"{c['project']}_{c['name']}"] = f"{c['name']} ({c['project']})"
    return names


class ReportBuilder:
    """Owns the collectors; :meth:`build` returns one report dict per call.

    ``cfg`` is a dict from :func:`monitor_agent.config.load`. ``extra`` is a callable
    returning more top-level fields (agent spool statistics, probe results).
    """

    def __init__(self, cfg, extra=None):
        self.interval = cfg["interval"]
        # Other bounded children (inventory, amd-smi) must fit well inside one interval.
        timeout = min(cfg["gpu_timeout"], max(1.0, self.interval * 0.4))
        # nvidia-smi runs in a background thread with its own hard limit (gpu_timeout per call):
        # a report waits for it at most 40 % of the interval, then carries the newest finished
        # sample with its age, so a slow but working nvidia-smi still delivers.
        self.gpu = GpuCollector(cfg["nvidia_smi"], timeout=cfg["gpu_timeout"], runner=BoundedRunner(),
                                topology_interval=cfg.get("inventory_interval", 60))
        self.gpu_background = BackgroundGpu(self.gpu, wait=min(cfg["gpu_timeout"], self.interval * 0.4))
        self.host = HostCollector(hostname=cfg.get("hostname"), machine_id=cfg.get("machine_id"))
        self.procs = ProcessInfo(proc_root=cfg.get("procfs_root", "/proc"))
        # AMD / Intel GPUs from sysfs and DRM fdinfo (no child process).
        self.drm = None
        if cfg.get("drm", True):
            self.drm = DrmCollector(cfg.get("sysfs_root", "/sys"), cfg.get("procfs_root", "/proc"),
                                    rediscover_s=cfg.get("inventory_interval", 60),
                                    min_vram_mib=cfg.get("drm_min_vram_mib", 4096))
        self.drm_timeout = timeout
        self._drm_thread = None  # a read that outlived its timeout (blocked in sysfs); None when none
        self._drm_seen = False  # AMD/Intel GPUs were found at least once
        # amd-smi only for ECC/RAS counts and XGMI links, at the inventory cadence; optional.
        self.amdsmi = AmdSmi(cfg.get("amd_smi"), interval=cfg.get("inventory_interval", 60), timeout=timeout)
        # NVIDIA XID errors from the kernel log (no child process; the file stays open).
        self.kmsg = None
        self._cycle = 0  # reports built, for how long a fallen-off GPU is kept (see _with_fallen)
        self._fallen_seen = {}  # bus key -> cycle it was first reported lost from the kernel log
        if cfg.get("kmsg_path"):
            self.kmsg = KmsgReader(cfg["kmsg_path"], boot_time=psutil.boot_time())
        self.inventory = Inventory(interval=cfg.get("inventory_interval", 60), timeout=timeout)
        # Slurm GPU allocations, only where scontrol is installed (no Slurm: no field, no child).
        self.slurm = None
        if cfg.get("slurm", True):
            self.slurm = SlurmCollector(cfg.get("scontrol") or "scontrol", node=cfg.get("slurm_node"),
                                        interval=cfg.get("slurm_interval", 60), timeout=timeout)
        self.groups = list(cfg.get("groups") or [])
        # Host temperatures from the hwmon sysfs tree (file reads only); None = not collected.
        self.temperature_root = cfg.get("sysfs_root", "/sys") if cfg.get("temperatures", True) else None
        self.extra = extra

    def _collect_drm(self, skip_bus_ids):
        """AMD/Intel GPUs with a deadline: ``(result, None)`` or ``(None, state)``.

        sysfs reads are file reads, but an amdgpu attribute can block while the GPU hangs or
        resets; the read runs in a daemon thread joined for at most ``drm_timeout`` seconds.
        ``state``: ``timeout`` (still blocked: left running, remembered), ``busy`` (an earlier
        read is still blocked; nothing started), ``error`` (the collector raised; logged).
        """
        if self._drm_thread is not None:
            if self._drm_thread.is_alive():
                return None, "busy"
            self._drm_thread = None
        box = {}

        def work():
            try:
                box["result"] = self.drm.collect(skip_bus_ids=skip_bus_ids)
            except Exception as exc:  # a collector bug must not cost the host's report
                box["error"] = exc

        thread = threading.Thread(target=work, name="drm-collect", daemon=True)
        thread.start()
        thread.join(self.drm_timeout)
        if thread.is_alive():
            self._drm_thread = thread
            return None, "timeout"
        if "error" in box:
            log.warning("AMD/Intel GPU collection failed: %r", box["error"])
            return None, "error"
        return box["result"], None

    def _xid_events(self, gpus):
        """``kmsg_state`` and ``xid_events`` (each with the ``gpu_uuid`` its bus id names, if known)."""
        if self.kmsg is None:
            return {"kmsg_state": "disabled", "xid_events": []}
        try:
            found = self.kmsg.collect()
        except Exception as exc:  # a collector bug must not cost the host's report
            log.warning("kernel log read failed: %r", exc)
            return {"kmsg_state": "error", "xid_events": []}
        by_bus = {bus_key(g.get("pci.bus_id")): g.get("uuid") for g in gpus if g.get("pci.bus_id")}
        for event in found["xid_events"]:
            event["gpu_uuid"] = by_bus.get(bus_key(event["pci.bus_id"]))
        return found

    def _with_fallen(self, status, gpus):
        """``status`` with the GPUs the kernel log said fell off the bus added to ``lost``.

        nvidia-smi usually names a lost GPU itself ("Unable to determine the device handle ...");
        newer drivers may print "GPU has fallen off the bus" with no Xid while nvidia-smi hangs
        (state ``timeout``) or still lists the GPU from a sample taken before. Such a GPU is
        reported like nvidia-smi's own lost GPUs (``gpu_status.lost``, state ``gpu_lost`` where it
        was ``ok``) until a fresh nvidia-smi sample, read two cycles later or more, shows a healthy
        row for its bus (a reset brought it back).
        """
        if self.kmsg is None:
            return status
        self._cycle += 1
        seen = self._fallen_seen
        fallen = self.kmsg.lost_gpus()
        if not fallen:
            return status
        healthy = set()
        if not status.get("stale"):
            healthy = {bus_key(g.get("pci.bus_id")) for g in gpus
                       if g.get("vendor") == "nvidia" and not g.get("state") and g.get("pci.bus_id")}
        lost = list(status.get("lost") or [])
        known = {bus_key(item.get("pci.bus_id")) for item in lost}
        added = []
        for item in fallen:
            key = bus_key(item["pci.bus_id"])
            first = seen.setdefault(key, self._cycle)
            if key in healthy and self._cycle - first >= 2:
                self.kmsg.forget(item["pci.bus_id"])
                seen.pop(key, None)
                continue
            if key not in known:
                added.append(dict(item))
                known.add(key)
        if not added:
            return status
        status = dict(status, lost=(lost + added)[:64])
        if status.get("state") == "ok":
            status["state"] = "gpu_lost"
            status["message"] = "; ".join(item["message"] for item in added)[:4096]
        return status

    def build(self):
        """Collect everything now; returns the report dict (see ``docs/api.md``)."""
        sample_time = time.time()
        report = {
            "contract_version": CONTRACT_VERSION,
            "report_id": str(uuid.uuid4()),
            "sample_time": sample_time,
            "interval": self.interval,
        }
        report.update(self.host.collect())
        if self.temperature_root is not None:
            try:
                report["temperatures"] = per_chip(read_temperatures(self.temperature_root)) or None
            except Exception as exc:  # a collector bug must not cost the host's report
                log.warning("temperature read failed: %r", exc)
        containers, zpools = self.inventory.refresh()
        report["disks"].extend(zpools)
        gpu = self.gpu_background.collect()
        status = gpu["status"]
        gpus = [dict(g, vendor="nvidia") for g in gpu["gpus"]]
        apps = list(gpu["processes"])
        if self.drm is not None:
            drm, failure = self._collect_drm([g.get("pci.bus_id") for g in gpus])
            if drm is None:
                drm = {"gpus": [], "processes": []}
                if self._drm_seen and status["state"] in ("ok", "not_installed", "gpu_lost"):
                    # The GPU list lacks the AMD/Intel GPUs: say why, so they are not taken as gone.
                    status = {"state": failure, "lost": status.get("lost") or [], "stale": failure != "error",
                              "message": {
                                  "timeout": f"reading AMD/Intel GPUs from sysfs did not finish within "
                                             f"{self.drm_timeout:g} s (a GPU hang or reset?)",
                                  "busy": "an earlier read of AMD/Intel GPUs from sysfs is still blocked",
                                  "error": "reading AMD/Intel GPUs from sysfs failed (see the agent's log)"}[failure]}
            else:
                self._drm_seen = self._drm_seen or bool(drm["gpus"])
                try:
                    self.amdsmi.apply(drm["gpus"])
                except Exception as exc:  # a collector bug must not cost the host's report
                    log.warning("amd-smi collection failed: %r", exc)
            gpus.extend(drm["gpus"])
            apps.extend(drm["processes"])
            if drm["gpus"] and status["state"] == "not_installed":
                # No nvidia-smi on an AMD/Intel host is normal: the GPU list is complete.
                status = {"state": "ok", "message": None, "lost": [], "stale": False}
        self.procs.new_cycle()
        renames = incus_display_names(containers)
        processes = []
        for app in apps:
            app = dict(app)
            app.update(self.procs.owner(app["pid"]))
            if app["container"] in renames:
                app["container"] = renames[app["container"]]
            processes.append(app)
        xid = self._xid_events(gpus)
        report["gpu_status"] = self._with_fallen(status, gpus)
        report["gpus"] = gpus
        report["processes"] = processes
        report["mig_devices"] = gpu.get("mig_devices")  # None: no MIG GPU on this host
        report["gpu_topology"] = gpu.get("gpu_topology")  # None: not read this cycle
        report["containers"] = containers
        report.update(xid)
        report["groups"] = self.groups
        if self.slurm is not None:
            try:
                allocations = self.slurm.collect(gpus)
            except Exception as exc:  # a collector bug must not cost the host's report
                log.warning("Slurm allocation read failed: %r", exc)
                allocations = None
            if allocations is not None:
                report.update(allocations)
        if self.extra is not None:
            report.update(self.extra())
        return clean_text(report)
