"""Agent cost per report cycle on an 8-GPU / 64-process host: NVIDIA and AMD side by side.

    .venv/bin/python -m bench agent [--cycles 1000] [--case nvidia|amd|both] [--inventory-interval 2]

NVIDIA case: a fake nvidia-smi. AMD case: no nvidia-smi; 8 x MI300X in a sysfs fixture tree
and 64 GPU processes (each with 30 other fds) among 300 other processes (20 fds each) in a
procfs fixture tree built by tests/drm_tree.py, read through ``sysfs_root`` / ``procfs_root``.

Measures, per cycle of ReportBuilder.build() plus JSON encoding and gzip (what the
agent does besides waiting on the network): nvidia-smi calls and other child processes
started (counted with a sys.addaudithook on process creation), the agent's own CPU time
(time.process_time: children such as nvidia-smi are excluded), RSS over the run, and the
report size. The fake answers from pre-rendered files through a tiny shell script, so
its own cost stays out of the agent's figures.

``nvidia-smi topo -m`` runs between cycles (in the agent's nvidia-smi thread, after a cycle's
result is handed over) when the GPU set or driver changes, at most once per
``inventory_interval`` (shortened to ``--inventory-interval`` seconds here so a run spans
several). Halfway through the run the fake's GPUs are replaced by others (new UUIDs, as after a
hot-plug), so the run shows a second read. Calls per cycle count what each cycle's collection
started; the ``topo -m`` reads are counted apart, with the most calls started in one cycle's
window (from one build() to the next) including them.
"""

import argparse
import gc
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Not bench.common: that imports the hub (Datasette), whose memory would count in the agent's RSS.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import psutil  # noqa: E402
import resource  # noqa: E402

from monitor_agent import nvsmi  # noqa: E402
from monitor_agent.collect import ReportBuilder, freeze_startup_objects  # noqa: E402
from monitor_agent.config import check  # noqa: E402

import drm_tree  # noqa: E402

FAKE = os.path.join(ROOT, "tests", "fake_nvidia_smi.py")
GPUS, PROCS_PER_GPU = 8, 8

spawned = []
hooks = []


def audit(event, args):
    if event in ("subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.system"):
        argv = args[1] if event == "subprocess.Popen" and len(args) > 1 else None
        program = os.path.basename(str(argv[0] if isinstance(argv, (list, tuple)) and argv else argv or ""))
        spawned.append(program)


TOPOLOGY = os.path.join(ROOT, "tests", "fixtures", "topo", "8gpu-nvlink-pairs.txt")


def script_for(directory):
    """A tiny nvidia-smi answering from ``directory``'s pre-rendered files (rewritten in place)."""
    script = os.path.join(os.path.dirname(directory), "nvidia-smi")
    with open(script + ".new", "w") as fp:
        fp.write(f'#!/bin/sh\nexec cat "{directory}/$(printf %s "$*" | md5sum | cut -c1-32).out"\n')
    os.chmod(script + ".new", 0o755)
    os.replace(script + ".new", script)
    return script


def prepare(directory, seed="bench"):
    """Pre-render the fake's answers for the exact argument lists the agent uses into ``directory``."""
    os.makedirs(directory)
    env = dict(os.environ, FAKE_NVSMI_GPUS=str(GPUS), FAKE_NVSMI_PROCS=str(PROCS_PER_GPU),
               FAKE_NVSMI_PID=str(os.getpid()), FAKE_NVSMI_CAPTURE="h100-80gb", FAKE_NVSMI_STATE="load",
               FAKE_NVSMI_SEED=seed, FAKE_NVSMI_TOPO=TOPOLOGY)
    help_args = ["--help-query-gpu"]
    supported = nvsmi.parse_help_query_gpu(subprocess.run([FAKE] + help_args, env=env, capture_output=True,
                                                          text=True).stdout)
    fields = nvsmi.choose_fields(supported)
    arg_lists = [
        help_args,
        ["--version"],
        ["--query-gpu=" + ",".join(name for _, name, _ in fields), "--format=csv,noheader,nounits"],
        ["--query-compute-apps=" + ",".join(nvsmi.APP_FIELDS), "--format=csv,noheader,nounits"],
        ["topo", "-m"],
    ]
    for args in arg_lists:
        out = subprocess.run([FAKE] + args, env=env, capture_output=True).stdout
        key = hashlib.md5(" ".join(args).encode()).hexdigest()
        with open(os.path.join(directory, key + ".out"), "wb") as fp:
            fp.write(out)


OTHER_PROCESSES, FDS_PER_OTHER = 300, 20


class Stages:
    """Agent CPU (``time.process_time``, ms) per collection stage of one cycle, by wrapping the
    builder's collectors: which stage makes a slow cycle slow."""

    def __init__(self, builder):
        self.ms = {}
        self.flags = set()
        self._wrap(builder.host, "collect", "host")
        self._wrap(builder.inventory, "refresh", "inventory")
        self._wrap(builder.gpu_background, "collect", "nvidia-smi wait")
        self._wrap(builder, "_collect_drm", "drm")
        if builder.drm is not None:
            self._wrap(builder.drm, "scan_clients", "drm.scan_clients")
            self._wrap(builder.drm, "read_gpu", "drm.read_gpu")
            self._wrap(builder.drm, "discover", "drm.discover", flag="drm rediscovery")
        self._wrap(builder.procs, "owner", "owners")
        self._wrap(builder, "_xid_events", "kmsg")
        inventory = builder.inventory
        refresh = inventory.refresh

        def timed_refresh(*args, **kwargs):
            before = inventory._at
            result = refresh(*args, **kwargs)
            if inventory._at != before:
                self.flags.add("inventory")
            return result
        inventory.refresh = timed_refresh
        self._wrap(inventory, "refresh", "inventory")

    def gc_callback(self, phase, info):
        """gc.callbacks hook: collector time of each generation (gc2 is a full collection)."""
        if phase == "start":
            self._gc_start = time.process_time()
        elif getattr(self, "_gc_start", None) is not None:
            key = f"gc{info['generation']}"
            self.ms[key] = self.ms.get(key, 0.0) + (time.process_time() - self._gc_start) * 1000
            if info["generation"] == 2:
                self.flags.add("full gc")
            self._gc_start = None

    def _wrap(self, obj, name, label, flag=None):
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.ms[label] = self.ms.get(label, 0.0) + (time.process_time() - t0) * 1000
                if flag:
                    self.flags.add(flag)
        setattr(obj, name, timed)

    def take(self):
        ms, flags = self.ms, self.flags
        self.ms, self.flags = {}, set()
        return ms, flags


def describe(total, ms, flags, ref_ratio):
    top = [k for k in ms if "." not in k]
    rest = total - sum(ms[k] for k in top)
    parts = []
    for key in sorted(top, key=lambda k: -ms[k]):
        if ms[key] < 0.5:
            continue
        subs = [f"{k.split('.', 1)[1]} {v:.1f}" for k, v in sorted(ms.items()) if k.startswith(key + ".") and v >= 0.5]
        parts.append(f"{key} {ms[key]:.1f}" + (f" ({', '.join(subs)})" if subs else ""))
    parts.append(f"report assembly + JSON + gzip {rest:.1f}")
    return (f"{total:.1f} ms [{', '.join(sorted(flags)) or 'plain cycle'}]: " + ", ".join(parts)
            + f"; reference work at {ref_ratio:.1f}x its median")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--case", choices=("nvidia", "amd", "both"), default="both")
    parser.add_argument("--inventory-interval", type=float, default=2.0,
                        help="agent inventory_interval for the run, seconds (the agent's default is 60)")
    parser.add_argument("--slowest", type=int, default=5, help="steady cycles to break down by stage")
    args = parser.parse_args()
    print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
          f"Python {sys.version.split()[0]}")
    for case in ("nvidia", "amd") if args.case == "both" else (args.case,):
        with tempfile.TemporaryDirectory() as tmp:
            run_case(case, tmp, args.cycles, args.inventory_interval, args.slowest)


def run_case(case, tmp, cycles, inventory_interval, slowest=5):
    cfg = {"server_url": "http://127.0.0.1:9", "token": "x", "interval": 30,
           "gpu_timeout": 10, "procfs_root": "/proc", "spool_dir": os.path.join(tmp, "spool"),
           "spool_max_mb": 64, "spool_max_age_h": 168, "retry_base_s": 5, "retry_max_s": 300,
           "inventory_interval": inventory_interval, "probes": [], "probe_interval": 60}
    if case == "nvidia":
        prepare(os.path.join(tmp, "first"))
        prepare(os.path.join(tmp, "replaced"), seed="replaced")  # other GPUs: new UUIDs
        cfg["nvidia_smi"] = script_for(os.path.join(tmp, "first"))
    else:
        sys_root, proc_root = drm_tree.mi300x_host(tmp, procs_per_gpu=PROCS_PER_GPU, other_processes=OTHER_PROCESSES,
                                                   fds_per_other=FDS_PER_OTHER)
        cfg.update(nvidia_smi=os.path.join(tmp, "no-nvidia-smi"), sysfs_root=sys_root, procfs_root=proc_root)
    builder = ReportBuilder(check(cfg))
    stages = Stages(builder)
    gc.callbacks.append(stages.gc_callback)
    breakdown = []  # (cycle, total ms, stage ms, flags, reference ms)
    reference = None  # a fixed piece of work (JSON-encoding the first report) timed before each cycle
    ref_ms = []
    if audit not in hooks:
        sys.addaudithook(audit)
        hooks.append(audit)
    cpu_ms, calls, window, others, rss = [], [], [], [], {}
    topologies = []  # cycles whose report carried a topology
    size_raw = size_gz = 0
    proc = psutil.Process()
    gpu = builder.gpu
    start = time.monotonic()
    for i in range(1, cycles + 1):
        if case == "nvidia" and i == cycles // 2 + 1:
            script_for(os.path.join(tmp, "replaced"))  # a hot-plug: the GPU set changes
        spawned.clear()
        if reference is not None:
            # The same work before every cycle: how much this machine's load alone moves CPU time.
            t0 = time.process_time()
            json.dumps(reference)
            ref_ms.append((time.process_time() - t0) * 1000)
        before_calls, before_topo = gpu.calls, gpu.topology_calls
        stages.take()
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        t0 = time.process_time()
        report = builder.build()
        body = json.dumps(report, separators=(",", ":")).encode()
        packed = gzip.compress(body, compresslevel=6)
        cpu_ms.append((time.process_time() - t0) * 1000)
        ms, flags = stages.take()
        # Involuntary context switches in the cycle: the agent was preempted (its caches went cold
        # while another process ran), which inflates CPU time on a shared machine.
        preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches
        if i == 1:
            flags.add("first cycle")
            reference = report
            # What a full collection costs with the startup objects still young, then frozen as the
            # agent's run loop does after its first report (outside any cycle's window).
            t0 = time.process_time()
            gc.collect()
            full_gc_before = (time.process_time() - t0) * 1000
            frozen = freeze_startup_objects()
            t0 = time.process_time()
            gc.collect()
            full_gc_after = (time.process_time() - t0) * 1000
        if gpu.topology_calls != before_topo:
            flags.add("topo -m read")
        breakdown.append((i, cpu_ms[-1], ms, flags, ref_ms[-1] if i > 1 else None, preempted))
        # Calls this cycle's collection started; a topo -m read of the previous window that
        # the build waited for is counted with the window, not the cycle.
        smi_calls = (gpu.calls - before_calls) - (gpu.topology_calls - before_topo)
        calls.append(smi_calls)
        others.append(sum(1 for program in spawned if program != "nvidia-smi"))
        if report.get("gpu_topology"):
            topologies.append(i)
        if i > 1:
            window[-1] += gpu.topology_calls - before_topo
        window.append(smi_calls)
        size_raw, size_gz = len(body), len(packed)
        if i in (1, 10, 100, cycles):
            rss[i] = proc.memory_info().rss / 1048576
    gc.callbacks.remove(stages.gc_callback)
    if builder.gpu_background._thread is not None:
        builder.gpu_background._thread.join(10)
    elapsed = time.monotonic() - start
    assert len(report["gpus"]) == GPUS and len(report["processes"]) == GPUS * PROCS_PER_GPU
    steady = cpu_ms[1:]
    steady_calls = calls[1:]
    extra = (f", {OTHER_PROCESSES} other processes x {FDS_PER_OTHER} fds in procfs" if case == "amd" else "")
    print(f"\n[{case}] agent benchmark: {GPUS} GPUs, {GPUS * PROCS_PER_GPU} GPU processes{extra}, {cycles} cycles")
    print(f"nvidia-smi calls per cycle:   first {calls[0]}, then max {max(steady_calls)} (target <= 2)")
    if case == "nvidia":
        print(f"topo -m between cycles:       {gpu.topology_calls} reads in {elapsed:.1f} s (inventory_interval "
              f"{inventory_interval:g} s; GPU set replaced at cycle {cycles // 2 + 1}), reports carrying it: "
              f"cycles {', '.join(map(str, topologies))}; most calls in one cycle's window incl. topo -m: "
              f"{max(window[1:])}")
        assert gpu.topology_calls >= 2 and len(topologies) >= 2, "topology read at start and after the change"
    assert max(steady_calls) <= 2, "more than 2 nvidia-smi calls in a cycle"
    print(f"other child processes/cycle:  max {max(others)} (target 0)")
    print(f"agent CPU per cycle (ms):     median {statistics.median(steady):.1f}, "
          f"p95 {sorted(steady)[int(len(steady) * 0.95)]:.1f}, max {max(steady):.1f} (target <= 30)")
    print("RSS (MiB):                    " + ", ".join(f"after {k}: {v:.1f}" for k, v in rss.items())
          + " (target <= 40, no growth)")
    print(f"report size:                  {size_raw} bytes JSON, {size_gz} bytes gzip")
    ref_median = statistics.median(ref_ms)
    over = [b for b in breakdown[1:] if b[1] > 30]
    quiet = [b for b in over if b[5] == 0]
    print(f"reference work per cycle (ms): median {ref_median:.2f}, max {max(ref_ms):.2f} (the same JSON encoding "
          f"each time: its spread is the machine's, not the agent's)")
    print(f"steady cycles over 30 ms:     {len(over)} of {len(breakdown) - 1}; {len(quiet)} of them never preempted "
          f"(no involuntary context switch)")
    groups = []
    for low, high in ((0, 0), (1, 4), (5, 14), (15, 10**9)):
        group = [b[1] for b in breakdown[1:] if low <= b[5] <= high]
        if group:
            label = f"{low}" if low == high else (f"{low}-{high}" if high < 10**9 else f">={low}")
            groups.append(f"{label}: {len(group)} cycles, median {statistics.median(group):.1f}, "
                          f"max {max(group):.1f}")
    print("CPU ms by involuntary context switches in the cycle: " + "; ".join(groups))
    first = breakdown[0]
    print(f"full gc collection (ms):      {full_gc_before:.1f} before freeze_startup_objects(), "
          f"{full_gc_after:.1f} after ({frozen} objects frozen); full collections during the run: "
          f"{sum(1 for b in breakdown[1:] if 'full gc' in b[3])}")
    print("first cycle:                  " + describe(first[1], first[2], first[3], 1.0).split("; reference")[0])
    print("slowest steady cycles:")
    for cycle, total, ms, flags, ref, preempted in sorted(breakdown[1:], key=lambda b: -b[1])[:slowest]:
        print(f"  cycle {cycle}: " + describe(total, ms, flags, ref / ref_median) + f", preempted {preempted}x")
    for flag in ("inventory", "drm rediscovery", "topo -m read", "full gc"):
        marked = [b[1] for b in breakdown[1:] if flag in b[3]]
        if marked:
            print(f"cycles with {flag + ':':<17} {len(marked)}, median {statistics.median(marked):.1f} ms, "
                  f"max {max(marked):.1f} ms")
    names = sorted({k for b in breakdown[1:] for k in b[2]})
    print("per stage, steady cycles (ms): " + "; ".join(
        f"{k} {statistics.median([b[2].get(k, 0.0) for b in breakdown[1:]]):.1f}/"
        f"{max(b[2].get(k, 0.0) for b in breakdown[1:]):.1f}" for k in names) + " (median/max)")


if __name__ == "__main__":
    main()
