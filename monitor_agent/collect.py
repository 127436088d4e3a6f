"""Assembling one report (contract version 1) from the host, GPU and process collectors."""

import time
import uuid

from .gpu import GpuCollector
from .host import HostCollector
from .procinfo import ProcessInfo

CONTRACT_VERSION = 1


class ReportBuilder:
    """Owns the collectors; :meth:`build` returns one report dict per call.

    ``cfg`` is a dict from :func:`monitor_agent.config.load` (keys ``interval``,
    ``nvidia_smi``, ``gpu_timeout``, ``proc_root``).
    """

    def __init__(self, cfg):
        self.interval = cfg["interval"]
        # Two nvidia-smi calls must fit well inside one interval.
        timeout = min(cfg["gpu_timeout"], max(1.0, self.interval * 0.4))
        self.gpu = GpuCollector(cfg["nvidia_smi"], timeout=timeout)
        self.host = HostCollector(hostname=cfg.get("hostname"), machine_id=cfg.get("machine_id"))
        self.procs = ProcessInfo(proc_root=cfg.get("proc_root", "/proc"))

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
        gpu = self.gpu.collect()
        self.procs.new_cycle()
        processes = []
        for app in gpu["processes"]:
            app = dict(app)
            app.update(self.procs.owner(app["pid"]))
            processes.append(app)
        report["gpu_status"] = gpu["status"]
        report["gpus"] = gpu["gpus"]
        report["processes"] = processes
        return report
