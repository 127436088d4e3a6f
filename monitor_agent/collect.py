"""Assembling one report (contract version 1) from the host, GPU, process and inventory collectors."""

import gc
import logging
import re
import threading
import time
import uuid

import psutil

from .amdsmi import AmdSmi
from .drm import DrmCollector
from .gpu import BackgroundGpu, GpuCollector
from .host import HostCollector
from .inventory import Inventory
from .kmsg import KmsgReader, bus_key
from .procinfo import ProcessInfo
from .runner import BoundedRunner

log = logging.getLogger("server_monitor.agent")

CONTRACT_VERSION = 1
# What the hub refuses in any string (server_monitor/storage/contract.py): control characters and
# bidi overrides. Text read from nvidia-smi, /proc or container tools may hold them.
_UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(value):
    """``value`` with every string inside it stripped of control and bidi override characters."""
    if isinstance(value, str):
        return _UNSAFE_CHARS.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


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
        if cfg.get("kmsg_path"):
            self.kmsg = KmsgReader(cfg["kmsg_path"], boot_time=psutil.boot_time())
        self.inventory = Inventory(interval=cfg.get("inventory_interval", 60), timeout=timeout)
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
        report["gpu_status"] = status
        report["gpus"] = gpus
        report["processes"] = processes
        report["mig_devices"] = gpu.get("mig_devices")  # None: no MIG GPU on this host
        report["gpu_topology"] = gpu.get("gpu_topology")  # None: not read this cycle
        report["containers"] = containers
        report.update(self._xid_events(gpus))
        if self.extra is not None:
            report.update(self.extra())
        return clean_text(report)
