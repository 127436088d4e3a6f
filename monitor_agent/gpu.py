"""GPU collection: two bounded ``nvidia-smi --query-*`` calls per cycle, parsed by ``nvsmi``.

``nvidia-smi topo -m`` is not part of a cycle: the topology changes only with the set of GPUs
(reboot, hot-plug, driver reload), so :class:`BackgroundGpu` reads it between cycles, after a
collection's result is handed over, when the agent starts and when the GPU UUIDs or the driver
version change (at most once per ``topology_interval``), and the next report carries it.

The field set adapts to the installed driver: ``--help-query-gpu`` is read once, and a
field the driver still rejects (``Field "x" is not a valid field to query.``) is dropped
and remembered. Every outcome is reported by name in ``status["state"]``.
"""

import os
import shutil
import threading
import time

from . import nvsmi
from .runner import BoundedRunner

# MIG: the plain nvidia-smi table (memory and processes of each MIG device) is read at least this
# often (seconds), and at once on the first cycle, when -L changed, or when the compute processes
# on MIG GPUs are not the ones the last table placed (then at most once per MIG_RECHECK_S).
MIG_INTERVAL_S = 60
MIG_RECHECK_S = 10
# nvidia-smi -L (MIG device names and UUIDs) is read again this often even when the table shows
# no new layout (an instance destroyed and created again keeps its ids but gets a new UUID).
MIG_LIST_INTERVAL_S = 300

# topo -m is read again after this long even when nothing changed (a report lost on the way,
# a hub restored from an older backup), between cycles like every topology read (seconds).
TOPOLOGY_REFRESH_S = 86400

# Fields dropped one at a time before giving up on a cycle (a driver rejects one per run).
MAX_FIELD_RETRIES = 8


def _text(data):
    # Localised drivers and broken WSL installs print bytes that are not UTF-8.
    return data.decode("utf-8", errors="replace")


class GpuCollector:
    """Collects GPUs and compute processes from ``nvidia-smi``.

    ``nvidia_smi``: executable path or name. ``timeout``: seconds for each call.
    ``runner``: a :class:`BoundedRunner` (shared so that a hung child blocks later calls).
    ``discover_fields``: read ``--help-query-gpu`` once before the first query (else rely
    on the field-by-field fallback alone). ``topology_interval``: least seconds between two
    ``topo -m`` calls (:meth:`read_topology`, run between cycles by :class:`BackgroundGpu`).
    """

    def __init__(self, nvidia_smi="nvidia-smi", timeout=10.0, runner=None, discover_fields=True,
                 topology_interval=60.0):
        self.nvidia_smi = nvidia_smi
        self.timeout = timeout
        self.runner = runner or BoundedRunner()
        self.supported = None  # names from --help-query-gpu; None until learnt
        self.unsupported = set()
        self._discover = discover_fields
        self.calls = 0  # nvidia-smi processes started (for the benchmark)
        self.topology_calls = 0  # of which topo -m (between cycles)
        self.version = {"driver_version": None, "cuda_version": None}  # from --version, read once
        # MIG (only where a GPU has MIG enabled): -L listing, last table, when called.
        self._mig_listing = None
        self.topology_interval = topology_interval  # least seconds between nvidia-smi topo -m calls
        self._topo_at = None  # when topo -m last ran
        self._topo_key = None  # (driver version, GPU UUIDs) the last topology read was for
        self._gpu_key = None  # the same for the newest collection
        self._mig_table, self._mig_procs = [], []
        self._mig_listed_at = None  # when -L last ran
        self._mig_table_at = None  # when the table last ran (successful or not)
        self._mig_sampled = None  # when the last table that parsed was read

    def _run(self, args, timeout):
        result = self.runner.run([self.nvidia_smi] + args, timeout)
        if result.state not in ("busy", "not_found"):
            if args[:1] == ["topo"]:
                self.topology_calls += 1
            self.calls += 1
        return result

    def _learn_fields(self, timeout):
        result = self._run(["--help-query-gpu"], timeout)
        if result.state == "ok" and result.returncode == 0:
            names = nvsmi.parse_help_query_gpu(_text(result.stdout))
            if names:
                self.supported = names
            # The CUDA version is not a --query-gpu field: read it (and the driver version,
            # the fallback when driver_version/kmd_version print a sentinel) once.
            version = self._run(["--version"], timeout)
            if version.state == "ok" and version.returncode == 0:
                self.version = nvsmi.parse_version(_text(version.stdout))
        return result

    def collect(self):
        """One collection. Returns ``{"status": {...}, "gpus": [...], "processes": [...]}``.

        ``status``: ``{"state", "message", "lost", "stale"}`` with ``state`` one of
        ``ok``, ``gpu_lost`` (some rows missing, named by bus id in ``lost``),
        ``not_installed`` (no nvidia-smi: a host without NVIDIA GPUs, not an error),
        ``driver_mismatch``, ``no_devices``, ``driver_not_loaded``,
        ``insufficient_permissions``, ``timeout``, ``busy`` (an earlier call is still
        alive), ``error``. ``gpus``: dicts keyed by nvidia-smi field names
        (``nvsmi.GPU_FIELDS``). ``processes``: dicts from ``nvsmi.parse_compute_apps``.
        """
        name = self.nvidia_smi
        if not (os.path.exists(name) if os.sep in name else shutil.which(name)):
            # No nvidia-smi (an AMD/Intel-only host): say so without starting a process,
            # which would fork only for exec to fail. Checked every cycle (a few stat calls).
            return {"status": self._failure(self.runner.not_found()), "gpus": [], "processes": []}
        if self._discover:
            self._discover = False
            first = self._learn_fields(self.timeout)
            early = self._failure(first)
            if early is not None and early["state"] in ("not_installed", "timeout", "busy"):
                return {"status": early, "gpus": [], "processes": []}
        for _ in range(MAX_FIELD_RETRIES):
            fields = nvsmi.choose_fields(self.supported, self.unsupported)
            query = ",".join(name for _, name, _ in fields)
            result = self._run([f"--query-gpu={query}", "--format=csv,noheader,nounits"], self.timeout)
            failure = self._failure(result)
            if failure is None or failure["state"] != "error":
                break
            bad = nvsmi.invalid_field(_text(result.stdout) + _text(result.stderr))
            if bad is None or bad in self.unsupported:
                break
            self.unsupported.add(bad)
        gpus, lost, other = nvsmi.parse_gpu_rows(_text(result.stdout), fields) if result.state == "ok" else ([], [], [])
        if failure is not None and not gpus and not lost:
            return {"status": failure, "gpus": [], "processes": []}
        for gpu in gpus:
            if gpu.get("driver_version") is None:
                gpu["driver_version"] = self.version["driver_version"]
            gpu["cuda_version"] = self.version["cuda_version"]
        status = {"state": "ok", "message": None, "lost": lost, "stale": False}
        if lost:
            status["state"] = "gpu_lost"
            status["message"] = "; ".join(item["message"] for item in lost)[:4096]
        elif failure is not None:
            # Some rows parsed but nvidia-smi still failed: keep the rows, name the failure
            # from the lines that are not GPU rows (never another GPU's CSV row).
            state, message = nvsmi.classify_failure(result.returncode, "\n".join(other) + "\n" + _text(result.stderr))
            status.update(state=state if failure["state"] == "error" else failure["state"], message=message)
        elif other:
            status["message"] = other[0]
        processes = []
        apps = self._run(
            ["--query-compute-apps=" + ",".join(nvsmi.APP_FIELDS), "--format=csv,noheader,nounits"],
            self.timeout,
        )
        if apps.state == "ok":
            processes = nvsmi.parse_compute_apps(_text(apps.stdout))
        result = {"status": status, "gpus": gpus, "processes": processes}
        if gpus:
            self._gpu_key = (self.version["driver_version"], tuple(sorted(str(g.get("uuid")) for g in gpus)))
        if any(g.get("mig.mode.current") for g in gpus):
            result["mig_devices"] = self._mig(processes)
        return result

    def topology_due(self, now=None):
        """True when ``topo -m`` should run: GPUs seen whose UUID set or driver version differs
        from the last successful read (or none yet), and ``topology_interval`` has passed since
        the last call (so a failing ``topo -m`` is retried at that cadence, not every cycle);
        or the same GPUs read :data:`TOPOLOGY_REFRESH_S` ago (a daily refresh)."""
        now = time.time() if now is None else now
        if self._gpu_key is None:
            return False
        if self._gpu_key == self._topo_key:
            return now - self._topo_at >= max(TOPOLOGY_REFRESH_S, self.topology_interval)
        return self._topo_at is None or now - self._topo_at >= self.topology_interval

    def read_topology(self, now=None):
        """Runs ``nvidia-smi topo -m`` (bounded by ``timeout``). Returns ``nvsmi.parse_topo``'s
        ``{"gpus": [...], "links": [...]}``, or None when the call failed or printed no matrix."""
        self._topo_at = time.time() if now is None else now
        key = self._gpu_key
        topo = self._run(["topo", "-m"], self.timeout)
        if topo.state != "ok" or topo.returncode != 0:
            return None
        self._topo_key = key
        return nvsmi.parse_topo(_text(topo.stdout))

    def _mig(self, processes, now=None):
        """MIG devices of this host, with the processes placed in them (only where a GPU has MIG on).

        ``nvidia-smi -L`` names each MIG device (profile, ``MIG-`` UUID); plain ``nvidia-smi``
        gives its GPU/compute instance ids, memory and the processes in each compute instance.
        Both are read on the first cycle (so a one-shot ``--once`` report and the first report
        after a start carry each instance's memory and processes: an instance whose state is
        unknown must never look free). After that the table is read again after
        :data:`MIG_INTERVAL_S`, at once when ``-L`` changed, and when a compute process on a MIG
        GPU is one the last table did not place (a job started since; at most once per
        :data:`MIG_RECHECK_S`); ``-L`` again after :data:`MIG_LIST_INTERVAL_S` or when the table
        shows a device it does not name. So a cycle makes 0, 1 or 2 extra calls.

        Adds ``gpu_instance_id``, ``compute_instance_id`` and ``mig_uuid`` to the ``processes``
        it can place (a process the last table did not list stays unplaced: the hub then offers
        no instance of that GPU). Returns the list from :func:`nvsmi.mig_devices`, each with
        ``sampled_at`` (epoch s of the table read it comes from; None while no table was read,
        when memory and processes are unknown).
        """
        now = time.time() if now is None else now
        listed_now = changed = False
        if self._mig_listing is None or now - self._mig_listed_at >= MIG_LIST_INTERVAL_S:
            listed_now, changed = True, self._read_mig_listing(now)
        uuid_of = {gpu: info["uuid"] for gpu, info in (self._mig_listing or {}).items()}
        mig_gpus = {info["uuid"] for info in (self._mig_listing or {}).values() if info["mig"]}
        placed = {(uuid_of.get(p["gpu_index"]), p["pid"]) for p in self._mig_procs}
        unplaced = any(p["gpu_uuid"] in mig_gpus and (p["gpu_uuid"], p["pid"]) not in placed for p in processes)
        since = None if self._mig_table_at is None else now - self._mig_table_at
        if (self._mig_sampled is None or changed or since is None or since >= MIG_INTERVAL_S
                or (unplaced and since >= MIG_RECHECK_S)):
            self._mig_table_at = now
            table = self._run([], self.timeout)
            if table.state == "ok" and table.returncode == 0:
                self._mig_table, self._mig_procs = nvsmi.parse_mig_table(_text(table.stdout))
                self._mig_sampled = now
                layout = {(d["gpu_index"], d["mig_index"]) for d in self._mig_table}
                named = {(gpu, index) for gpu, info in (self._mig_listing or {}).items() for index in info["mig"]}
                if not listed_now and not layout <= named:
                    self._read_mig_listing(now)
        devices = nvsmi.mig_devices(self._mig_listing or {}, self._mig_table)
        if not devices and self._mig_listing:
            # Named by -L, no table read yet (or it failed): the instances, their state unknown.
            devices = [{"gpu_index": gpu, "gpu_uuid": info["uuid"], "mig_index": index, "uuid": mig["uuid"],
                        "profile": mig["profile"], "gpu_instance_id": None, "compute_instance_id": None,
                        "memory.used": None, "memory.total": None, "sm_count": None}
                       for gpu, info in sorted(self._mig_listing.items()) for index, mig in sorted(info["mig"].items())]
        for device in devices:
            device["sampled_at"] = self._mig_sampled if device["gpu_instance_id"] is not None else None
        by_instance = {(d["gpu_uuid"], d["gpu_instance_id"], d["compute_instance_id"]): d["uuid"] for d in devices}
        uuid_of = {gpu: info["uuid"] for gpu, info in (self._mig_listing or {}).items()}  # -L may have been re-read
        where_of = {(uuid_of.get(p["gpu_index"]), p["pid"]): p for p in self._mig_procs}
        for proc in processes:
            where = where_of.get((proc["gpu_uuid"], proc["pid"]))
            if where is not None and where["gpu_instance_id"] is not None:
                proc["gpu_instance_id"] = where["gpu_instance_id"]
                proc["compute_instance_id"] = where["compute_instance_id"]
                proc["mig_uuid"] = by_instance.get((proc["gpu_uuid"], where["gpu_instance_id"],
                                                    where["compute_instance_id"]))
        return devices

    def _read_mig_listing(self, now):
        """Runs ``nvidia-smi -L``; True when it answered with a listing other than the one held."""
        self._mig_listed_at = now
        listed = self._run(["-L"], self.timeout)
        if listed.state != "ok" or listed.returncode != 0:
            return False
        listing = nvsmi.parse_list_gpus(_text(listed.stdout))
        changed = self._mig_listing is not None and listing != self._mig_listing
        self._mig_listing = listing
        return changed

    def _failure(self, result):
        """Status dict for a failed run, or None when nvidia-smi exited 0."""
        if result.state == "not_found":
            return {"state": "not_installed", "message": None, "lost": [], "stale": False}
        if result.state == "timeout":
            return {"state": "timeout", "lost": [], "stale": True,
                    "message": f"nvidia-smi did not answer within {self.timeout:g} s and was killed"}
        if result.state == "busy":
            return {"state": "busy", "lost": [], "stale": True,
                    "message": "an earlier nvidia-smi call is still running (killed, not yet exited)"}
        if result.state == "error":
            return {"state": "error", "lost": [], "stale": False,
                    "message": "cannot run nvidia-smi: " + _text(result.stderr)[:400]}
        if result.returncode == 0:
            return None
        state, message = nvsmi.classify_failure(result.returncode, _text(result.stdout) + "\n" + _text(result.stderr))
        return {"state": state, "message": message, "lost": [], "stale": False}


class BackgroundGpu:
    """Runs :meth:`GpuCollector.collect` in one background thread so a slow nvidia-smi still delivers.

    Each :meth:`collect` starts a collection when none is running (never two at once: the
    thread owns the collector and its :class:`BoundedRunner`, which kills a call at the
    collector's hard ``timeout``), waits up to ``wait`` seconds for it, and returns:

    * the new result when it finished in time (``status.stale`` false);
    * otherwise the newest finished result, marked ``stale: true`` with ``age_s`` (seconds since
      that collection started), e.g. a 3 s nvidia-smi on a 5 s interval reports each sample one
      cycle late instead of never;
    * ``state: busy`` with no GPUs when nothing has finished yet.

    After handing a result over, the same thread reads ``nvidia-smi topo -m`` when
    :meth:`GpuCollector.topology_due` says so (between cycles: a cycle's collection makes only its
    two queries); the next result returned carries it as ``gpu_topology`` (absent otherwise).
    One-shot runs (``wait`` None) wait for that read and carry it at once.
    """

    def __init__(self, collector, wait):
        self.collector = collector
        self.wait = wait
        self._thread = None
        self._ready = threading.Event()  # set when the running thread's collection is done
        self._lock = threading.Lock()
        self._done = None  # (wall time the collection started, result)
        self._topology = None  # read between cycles, not yet handed over

    def _work(self, started, ready):
        try:
            result = self.collector.collect()
        except Exception as exc:  # a collector bug must not kill the thread silently
            result = {"status": {"state": "error", "message": f"GPU collection failed: {exc!r}"[:4096],
                                 "lost": [], "stale": False}, "gpus": [], "processes": []}
        with self._lock:
            self._done = (started, result)
        ready.set()
        try:
            if self.collector.topology_due():
                topology = self.collector.read_topology()
                if topology is not None:
                    with self._lock:
                        self._topology = topology
        except Exception:  # topology is optional; the next due read tries again
            pass

    def close(self):
        """Kill the nvidia-smi call in progress (at agent exit: no child outlives the agent)."""
        self.collector.runner.kill_current()

    def collect(self, now=None):
        """One report's GPU data: ``GpuCollector.collect`` output plus ``status.age_s`` when stale.

        ``wait`` None (one-shot runs) waits for the collection to end; each call is still bounded.
        """
        mine = None
        if self._thread is not None and self._thread.is_alive() and self._ready.is_set():
            self._thread.join(self.wait)  # the previous collection is done; its topo -m read is not
        if self._thread is None or not self._thread.is_alive():
            mine = time.time()
            self._ready = threading.Event()
            self._thread = threading.Thread(target=self._work, args=(mine, self._ready), name="nvidia-smi",
                                            daemon=True)
            self._thread.start()
        if self.wait is None:
            self._thread.join()
        else:
            self._ready.wait(self.wait)
        with self._lock:
            done = self._done
            topology, self._topology = self._topology, None
        now = time.time() if now is None else now
        if done is None:
            return {"status": {"state": "busy", "lost": [], "stale": True, "age_s": None,
                               "message": "nvidia-smi has not answered yet (still running; killed after "
                                          f"{self.collector.timeout:g} s)"},
                    "gpus": [], "processes": []}
        started, result = done
        if topology is not None:
            result = dict(result, gpu_topology=topology)
        if started == mine:
            return result
        status = dict(result["status"], stale=True, age_s=round(max(0.0, now - started), 1))
        return dict(result, status=status)
