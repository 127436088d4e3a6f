"""Slurm GPU allocations of this node: which GPUs a running job holds, before its CUDA process starts.

Source: ``scontrol show job -d`` (the detailed, multi-line form every Slurm release prints),
run at most once per ``slurm_interval`` (default 60 s) with a hard timeout and reused in
between, like the inventory collector. Only where ``scontrol`` is installed: no Slurm means
no child process, no field in the report and nothing logged. With ``-d`` each job carries
one detail line per node group, with the GPUs by Slurm GRES index::

    JobId=153291 JobName=train
       UserId=alice(1000) GroupId=lab(300) MCS_label=N/A
       JobState=RUNNING Reason=None Dependency=(null)
       ...
         Nodes=node-06 CPU_IDs=10-11,15,21 Mem=81920 GRES_IDX=gpu(IDX:0,2-3,5)   (Slurm <= 19.05)
         Nodes=gpu[01-02] CPU_IDs=0-7 Mem=0 GRES=gpu:a100:2(IDX:0-1)            (Slurm >= 20.02)

The node's partitions come from ``scontrol show node <NodeName>`` (``Partitions=gpu,debug`` on
its own line), read once per ``partition_interval`` (default 600 s: partitions change when an
admin edits slurm.conf) and sent as ``slurm_partitions``; the hub stores them as host groups of
source ``slurm``. Names that are not group names (server_monitor/storage/groups.py) are skipped.

Parsing is pure (:func:`parse_jobs`, :func:`node_allocations`, :func:`expand_hostlist`,
:func:`expand_indexes`, :func:`gres_gpu_indexes`); :class:`SlurmCollector` does the I/O.

GPU mapping: Slurm's ``IDX`` is the position of the device in the node's GRES list (gres.conf
``File=/dev/nvidia[0-7]``, or the GPUs found by ``AutoDetect=nvml``), which Slurm orders by
device file, i.e. by ``/dev/nvidiaN`` minor number. It is matched to the nvidia-smi GPU with
that ``index``: nvidia-smi indexes follow PCI bus order, and on the usual servers the minor
numbers do too. Where they differ (a gres.conf listing files out of order, or minor numbers
not in bus order) the mapping is wrong; docs/agent.md says how to check. MIG GRES (a type
naming a MIG profile such as ``1g.10gb``) index MIG devices, not GPUs, and are not mapped.
"""

import re
import shutil
import socket
import time

from .runner import BoundedRunner

# Job states in which the job holds its GRES on the node (squeue(1) JOB STATE CODES).
HOLDING_STATES = frozenset(("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING",
                            "STAGE_OUT"))
# Lines whose value is free text a job's owner controls (may hold spaces and "Key=" words):
# never split into fields. JobName is the last field of the first line and read to its end.
_FREE_TEXT = ("Command=", "WorkDir=", "StdErr=", "StdIn=", "StdOut=", "Comment=", "AdminComment=",
              "SystemComment=", "Reason=", "Features=", "Licenses=", "Network=")
# One GRES entry of a detail line: name[:type][:count](IDX:list) or (CNT:n); type may be (null).
_GRES_ENTRY = re.compile(r"([A-Za-z0-9_]+)((?::(?:\(null\)|[^,():]*))*)\((IDX|CNT):([^)]*)\)")
_MIG_TYPE = re.compile(r"\d+g\.\d+gb", re.IGNORECASE)
_USER = re.compile(r"^(.*)\((\d+)\)$")
MAX_HOSTLIST = 100000  # names one hostlist expression may expand to
# A partition name the hub accepts as a group name (monitor_agent/config.py GROUP_PATTERN).
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PARTITIONS = 32


def node_partitions(text, node=None):
    """Partitions of one node from ``scontrol show node <name>`` output (multi-line or ``-o``).

    Returns a sorted list of names (``Partitions=gpu,debug`` → ``["debug", "gpu"]``), ``[]`` when
    the node is in no partition (no ``Partitions=`` field), or ``None`` when ``text`` has no
    ``NodeName=`` record for ``node`` (any node when ``node`` is None). Names outside the group
    name rule are dropped; at most :data:`MAX_PARTITIONS`.
    """
    records = re.split(r"(?m)^(?=NodeName=)", text or "")
    for record in records:
        match = re.match(r"NodeName=(\S+)", record)
        if not match or (node is not None and match.group(1) != node):
            continue
        field = re.search(r"(?:^|\s)Partitions=(\S*)", record)
        if not field:
            return []
        names = {p for p in field.group(1).split(",") if _GROUP_NAME.fullmatch(p)}
        return sorted(names)[:MAX_PARTITIONS]
    return None


def expand_indexes(text):
    """``"0,2-3,5"`` → ``[0, 2, 3, 5]``; ``"N/A"`` or anything malformed → ``[]``.

    Indexes are capped at 1023 (a node has far fewer GPUs).
    """
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            return []
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo or hi > 1023:
            return []
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def _split_top(text, sep=","):
    """Split on ``sep`` outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p]


def expand_hostlist(expr):
    """A Slurm hostlist expression to host names: ``node-[63-65]`` → ``node-63, node-64, node-65``.

    Handles comma-separated lists, several bracket groups (``r[1-2]n[1-2]``) and zero padding
    (``gpu[01-03]``), as ``scontrol show hostnames`` does. Malformed parts are kept as given.
    At most :data:`MAX_HOSTLIST` names are returned.
    """
    names = []
    for part in _split_top(expr or ""):
        match = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", part)
        if not match:
            names.append(part)
            continue
        prefix, ranges, rest = match.groups()
        tails = expand_hostlist(rest) if rest else [""]
        for item in ranges.split(","):
            bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if not bounds:
                names.append(part)
                break
            lo, hi = bounds.group(1), bounds.group(2) or bounds.group(1)
            width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
            if int(hi) - int(lo) > MAX_HOSTLIST:
                break
            for n in range(int(lo), int(hi) + 1):
                for tail in tails:
                    names.append(f"{prefix}{str(n).zfill(width)}{tail}")
                    if len(names) >= MAX_HOSTLIST:
                        return names
    return names


def gres_gpu_indexes(value):
    """GPU indexes of one detail line's ``GRES=`` / ``GRES_IDX=`` value.

    ``gpu:a100:2(IDX:0-1)`` → ``[0, 1]``; ``gg:g0(CNT:1),gpu:1(IDX:3)`` → ``[3]``;
    ``gpu(IDX:0,2-3,5)`` → ``[0, 2, 3, 5]``; ``gpu:h200:0(IDX:N/A)`` and ``""`` → ``[]``.
    Entries of other GRES (shard, mps, licenses as GRES) and MIG types are left out.
    """
    out = set()
    for name, types, kind, idx in _GRES_ENTRY.findall(value or ""):
        if name != "gpu" or kind != "IDX" or _MIG_TYPE.search(types):
            continue
        out.update(expand_indexes(idx))
    return sorted(out)


def _fields(line, record):
    for token in line.split():
        key, eq, value = token.partition("=")
        if eq and key not in record:
            record[key] = value


def parse_jobs(text):
    """``scontrol show job -d`` output → list of job dicts.

    Each: ``{"JobId", "ArrayJobId", "ArrayTaskId", "JobName", "UserId", "JobState",
    "Partition", "StartTime", ..., "details": [{"Nodes", "CPU_IDs", "Mem", "GRES"}]}``: every
    ``Key=Value`` of the job's structured lines as strings (first occurrence wins), the
    free-text lines (Command, WorkDir, Std*, Comment, Reason, ...) left out, ``JobName`` read
    to the end of the first line, and one ``details`` entry per ``Nodes=`` line (the old
    ``GRES_IDX=`` key is given as ``GRES``). A job record starts at a line beginning with
    ``JobId=``. Only the multi-line form is read: in ``--oneliner`` output a job name holding
    ``Key=`` words could pose as fields. Never raises.
    """
    jobs, job = [], None
    for raw in (text or "").splitlines():
        line = raw.strip()
        if raw.startswith("JobId="):
            job = {"details": []}
            jobs.append(job)
            head, _, name = line.partition(" JobName=")
            _fields(head, job)
            job["JobName"] = name
            continue
        if job is None or not line or line.startswith(_FREE_TEXT):
            continue
        if line.startswith("Nodes="):
            detail = {}
            _fields(line, detail)
            if "GRES" not in detail and "GRES_IDX" in detail:
                detail["GRES"] = detail.pop("GRES_IDX")
            job["details"].append(detail)
            continue
        _fields(line, job)
    return jobs


def _start_time(text):
    """Slurm's ``StartTime`` (``2019-02-07T16:05:09``, the cluster's local time) → epoch s, or None."""
    try:
        return float(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))
    except (TypeError, ValueError, OverflowError):
        return None


def job_display_id(job):
    """The id users know: ``ArrayJobId_ArrayTaskId`` for an array task (as squeue prints), else JobId."""
    array, task = job.get("ArrayJobId"), job.get("ArrayTaskId")
    if array and task and array.isdigit() and task.isdigit():
        return f"{array}_{task}"
    return job.get("JobId")


def node_allocations(jobs, node):
    """The GPU allocations of node ``node`` among ``jobs`` (from :func:`parse_jobs`).

    Returns a list of ``{"job_id", "array_id", "user", "uid", "partition", "name", "state",
    "start_time", "gpu_indexes"}`` (``job_id`` the JobId, as in the job's cgroup ``job_<id>``;
    ``array_id`` ``ArrayJobId_ArrayTaskId`` for an array task, else None; ``uid`` int or None;
    ``start_time`` epoch s or None; ``gpu_indexes`` Slurm GRES indexes, sorted), one per job
    holding at least one GPU of this node in a state of :data:`HOLDING_STATES`.
    """
    out = []
    for job in jobs:
        state = (job.get("JobState") or "").upper()
        if state not in HOLDING_STATES or not (job.get("JobId") or "").isdigit():
            continue
        indexes = set()
        for detail in job["details"]:
            if node in expand_hostlist(detail.get("Nodes")):
                indexes.update(gres_gpu_indexes(detail.get("GRES")))
        if not indexes:
            continue
        user, uid = job.get("UserId") or "", None
        match = _USER.match(user)
        if match:
            user, uid = match.group(1), int(match.group(2))
        out.append({
            "job_id": job["JobId"],
            "array_id": job_display_id(job) if job_display_id(job) != job["JobId"] else None,
            "user": user[:256] or None,
            "uid": uid if uid is not None and uid < 2**32 else None,
            "partition": (job.get("Partition") or "")[:128] or None,
            "name": (job.get("JobName") or "")[:256] or None,
            "state": state[:32],
            "start_time": _start_time(job.get("StartTime")),
            "gpu_indexes": sorted(indexes)[:64],
        })
        if len(out) >= 1024:
            break
    return out


def map_to_gpus(allocations, gpus):
    """Add ``gpu_uuids`` to each allocation: the NVIDIA GPUs of this report whose nvidia-smi
    ``index`` equals a Slurm GRES index (see the module docstring for the caveat). An index
    with no such GPU is left out of ``gpu_uuids`` (kept in ``gpu_indexes``)."""
    by_index = {g.get("index"): g.get("uuid") for g in gpus
                if g.get("vendor", "nvidia") == "nvidia" and g.get("uuid") and g.get("index") is not None}
    for alloc in allocations:
        alloc["gpu_uuids"] = [by_index[i] for i in alloc["gpu_indexes"] if i in by_index]
    return allocations


class SlurmCollector:
    """Caches this node's Slurm GPU allocations; re-reads them every ``interval`` seconds.

    ``scontrol``: command name or path (looked up on PATH); ``node``: this node's Slurm
    NodeName (default: the short host name, which is what Slurm uses unless slurmd runs
    with ``-N``). :meth:`collect` returns ``None`` where scontrol is not installed (the
    report then carries no Slurm fields), else ``{"slurm_state", "slurm_jobs"}``.
    """

    def __init__(self, scontrol="scontrol", node=None, interval=60.0, timeout=10.0, runner=None,
                 which=shutil.which, partition_interval=600.0):
        self.scontrol = scontrol
        self.partition_interval = partition_interval
        self._partitions_at = None
        self.partitions = None  # the node's partitions as last read; None = not known
        self.node = node or socket.gethostname().split(".")[0]
        self.interval = interval
        self.timeout = timeout
        self.runner = runner or BoundedRunner()
        self._which = which
        self._at = None
        self._result = None

    def _read(self, now=None):
        path = self._which(self.scontrol) if self.scontrol else None
        if not path:
            return None
        result = self.runner.run([path, "show", "job", "-d"], self.timeout)
        if result.state == "ok" and result.returncode == 0:
            self._read_partitions(path, now)
            jobs = parse_jobs(result.stdout.decode("utf-8", "replace"))
            return {"slurm_state": "ok", "slurm_jobs": node_allocations(jobs, self.node)}
        if result.state == "not_found":
            return None
        state = "timeout" if result.state in ("timeout", "busy") else "error"
        # The last allocations read stay in force (a slow slurmctld must not free every GPU).
        previous = self._result["slurm_jobs"] if self._result else []
        return {"slurm_state": state, "slurm_jobs": previous}

    def _read_partitions(self, path, now=None):
        """Re-read the node's partitions when ``partition_interval`` has passed (failures keep the last)."""
        now = time.monotonic() if now is None else now
        if self._partitions_at is not None and now - self._partitions_at < self.partition_interval:
            return
        self._partitions_at = now
        result = self.runner.run([path, "show", "node", self.node], self.timeout)
        if result.state == "ok" and result.returncode == 0:
            found = node_partitions(result.stdout.decode("utf-8", "replace"), self.node)
            if found is not None:
                self.partitions = found

    def collect(self, gpus, now=None):
        """This node's allocations, re-read when ``interval`` has passed, mapped to ``gpus``
        (the report's GPU list). Never raises for scontrol's output or failures."""
        now = time.monotonic() if now is None else now
        if self._at is None or now - self._at >= self.interval:
            self._at = now
            self._result = self._read(now)
        if self._result is None:
            return None
        jobs = [dict(j) for j in self._result["slurm_jobs"]]
        out = {"slurm_state": self._result["slurm_state"], "slurm_jobs": map_to_gpus(jobs, gpus)}
        if self.partitions is not None:
            out["slurm_partitions"] = list(self.partitions)
        return out


__all__ = ["node_partitions", "parse_jobs", "node_allocations", "expand_hostlist", "expand_indexes", "gres_gpu_indexes",
           "map_to_gpus", "job_display_id", "SlurmCollector"]
