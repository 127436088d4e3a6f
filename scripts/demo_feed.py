#!/usr/bin/env python3
"""Feed a demo fleet into a hub through its real ingest (``POST /api/report``).

``scripts/run.sh --demo`` starts this next to a hub whose data lives in ``.run/demo/``.
It builds a fleet of demo hosts from the GPU models of the real nvidia-smi captures in
``tests/fixtures/captures/`` (names, memory sizes, idle/load temperatures and power as
captured), then

1. posts one current report per host (the dashboard is right at once),
2. backfills the last ``--hours`` hours (default 24) as batches of older reports, the way an
   agent replays its spool: ``sample_time`` in the past, ``sent_at`` now, so the hub stores
   them at their sample time and its own maintenance builds the 5-minute/hourly roll-ups
   and the GPU-hours accounting from them;
3. keeps posting a live report per host every ``--interval`` seconds (unless ``--once``).

Every report is contract v1 (``server_monitor/storage/contract.py``) and is validated by the hub
like any agent's. Nothing here touches the agent's collectors or the database directly.

The simulated lab: users alice, bob, carol, ... running training, inference and notebooks
in LXC/Incus containers, Docker containers and Slurm jobs (named the way the agent names
them: ``job 4812``, a Docker container name, an LXC instance name, ``user-1003`` for a
plain login session; the Slurm hosts report their jobs' GPU allocations as the agent reads
them from ``scontrol``, and the first one has a GPU allocated to a job whose process has not
started yet), a few "held idle" GPUs (VRAM held, 0 % for hours), a MIG host, a
host whose GPU was lost 5 hours ago, one with an NVIDIA driver/library mismatch since
3 hours ago, one that went offline 40 minutes ago, a hot GPU and a nearly full disk.
The simulation is deterministic for a given ``--seed`` and report ids are derived from
host and time, so posting the same period twice stores it once.

Usage::

    scripts/demo_feed.py --url http://127.0.0.1:5100 --config .run/demo/config.yaml
    scripts/demo_feed.py --url ... --token TOKEN --hosts 6 --hours 2 --once

Exit status: 0 when done (``--once``) or stopped by a signal; 1 when the hub refuses a
report (the message names it) or cannot be reached at the start.
"""

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # capture_file: the captures' reader (stdlib only)

from capture_file import Capture  # noqa: E402

from monitor_agent.nvsmi import parse_value  # noqa: E402

USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"]
UIDS = {name: 1001 + i for i, name in enumerate(USERS)}
# (name, share of jobs, utilization profile, VRAM share of the GPU)
WORKLOADS = [
    ("python train.py --config configs/llama-7b.yaml", 0.30, "train", 0.85),
    ("/opt/conda/bin/python -m torch.distributed.run --nproc_per_node 8 pretrain.py", 0.15, "train", 0.9),
    ("python finetune_lora.py --model mistral-7b", 0.15, "train", 0.6),
    ("python -m vllm.entrypoints.openai.api_server", 0.12, "serve", 0.9),
    ("python eval_harness.py --tasks mmlu", 0.10, "eval", 0.5),
    ("/usr/bin/python3 -m ipykernel_launcher -f kernel.json", 0.07, "idle", 0.35),
]
GPU_MODELS = {
    # kind -> (capture substring, GPUs per host)
    "h100": ("h100-80gb", 8),
    "h200": ("h200", 8),
    "h100x4": ("h100-80gb", 4),
    "mig": ("h100-mig", 2),
    "rtx4080": ("rtx-4080", 1),
    "rtx2080": ("linux-x86_64__nvidia-geforce-rtx-2080", 4),
}
TICK = 900  # the scheduler decides every 15 minutes
JOB_NAMES = {"train": "train", "serve": "vllm-serve", "eval": "eval-mmlu", "idle": "jupyter"}  # Slurm JobName


def _num(row, field):
    cell = row.get(field)
    return None if cell is None else parse_value(cell[0], "num")


def load_model(capture):
    """Idle and load values of one captured GPU model: ``{field: (idle, load)}`` plus ``name``."""
    cap = Capture(capture)
    idle, load = cap.query_gpu("idle")[0], cap.query_gpu("load")[0]
    fields = ("memory.total", "temperature.gpu", "temperature.memory", "power.draw", "power.limit",
              "fan.speed", "clocks.sm", "clocks.mem")
    model = {f: (_num(idle, f), _num(load, f)) for f in fields}
    model["name"] = idle["name"][0]
    model["driver_version"] = idle["driver_version"][0]
    model["mig"] = idle.get("mig.mode.current", ("",))[0] == "Enabled"
    model["pstate"] = (idle.get("pstate", ("P8",))[0], load.get("pstate", ("P0",))[0])
    return model


def _uuid(seed, host, index):
    digest = hashlib.sha1(f"{seed}:{host}:{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def fleet_plan(count):
    """The demo hosts: a list of ``(hostname, model kind, owner style, special)`` for ``count`` hosts.

    Owner styles: ``lxc``, ``incus``, ``slurm``, ``docker``, ``login``. Specials: ``lost``
    (GPU 5 lost 5 h ago), ``driver`` (driver/library mismatch since 3 h ago), ``offline``
    (no report for the last 40 min), ``hot`` (GPU 2 at 88 °C), ``diskfull`` (/scratch 96 %).
    The first hosts carry the problem states, so a small demo still shows them.
    """
    plan = [
        ("dgx-a01", "h100", "lxc", "lost"), ("gpu-c01", "h100x4", "docker", "driver"),
        ("ws-f01", "rtx4080", "login", "offline"), ("dgx-b01", "h200", "slurm", "hot"),
        ("mig-e01", "mig", "incus", None), ("old-g01", "rtx2080", "login", "diskfull"),
    ]
    counters = {"dgx-a": 2, "dgx-b": 2, "gpu-c": 2, "gpu-d": 1, "ws-f": 2, "old-g": 2}
    kinds = {"dgx-a": ("h100", "lxc"), "dgx-b": ("h200", "slurm"), "gpu-c": ("h100x4", "docker"),
             "gpu-d": ("h100", "incus"), "ws-f": ("rtx4080", "login"), "old-g": ("rtx2080", "login")}
    cycle = ["dgx-a", "dgx-b", "gpu-c", "ws-f", "gpu-d", "dgx-a", "gpu-c", "ws-f", "old-g"]
    while len(plan) < count:
        prefix = cycle[len(plan) % len(cycle)]
        plan.append((f"{prefix}{counters[prefix]:02d}",) + kinds[prefix] + (None,))
        counters[prefix] += 1
    return plan[:count]


class Host:
    """One simulated host: identity, GPU model, the job schedule and its special state."""

    def __init__(self, name, kind, style, special, seed, start, models, pending_alloc=False):
        capture, gpus = GPU_MODELS[kind]
        self.name, self.kind, self.style, self.special = name, kind, style, special
        self.model = models.setdefault(capture, load_model(capture))
        self.gpu_count = gpus
        self.rng = random.Random(f"{seed}:{name}")
        self.machine_id = hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:32]
        self.uuids = [_uuid(seed, name, i) for i in range(gpus)]
        self.buses = [f"00000000:{0x18 + i * 0x11:02X}:00.0" for i in range(gpus)]
        self.cpu_count = {"rtx4080": 32, "rtx2080": 24, "mig": 64, "h100x4": 96}.get(kind, 224)
        self.mem_total = {"rtx4080": 64, "rtx2080": 128, "mig": 512, "h100x4": 1024}.get(kind, 2048) * 1024**3
        self.boot_time = start - self.rng.randint(3, 60) * 86400
        self.base_cpu = self.rng.uniform(2, 12)
        self.disk_total = self.rng.choice([2, 4, 8]) * 1024**4
        self.disk_base = self.rng.uniform(0.2, 0.7)
        self.jobs = self._schedule(start)
        if pending_alloc:
            self._add_pending_allocation(start + 86400)
        self.interval = 30 if special == "offline" else None  # None: the feeder's interval

    def _owner(self, user, job_id):
        if self.style == "slurm":
            return f"job {job_id}", "slurm"
        if self.style in ("lxc", "incus"):
            team = {"alice": "nlp", "bob": "nlp", "carol": "vision", "dave": "vision", "erin": "speech"}.get(user)
            return (f"{team}-lab" if team and self.rng.random() < 0.5 else f"{user}-dev"), self.style
        if self.style == "docker":
            return self.rng.choice([f"{user}-train", f"{user}-jupyter", "vllm-serve", "triton-infer"]), "docker"
        return f"user-{UIDS[user]}", "user-slice"

    def _schedule(self, start):
        """Jobs from ``start`` for 8 days: ``[(t0, t1, gpu indices, job dict)]`` (epoch s)."""
        rng = self.rng
        busy_until = [start - rng.randint(0, 6) * TICK for _ in range(self.gpu_count)]
        jobs, job_id = [], rng.randint(4000, 90000)
        load = rng.uniform(0.45, 0.9)  # how busy this host tends to be
        t = start - 8 * 3600  # begin earlier so the window opens mid-job
        end = start + 8 * 86400
        while t < end:
            free = [i for i in range(self.gpu_count) if busy_until[i] <= t]
            while free and rng.random() < load * 0.5:
                width = min(len(free), rng.choice([1, 1, 1, 2, 4, 8]))
                gpus = free[:width]
                free = free[width:]
                name, _, profile, vram = rng.choices(WORKLOADS, weights=[w[1] for w in WORKLOADS])[0]
                user = rng.choice(USERS[:9]) if rng.random() < 0.85 else rng.choice(USERS)
                hours = rng.uniform(3, 14) if profile == "idle" else rng.uniform(0.5, 9)
                t1 = t + int(hours * 3600 / TICK + 1) * TICK
                job_id += rng.randint(1, 40)
                container, kind = self._owner(user, job_id)
                if self.style == "docker" and rng.random() < 0.4:
                    user = "root"  # a container whose process runs as root
                job = {"job_id": job_id, "user": user, "uid": UIDS.get(user, 0), "container": container, "kind": kind,
                       "process": name, "profile": profile, "vram": vram * rng.uniform(0.6, 1.0),
                       "pid": rng.randint(2000, 4000000), "phase": rng.uniform(0, 6.28)}
                jobs.append((t, t1, gpus, job))
                for i in gpus:
                    busy_until[i] = t1
            t += TICK
        return jobs

    def _add_pending_allocation(self, now):
        """A Slurm job allocated one GPU 20 minutes before ``now`` whose CUDA process starts only
        40 minutes after ``now`` (staging its data): the GPU is allocated with no process, never
        free (``slurm_jobs``, as monitor_agent/slurm.py reports it). The GPU is one with no other
        job from then for 3 h (else the last GPU, taken from the jobs there)."""
        t0, t1 = now - 1200, now + 3 * 3600
        overlapping = lambda i: [j for j in self.jobs if i in j[2] and j[0] < t1 and j[1] > t0]  # noqa: E731
        gpu = next((i for i in reversed(range(self.gpu_count)) if not overlapping(i)), self.gpu_count - 1)
        for job in overlapping(gpu):
            job[2].remove(gpu)
        self.jobs = [j for j in self.jobs if j[2]]
        job_id = max((j[3]["job_id"] for j in self.jobs), default=4000) + 7
        self.jobs.append((t0, t1, [gpu], {
            "job_id": job_id, "user": "judy", "uid": UIDS["judy"], "container": f"job {job_id}", "kind": "slurm",
            "process": WORKLOADS[0][0], "profile": "train", "vram": 0.85, "pid": 3100000, "phase": 1.0,
            "process_from": now + 2400}))

    def allocations(self, t):
        """The ``slurm_jobs`` of a Slurm-style host at ``t`` (None elsewhere: no Slurm there)."""
        if self.style != "slurm":
            return None
        jobs = []
        for t0, t1, gpus, job in self.jobs:
            if t0 <= t < t1:
                jobs.append({"job_id": str(job["job_id"]), "user": job["user"], "uid": job["uid"], "partition": "gpu",
                             "name": JOB_NAMES[job["profile"]], "state": "RUNNING",
                             "start_time": float(t0), "gpu_indexes": list(gpus),
                             "gpu_uuids": [self.uuids[i] for i in gpus]})
        return jobs

    def alive(self, t, now):
        """Whether the host reports at ``t`` (the offline host stopped 40 minutes before ``now``)."""
        return not (self.special == "offline" and t > now - 2400)

    def holders(self, t):
        """``{gpu index: job}`` for the jobs running at ``t``."""
        out = {}
        for t0, t1, gpus, job in self.jobs:
            if t0 <= t < t1 and t >= job.get("process_from", t0):
                for i in gpus:
                    out[i] = job
        return out

    def report(self, t, now, interval):
        """A contract-v1 report of this host sampled at ``t`` (sent at ``now``)."""
        rng = random.Random(f"{self.machine_id}:{int(t)}")
        holders = self.holders(t)
        lost_since = now - 5 * 3600
        driver_since = now - 3 * 3600
        gpus, processes, total_util = [], [], 0.0
        status = {"state": "ok", "message": None, "lost": [], "stale": False}
        if self.special == "driver" and t >= driver_since:
            status = {"state": "driver_mismatch", "message": "Failed to initialize NVML: Driver/library version mismatch",
                      "lost": [], "stale": False}
        for i in range(0 if status["state"] != "ok" else self.gpu_count):
            if self.special == "lost" and i == 5 and t >= lost_since:
                status["state"] = "gpu_lost"
                status["lost"] = [{"pci.bus_id": self.buses[i][4:],
                                   "message": f"Unable to determine the device handle for GPU {self.buses[i][4:]}: Unknown Error"}]
                status["message"] = status["lost"][0]["message"]
                continue
            gpu, procs = self._gpu(i, holders.get(i), t, rng)
            gpus.append(gpu)
            processes.extend(procs)
            total_util += gpu["utilization.gpu"] or (50 if procs else 0)
        busy_share = total_util / (100 * self.gpu_count)
        cpu = min(100.0, self.base_cpu + busy_share * rng.uniform(35, 60) + rng.uniform(-2, 2))
        mem_used = int(self.mem_total * min(0.97, 0.08 + busy_share * 0.55 + rng.uniform(0, 0.03)))
        disk_used = self.disk_base + 0.05 * math.sin(t / 40000)
        disks = [{"mountpoint": "/", "device": "/dev/nvme0n1p2", "fstype": "ext4", "total_bytes": 512 * 1024**3,
                  "used_bytes": int(512 * 1024**3 * 0.41), "health": None},
                 {"mountpoint": "/scratch", "device": "/dev/md0", "fstype": "xfs", "total_bytes": self.disk_total,
                  "used_bytes": int(self.disk_total * (0.96 if self.special == "diskfull" else disk_used)), "health": None}]
        # Host temperatures as the agent reads them from hwmon (chip names and limits as on real
        # hosts, tests/fixtures/hwmon): the CPU follows its load, the NVMe drive its neighbours.
        cpu_chip = "k10temp"  # both demo CPU models are AMD (EPYC 9654, Ryzen 9 7950X)
        temperatures = [
            {"chip": cpu_chip, "label": "Tctl", "current_c": round(38 + cpu * 0.42 + rng.uniform(-1, 1), 1),
             "high_c": None, "critical_c": None},
            {"chip": "nvme", "label": "Composite", "current_c": round(34 + busy_share * 14 + rng.uniform(-0.5, 0.5), 2),
             "high_c": 81.85, "critical_c": 84.85}]
        containers = None
        if self.style in ("lxc", "incus"):
            names = sorted({job["container"] for _, _, _, job in self.jobs[:40]})[:12]
            containers = [{"name": n, "project": "default", "kind": self.style, "type": "container",
                           "state": "Running", "memory_bytes": rng.randint(2, 64) * 1024**3,
                           "disk_bytes": rng.randint(20, 400) * 1024**3, "cpu_seconds": float(rng.randint(1000, 10**7)),
                           "ipv4": f"10.20.{sum(map(ord, self.name)) % 250}.{10 + k}"} for k, n in enumerate(names)]
        return {
            "contract_version": 1,
            "report_id": f"demo-{self.machine_id[:12]}-{int(t)}",
            "sample_time": float(t),
            "sent_at": float(now),
            "interval": float(self.interval or interval),
            "host": {"machine_id": self.machine_id, "hostname": self.name, "os": "Ubuntu 22.04.5 LTS",
                     "kernel": "5.15.0-131-generic", "arch": "x86_64",
                     "cpu_model": "AMD EPYC 9654 96-Core Processor" if self.cpu_count > 64 else "AMD Ryzen 9 7950X",
                     "cpu_count": self.cpu_count, "boot_time": float(self.boot_time), "agent_version": "0.1.0"},
            "cpu": {"percent": round(max(0.0, cpu), 1), "load_1": round(cpu * self.cpu_count / 100, 2),
                    "load_5": round(cpu * self.cpu_count / 110, 2), "load_15": round(cpu * self.cpu_count / 120, 2)},
            "memory": {"total_bytes": self.mem_total, "used_bytes": mem_used, "swap_total_bytes": 8 * 1024**3,
                       "swap_used_bytes": 0},
            "network": {"rx_bytes_per_s": round(busy_share * rng.uniform(2e7, 4e8) + 2e4, 1),
                        "tx_bytes_per_s": round(busy_share * rng.uniform(1e6, 5e7) + 1e4, 1)},
            "uptime_s": float(t - self.boot_time),
            "disks": disks,
            "temperatures": temperatures,
            "gpu_status": status,
            "gpus": gpus,
            "processes": processes,
            "containers": containers,
            "slurm_jobs": self.allocations(t) if status["state"] == "ok" or status["state"] == "gpu_lost" else None,
            "probes": None,
            "agent": {"spool_depth": 0, "spool_bytes": 0, "spool_dropped": 0, "rejected": 0},
        }

    def _gpu(self, i, job, t, rng):
        m = self.model
        util = 0.0
        if job is not None:
            profile = job["profile"]
            if profile == "train":
                util = 88 + 10 * math.sin(t / 700 + job["phase"] + i) + rng.uniform(-4, 2)
                if rng.random() < 0.04:
                    util = rng.uniform(0, 20)  # checkpointing / data loading stall
            elif profile == "serve":
                util = 45 + 25 * math.sin(t / 5400 + job["phase"]) + rng.uniform(-8, 8)
            elif profile == "eval":
                util = 60 + rng.uniform(-25, 25)
            else:
                util = 0.0  # a notebook holding memory
        util = max(0.0, min(100.0, util))
        share = util / 100

        def mix(field, extra=0.0):
            idle, load = m[field]
            if idle is None or load is None:
                return idle if load is None else load
            return idle + (load - idle) * share + extra

        total = m["memory.total"][0]
        used = int(total * job["vram"]) if job else rng.randint(0, 4)
        temp = mix("temperature.gpu", rng.uniform(-1.5, 1.5) + (share * 14 if self.kind in ("h100", "h200") else 0))
        if self.special == "hot" and i == 2:
            temp = 88 + rng.uniform(0, 3)
        power = min(m["power.limit"][0], max(0.0, mix("power.draw", rng.uniform(-8, 8))))
        gpu = {
            "index": i, "uuid": self.uuids[i], "name": m["name"], "pci.bus_id": self.buses[i],
            "driver_version": m["driver_version"],
            "utilization.gpu": None if m["mig"] else round(util),
            "utilization.memory": None if m["mig"] else round(util * 0.55),
            "memory.used": used, "memory.total": total,
            "temperature.gpu": round(temp), "temperature.memory": None if m["temperature.memory"][0] is None else round(temp + 6),
            "power.draw": round(power, 2), "power.limit": m["power.limit"][0],
            "fan.speed": None if m["fan.speed"][0] is None else round(mix("fan.speed")),
            "clocks.sm": None if m["clocks.sm"][0] is None else int(mix("clocks.sm")),
            "clocks.mem": m["clocks.mem"][1],
            "pstate": m["pstate"][1] if job else m["pstate"][0],
            "clocks_event_reasons.active": 0x20 if self.special == "hot" and i == 2 else 0,
            "ecc.errors.uncorrected.volatile.total": 0 if self.kind in ("h100", "h200", "h100x4", "mig") else None,
            "retired_pages.pending": None, "remapped_rows.pending": False if self.kind != "rtx4080" else None,
            "mig.mode.current": m["mig"], "persistence_mode": True,
        }
        procs = []
        if job is not None:
            procs.append({"gpu_uuid": self.uuids[i], "pid": job["pid"] + i, "process_name": job["process"],
                          "used_gpu_memory": max(1, used - 500), "user": job["user"], "uid": job["uid"],
                          "container": job["container"], "container_kind": job["kind"]})
        return gpu, procs


def name_prefix(seed):
    """The host-name prefix of a feed with ``seed``: ``""`` for the demo's own seed ``demo``, else
    the seed as a host-name label (lower case, ``[a-z0-9-]``, at most 20 characters) and ``-``, so
    a second feed into the demo hub (``--seed lab1k``: ``lab1k-dgx-a01``) adds hosts instead of
    reusing the demo's 25 names."""
    if seed == "demo":
        return ""
    label = re.sub(r"[^a-z0-9-]+", "-", str(seed).lower()).strip("-")[:20].strip("-")
    return (label or hashlib.sha1(str(seed).encode()).hexdigest()[:8]) + "-"


def build_fleet(count=25, seed="demo", start=None):
    """``count`` :class:`Host` objects whose schedules begin at ``start`` (default: now), named
    by :func:`fleet_plan` after :func:`name_prefix` of ``seed``."""
    start = int(start or time.time())
    models = {}
    prefix = name_prefix(seed)
    plan = [(prefix + name, *rest) for name, *rest in fleet_plan(count)]
    first_slurm = next((name for name, _, style, _ in plan if style == "slurm"), None)
    return [Host(name, kind, style, special, seed, start - 86400, models, pending_alloc=name == first_slurm)
            for name, kind, style, special in plan]


class Poster:
    """POSTs batches of reports to ``<url>/api/report`` (gzip, bearer token) over one connection."""

    def __init__(self, url, token, timeout=60):
        import urllib3

        self.url = url.rstrip("/") + "/api/report"
        self.token = token
        self.http = urllib3.PoolManager(retries=urllib3.Retry(total=5, backoff_factor=0.5, status_forcelist=(503,),
                                                              allowed_methods=None),
                                        timeout=urllib3.Timeout(total=timeout))
        self.stored = 0

    def post(self, reports, max_bytes=900_000):
        """Send ``reports`` in batches under ``max_bytes`` of JSON each; raise RuntimeError on a refusal.

        ``sent_at`` is set as each batch is built: the hub measures clock skew from it, so it
        must be the real sending time, also for reports sampled long ago.
        """
        batch, size = [], 0
        for report in reports:
            report["sent_at"] = round(time.time(), 3)
            text = json.dumps(report, separators=(",", ":"))
            if batch and (size + len(text) > max_bytes or len(batch) >= 400):
                self._send(batch)
                batch, size = [], 0
            batch.append(text)
            size += len(text) + 1
        if batch:
            self._send(batch)

    def _send(self, texts):
        body = gzip.compress(('{"reports":[' + ",".join(texts) + "]}").encode(), compresslevel=5)
        response = self.http.request("POST", self.url, body=body, headers={
            "Authorization": "Bearer " + self.token, "Content-Type": "application/json", "Content-Encoding": "gzip"})
        if response.status != 207:
            raise RuntimeError(f"hub answered {response.status}: {response.data[:300].decode(errors='replace')}")
        for result in json.loads(response.data)["results"]:
            if result["status"] not in (200, 201):
                raise RuntimeError(f"hub refused report {result.get('report_id')}: {result.get('error')}")
            self.stored += result["status"] == 201


def backfill_times(hours, interval, now):
    """Sample times (epoch s, multiples of ``interval``) from ``now - hours`` up to before ``now``."""
    first = int((now - hours * 3600) // interval + 1) * interval
    return range(first, int(now) - interval + 1, interval)


def run(url, token, hosts=25, hours=24.0, interval=60, seed="demo", once=False, log=print):
    """Feed the demo fleet: current state, ``hours`` of history, then live reports.

    Returns the number of reports the hub stored. Raises RuntimeError when the hub
    refuses a report, urllib3 errors when it cannot be reached.
    """
    now = int(time.time())
    fleet = build_fleet(hosts, seed, now)
    poster = Poster(url, token)
    poster.post([h.report(now, now, interval) for h in fleet if h.alive(now, now)])
    log(f"demo: {len(fleet)} hosts reporting; backfilling {hours:g} h of history")
    started = time.time()
    next_live = now + interval

    def live_due():
        # Live reports keep coming while the backfill runs, so no host looks offline meanwhile.
        nonlocal next_live
        if time.time() >= next_live:
            t = int(time.time())
            poster.post([h.report(t, t, interval) for h in fleet if h.alive(t, now)])
            next_live += interval * (1 + int((time.time() - next_live) // interval))

    # The offline host first (its interval is shorter, so the hub marks it offline soonest),
    # then the others, oldest first, a slice of time across the fleet per batch.
    for host in fleet:
        if host.special == "offline":
            step = host.interval
            poster.post(host.report(t, now, interval) for t in backfill_times(hours, step, now) if host.alive(t, now))
    normal = [h for h in fleet if h.special != "offline"]
    times = list(backfill_times(hours, interval, now))
    for k in range(0, len(times), 30):
        poster.post(h.report(t, now, interval) for t in times[k:k + 30] for h in normal)
        live_due()
    log(f"demo: {poster.stored} reports stored in {time.time() - started:.0f} s")
    if once:
        return poster.stored
    while True:
        time.sleep(max(0.0, next_live - time.time()))
        live_due()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="hub base URL, e.g. http://127.0.0.1:5100")
    parser.add_argument("--config", help="hub config.yaml to read agent.token from")
    parser.add_argument("--token", help="agent token (default: from --config or $SERVER_MONITOR_AGENT_TOKEN)")
    parser.add_argument("--hosts", type=int, default=25, help="demo hosts (default 25)")
    parser.add_argument("--hours", type=float, default=24.0, help="history to backfill (default 24; 0: live reports only)")
    parser.add_argument("--interval", type=int, default=60, help="seconds between reports (default 60)")
    parser.add_argument("--seed", default="demo", help="simulation seed (default demo); another seed also prefixes "
                        "the host names (lab1k-dgx-a01), so its hosts never share the demo's names")
    parser.add_argument("--once", action="store_true", help="backfill and exit")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("SERVER_MONITOR_AGENT_TOKEN")
    if not token and args.config:
        from server_monitor.core import config as config_mod

        token = config_mod.load(args.config).get("agent.token")
    if not token:
        parser.error("give --token or --config")
    if not 0 <= args.hours <= 48 or args.interval < 10 or args.hosts < 1:
        parser.error("--hours must be in [0, 48] (0: live reports only), --interval >= 10, --hosts >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(args.url, token, args.hosts, args.hours, args.interval, args.seed, args.once,
            log=lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # one line for the operator, not a traceback
        print(f"demo feeder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
