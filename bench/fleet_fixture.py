"""A lab-like fleet grown through the hub's own write path, for benchmarks and screenshots.

Standalone (no ``bench.common``): ``python -m bench browser`` copies it next to an older
revision and runs it with that revision's ``server_monitor``.

    .venv/bin/python -m bench fixture DB --servers 200 [--processes 2000] [--users 40] [--groups 5]

Every report is a contract-v1 report (``tests/reports.py``, values from the real captures)
checked by ``server_monitor.storage.contract.validate_report`` and written by
``server_monitor.storage.store.store_report`` — the same path ``POST /api/report`` takes, without
the HTTP hop. The fleet: ``servers`` hosts × 8 H100 GPUs; ``processes`` compute processes
spread over ``users`` users in LXC containers, Docker containers, Slurm jobs and on the host;
about a quarter of the GPUs free, some held idle; one host offline (last report 24 min
ago), one late, one with a driver/library mismatch, one with a lost GPU, one hot GPU. With
``--groups N`` each host reports host groups the way an agent's ``groups:`` config sends them:
one of N clusters (``cluster-a``, ``cluster-b``, …, hosts dealt round-robin by block) and its rack
(``rack-01``… , 40 hosts a rack).
"""

import argparse
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reports import sample_report  # noqa: E402

try:
    from server_monitor.storage import contract, schema
    from server_monitor.storage.store import store_report
except ImportError:  # an older revision (flat server_monitor/), as `python -m bench browser` runs it
    from server_monitor import contract, schema
    from server_monitor.store import store_report

FIRST = ["alice", "bob", "carol", "dmitri", "eve", "farah", "gao", "hiro", "ines", "jonas", "kemal", "lena",
         "mateo", "nadia", "oskar", "priya", "quinn", "rahul", "sofia", "tomas", "uma", "viktor", "wei", "xenia",
         "yusuf", "zoe", "arjun", "bea", "chen", "dana", "emil", "fatima", "goran", "hana", "ivan", "julia",
         "kofi", "li", "maya", "noor"]


def users(n):
    return [FIRST[i % len(FIRST)] + ("" if i < len(FIRST) else str(i // len(FIRST))) for i in range(n)]


def host_name(i):
    kind = ("dgx-h100", "hgx-h200", "gpu-a100", "node-l40s")[i % 4]
    return f"{kind}-{i + 1:03d}"


def topology(i):
    """``nvidia-smi topo -m`` as the agent reports it (``gpu_topology``) for host ``i``'s kind.

    GPUs 0-3 on NUMA node 0 and 4-7 on node 1 on all kinds (CPU Affinity as on a 2-socket,
    64-core host). The DGX/HGX kinds have NVSwitch: every pair ``NV18`` (H100/H200, 18 NVLinks
    per GPU) or ``NV12`` (A100), as the DGX matrices in tests/fixtures/topo show; the L40S kind
    has no NVLink: ``NODE`` inside a NUMA node, ``SYS`` across (tests/fixtures/topo/8gpu-nvlink-pairs.txt
    without its bridges).
    """
    kind = ("dgx-h100", "hgx-h200", "gpu-a100", "node-l40s")[i % 4]
    nvlink = {"dgx-h100": "NV18", "hgx-h200": "NV18", "gpu-a100": "NV12"}.get(kind)
    gpus = [{"index": g, "cpu_affinity": "0-31,64-95" if g < 4 else "32-63,96-127",
             "numa_affinity": "0" if g < 4 else "1", "gpu_numa_id": None} for g in range(8)]
    links = [{"a": a, "b": b, "link": nvlink or ("NODE" if a // 4 == b // 4 else "SYS")}
             for a in range(8) for b in range(a + 1, 8)]
    return {"gpus": gpus, "links": links}


def plan(servers, processes, n_users, seed=1):
    """Per host, per GPU: the list of (user, container kind, container, VRAM MiB, util) holders."""
    rng = random.Random(seed)
    people = users(n_users)
    gpus = [(s, g) for s in range(servers) for g in range(8)]
    held = rng.sample(gpus, k=int(len(gpus) * 0.72))
    layout = {gpu: [] for gpu in gpus}
    # Each user works in one or two places (a container, a Slurm job or the host).
    homes = {}
    for u in people:
        kind = rng.choice(["lxc", "lxc", "docker", "slurm", None])
        homes[u] = (kind, None if kind is None else
                    {"lxc": f"{u}-ws", "docker": f"{u}-train-{rng.randint(1, 9)}", "slurm": f"job-{rng.randint(100000, 999999)}"}[kind])
    weights = [1.0 / (i + 1) ** 0.7 for i in range(len(people))]
    for n in range(processes):
        gpu = held[n % len(held)]
        if layout[gpu]:
            u = layout[gpu][0][0] if rng.random() < 0.8 else rng.choices(people, weights)[0]
        else:
            u = rng.choices(people, weights)[0]
        kind, container = homes[u]
        layout[gpu].append((u, kind, container, rng.choice([2048, 8192, 16384, 30000, 61000]), None))
    idle = set(rng.sample(held, k=len(held) // 8))
    return layout, idle


def host_groups(i, servers, n_groups):
    """The ``groups`` an agent of host ``i`` reports with ``--groups n_groups`` ([] for 0): its
    cluster (``cluster-a``…, contiguous blocks of hosts) and its rack (40 hosts a rack)."""
    if not n_groups:
        return []
    per = max(1, -(-servers // n_groups))
    return [f"cluster-{chr(ord('a') + min(i // per, 25))}", f"rack-{i // 40 + 1:02d}"]


def grow(db_path, servers=200, processes=2000, n_users=40, seed=1, now=None, groups=0, racks=True, interval=None):
    """Write one current report per host into ``db_path`` (created if needed) via store_report.
    ``groups``: number of clusters the hosts report as host groups (:func:`host_groups`; 0 = none);
    ``racks=False`` leaves the rack group out (one group per host); ``interval``: the reporting
    interval the reports state (s; default the sample report's), which sets when hosts go stale."""
    schema.migrate(db_path)
    conn = schema.connect(db_path)
    now = time.time() if now is None else now
    layout, idle = plan(servers, processes, n_users, seed)
    rng = random.Random(seed + 1)
    try:
        for s in range(servers):
            name = host_name(s)
            report = sample_report(name, gpus=8, processes=0, sample_time=now - 5)
            received = now
            report["processes"] = []
            if interval:
                report["interval"] = interval
            report["groups"] = [g for g in host_groups(s, servers, groups) if racks or not g.startswith("rack-")]
            report["gpu_topology"] = topology(s)
            for g, gpu in enumerate(report["gpus"]):
                holders = layout[(s, g)]
                if not holders:
                    gpu["utilization.gpu"], gpu["memory.used"], gpu["power.draw"] = 0, 0, 71.0
                    gpu["temperature.gpu"] = 31
                    continue
                gpu["utilization.gpu"] = 0 if (s, g) in idle else rng.randint(35, 100)
                gpu["memory.used"] = min(81000, sum(h[3] for h in holders))
                gpu["temperature.gpu"] = 40 + gpu["utilization.gpu"] // 3
                for k, (u, kind, container, mib, _) in enumerate(holders):
                    report["processes"].append({
                        "gpu_uuid": gpu["uuid"], "pid": 10000 + 100 * g + k,
                        "process_name": rng.choice(["python train.py", "python3 -m torch.distributed.run", "vllm serve",
                                                    "jupyter-kernel", "deepspeed"]),
                        "used_gpu_memory": mib, "user": u, "uid": 2000 + FIRST.index(u.rstrip("0123456789")),
                        "container": container, "container_kind": kind})
            if s == 3:  # offline: its last report came 24 minutes ago
                received = now - 24 * 60
                report["sample_time"] = received - 5
            elif s == 7:  # late (stale): two reports missed
                received = now - 80
                report["sample_time"] = received - 5
            elif s == 11:  # NVML broken until reboot: no GPU rows in the report
                report["gpu_status"] = {"state": "driver_mismatch", "lost": [], "stale": False,
                                        "message": "Failed to initialize NVML: Driver/library version mismatch"}
                report["gpus"], report["processes"] = [], []
            elif s == 17:  # one GPU fell off the bus
                bus = report["gpus"][5]["pci.bus_id"]
                report["gpus"].pop(5)
                report["processes"] = [p for p in report["processes"] if not p["gpu_uuid"].endswith("-0005-0000-0000-000000000000")]
                report["gpu_status"] = {"state": "gpu_lost", "stale": False,
                                        "lost": [{"pci.bus_id": bus, "message": "Unable to determine the device handle for GPU"}]}
            elif s == 23:
                report["gpus"][2]["temperature.gpu"] = 91
            store_report(conn, contract.validate_report(report), received)
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2000)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--groups", type=int, default=0, help="clusters (host groups) the hosts report; 0 = none")
    parser.add_argument("--interval", type=float, default=None, help="reporting interval the reports state (s)")
    args = parser.parse_args()
    t0 = time.time()
    grow(args.db, args.servers, args.processes, args.users, groups=args.groups, interval=args.interval)
    print(f"{args.servers} servers written to {args.db} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
