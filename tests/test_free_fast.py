"""Issue 24 item 4, /free at fleet size with ``count`` > 1: the fit per NUMA node now comes from one
pass over the free GPUs (their indexes as a bit set, the node's NVLink rows read by primary key)
instead of joining every free GPU with every other one of its NUMA node. The answers must not
change: the same offers, in the same order, with the same GPUs, as the query it replaced
(``tests/fixtures/free/free_gpus_pairs.sql``, ``free_gpus.sql`` as of 10e59ec), on a fleet built
through the ingest path from the real ``nvidia-smi topo -m`` matrices (``tests/fixtures/topo``).
``python -m bench free`` makes the same comparison at 10,000 servers (docs/performance.md)."""

import copy
import glob
import os
import random
import re
import sqlite3
import time

import pytest
from reports import mig_report, sample_report
from test_fleet_pages import eight_gpu_topology

from monitor_agent import nvsmi
from server_monitor.core import natural, topology
from server_monitor.serving.queries import QUERIES, named_parameters
from server_monitor.storage import contract, rollup, schema
from server_monitor.storage.store import store_report

HERE = os.path.dirname(os.path.abspath(__file__))
BEFORE = open(os.path.join(HERE, "fixtures", "free", "free_gpus_pairs.sql"), encoding="utf-8").read()
AFTER = QUERIES["free_gpus"]["sql"]


def sixty_four_gpu_topology():
    """topo -m of a 64-GPU host: 0-31 on NUMA node 0, 32-63 on node 1, NV18 inside a node, SYS across
    (indexes above 62 do not fit the query's bit set: its exact fallback)."""
    gpus = [{"index": g, "cpu_affinity": None, "numa_affinity": str(g // 32), "gpu_numa_id": None} for g in range(64)]
    links = [{"a": a, "b": b, "link": "NV18" if a // 32 == b // 32 else "SYS"} for a in range(64) for b in range(a + 1, 64)]
    return {"gpus": gpus, "links": links}


def host(name, gpus, busy=(), topo=None, groups=(), vendor=None, util=None, used=None, now=None):
    """A report of host ``name``: ``gpus`` GPUs, those in ``busy`` running a process, the others idle
    (``util``/``used``: {index: value} for idle GPUs that are not quite idle)."""
    report = sample_report(name, gpus=gpus, processes=1, sample_time=now)
    for g in report["gpus"]:
        g["utilization.gpu"] = (util or {}).get(g["index"], 0)
        g["memory.used"] = (used or {}).get(g["index"], 0)
        if vendor:
            g["vendor"] = vendor
    report["processes"] = [p for p in report["processes"] if int(p["gpu_uuid"].split("-")[-4]) in busy]
    report["groups"] = list(groups)
    if topo is not None:
        report["gpu_topology"] = topo
    return report


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A small fleet through validate_report + store_report: the real topo -m matrices (NVLink pairs,
    NVSwitch, PCIe only, 8 NUMA nodes, no NUMA column) each with several busy patterns, NVSwitch
    hosts, 64-GPU hosts, an AMD host, a MIG host, a host without topology, host groups, names whose
    natural order differs from text order, one renamed host, partly busy and partly full GPUs."""
    db = str(tmp_path_factory.mktemp("free") / "monitor.db")
    schema.migrate(db)
    conn = schema.connect(db)
    now = time.time()
    rng = random.Random(24)
    reports = []
    for path in sorted(glob.glob(os.path.join(HERE, "fixtures", "topo", "*.txt"))):
        topo = nvsmi.parse_topo(open(path, encoding="utf-8").read())
        n = len(topo["gpus"])
        for k in range(8):
            busy = set(rng.sample(range(n), rng.randint(0, n - 1)))
            util = {i: rng.choice([0, 5, 12]) for i in range(n) if rng.random() < 0.2}
            used = {i: rng.choice([0, 2000, 30000]) for i in range(n) if rng.random() < 0.3}
            reports.append(host(f"{os.path.basename(path)[:12]}-{k}", n, busy, topo, ["topo"], util=util, used=used))
    for k in range(12):  # NVSwitch (every pair NV18), in two groups; names dgx-1 .. dgx-12 (natural order)
        busy = set(rng.sample(range(8), rng.choice([0, 1, 2, 3, 4, 5, 7])))
        reports.append(host(f"dgx-{k + 1}", 8, busy, eight_gpu_topology("NV18", "NV18"), [f"cluster-{'ab'[k % 2]}"]))
    for k, busy in enumerate([(), (0, 40), range(32, 60), range(0, 62)]):
        reports.append(host(f"big-{k}", 64, set(busy), sixty_four_gpu_topology(), ["cluster-a"]))
    reports.append(host("amd-1", 8, {3}, eight_gpu_topology("NODE"), ["cluster-b"], vendor="amd"))
    reports.append(host("no-topo", 8, {0, 5}))
    reports.append(host("Node-010", 8, {1}, eight_gpu_topology("NODE", nvlink_pairs={(0, 1): "NV4"})))
    reports.append(host("node-9", 8, {1}, eight_gpu_topology("NODE", nvlink_pairs={(0, 1): "NV4"})))
    reports.append(mig_report("mig-a", busy_instances=(0,)))
    for report in reports:
        report["sample_time"] = now
        store_report(conn, contract.validate_report(report), now)
    # An admin's display name (the name shown and ordered by: servers.name_key, written at start).
    conn.execute("UPDATE servers SET display_name = 'dgx-0100' WHERE hostname = 'dgx-3'")
    schema.refresh_name_keys(conn)
    conn.commit()
    conn.close()
    return db


def connect(db):
    conn = sqlite3.connect(db)
    natural.register(conn)  # what every Datasette connection has (plugins/sm_natural.py, sm_topology.py)
    topology.register(conn)
    return conn


def params(sql, **given):
    values = {k: "" for k in named_parameters(sql)}
    values.update({"_scope_all": 1, "_scope_servers": "[]", "_config_free_max_util": 10})
    values.update({k: str(v) for k, v in given.items()})
    return values


def run(conn, sql, **given):
    return conn.execute(sql, params(sql, **given)).fetchall()


CASES = [dict(count=c, **f) for c in (1, 2, 3, 4, 5, 6, 8, 16)
         for f in ({}, {"group": "cluster-a"}, {"group": "topo"}, {"model": "H100"}, {"model": "1g.10gb"},
                   {"min_free_mib": 60000}, {"max_util": 5}, {"max_util": 20, "group": "cluster-b"})]


def test_item4_free_count_gt1_same_answers_as_before(fleet):
    conn = connect(fleet)
    fits = set()
    for case in CASES:
        for page in ({"limit": 500}, {"limit": 7}, {"limit": 7, "offset": 7}, {"limit": 7, "offset": 21}):
            before, after = run(conn, BEFORE, **case, **page), run(conn, AFTER, **case, **page)
            assert after == before, (case, page)
        fits |= {(case["count"] > 1, row[-3]) for row in before}
    # The fleet exercises what the fit decides: hosts of every fit for count > 1, all offers there.
    assert fits == {(False, 2), (True, 0), (True, 1), (True, 2)}
    servers = {row[1] for case in CASES for row in run(conn, AFTER, **case, limit=500)}
    assert {"big-0", "big-1", "big-2", "amd-1", "no-topo", "dgx-0100", "node-9", "Node-010", "mig-a"} <= servers


def test_item4_free_fit_from_the_bit_set_and_its_fallback(fleet):
    """The bit set holds indexes 0..62: a NUMA node with a free GPU 63 counts its NVLink pairs by
    joining its free GPUs (exactly as before); both ways rank the 64-GPU hosts as the pairs say."""
    conn = connect(fleet)
    rows = {r[1]: r for r in run(conn, AFTER, count=16, group="cluster-a", limit=500)}
    # big-0: all 64 free, NV18 in each node: fit 2. big-1: 0 and 40 busy: still whole NV18 nodes.
    # big-2: 32-59 busy, node 1 keeps 60-63 (4 < 16) and node 0 is whole: fit 2 from node 0.
    assert {name: (r[-3], r[3]) for name, r in rows.items() if name.startswith("big")} == {
        "big-0": (2, 64), "big-1": (2, 62), "big-2": (2, 36)}
    two = {r[1]: r for r in run(conn, AFTER, count=2, group="cluster-a", limit=500)}
    assert two["big-3"][-3] == 2 and two["big-3"][3] == 2  # GPUs 62 and 63: the fallback's NVLink pair


def plan(conn, sql, **given):
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params(sql, **given))]


def pair_join_in(lines):
    """Plan lines that search a free-GPU relation through an index SQLite builds for the query."""
    return [line for line in lines if re.match(r"SEARCH (f|a|b|v|hf) USING AUTOMATIC", line)]


@pytest.mark.parametrize("statistics", [False, True])
def test_item4_free_plan_reads_each_free_gpu_once(fleet, tmp_path, statistics):
    """The plan: online servers, each one's GPUs by ``gpus_server`` (grouped once), each NUMA node's
    links by a primary-key range; no automatic index over a copy of every free GPU (the old plan
    built them to join GPU pairs). With the hub's own statistics (``refresh_statistics``, as
    ``server-monitor serve`` and maintenance gather them) and without (a small database)."""
    db = str(tmp_path / "copy.db")
    source = sqlite3.connect(fleet)
    source.backup(sqlite3.connect(db))
    if statistics:
        conn = schema.connect(db)
        assert rollup.refresh_statistics(conn, force=True) == "analyze"
        conn.close()
    conn = connect(db)
    for count in (1, 2, 4):
        lines = plan(conn, AFTER, count=count)
        assert not pair_join_in(lines), lines
        assert lines.count("SEARCH g USING INDEX gpus_server (server_id=?)") >= 1
        assert "SEARCH l USING PRIMARY KEY (server_id=? AND gpu_a>? AND gpu_a<?)" in lines
        assert not any("AUTOMATIC" in line for line in lines if " g " in line or "gpu_links" in line)
        assert pair_join_in(plan(conn, BEFORE, count=count))  # what the old query did
    code = "\n".join(line.split("--")[0] for line in AFTER.splitlines())
    assert "natural_key(" not in code and "name_key" in code  # servers.name_key, no per-row Python


@pytest.fixture(scope="module")
def idle_fleet(tmp_path_factory):
    """300 DGX-like hosts (8 GPUs, NVSwitch, two NUMA nodes), most of them idle: where the pair join
    grew with the square of each node's free GPUs."""
    db = str(tmp_path_factory.mktemp("idle") / "monitor.db")
    schema.migrate(db)
    conn = schema.connect(db)
    now = time.time()
    for k in range(300):
        busy = {k % 8} if k % 3 == 0 else set()
        report = host(f"dgx-{k}", 8, busy, eight_gpu_topology("NV18", "SYS"), now=now)
        store_report(conn, contract.validate_report(report), now)
    conn.commit()
    conn.close()
    return db


def test_item4_free_work_does_not_grow_with_the_pairs(idle_fleet):
    """SQLite's own count of virtual-machine steps (a progress handler every 100 steps), deterministic
    for a given SQLite, unlike a timing: on a mostly idle fleet the new query does 0.6-0.8 of the
    work of the pair join for count > 1. For count 1 (no pairs) the
    grouping per NUMA node costs some steps (at most a quarter more), and natural_key() (Python, once
    per offer in the old sort) is called no more: at 10,000 servers count 1 is faster in all
    (docs/performance.md, ``python -m bench free``)."""

    def cost(db, sql, **given):
        conn = connect(db)
        ticks, calls = [0], [0]

        def tick():
            ticks[0] += 1
            return 0

        def counted(text):
            calls[0] += 1
            return natural.sort_key(text)

        conn.create_function("natural_key", 1, counted, deterministic=True)
        conn.set_progress_handler(tick, 100)
        run(conn, sql, **given)
        conn.close()
        return ticks[0], calls[0]

    for count in (2, 3, 4, 8):
        (before, _), (after, _) = cost(idle_fleet, BEFORE, count=count), cost(idle_fleet, AFTER, count=count)
        # measured with SQLite 3.40: 0.55, 0.71, 0.71, 0.92 of the steps (at 10,000 servers: 0.45 for 2 and 4)
        assert after < {2: 0.6, 3: 0.8, 4: 0.8, 8: 1}[count] * before, (count, before, after)
    (before, sorted_before), (after, sorted_after) = cost(idle_fleet, BEFORE, count=1), cost(idle_fleet, AFTER, count=1)
    assert sorted_before >= 300 and sorted_after == 0
    assert after <= 1.25 * before, (before, after)


def test_item4_free_same_answers_after_gpus_change(fleet, tmp_path):
    """The same after reports change which GPUs are free (a host's next report through the ingest
    path): nothing is cached between calls."""
    db = str(tmp_path / "copy.db")
    sqlite3.connect(fleet).backup(sqlite3.connect(db))
    conn = schema.connect(db)
    report = host("dgx-5", 8, {4, 5}, eight_gpu_topology("NV18", "NV18"), ["cluster-a"])
    store_report(conn, contract.validate_report(copy.deepcopy(report)), time.time())
    conn.commit()
    conn.close()
    conn = connect(db)
    for count in (1, 2, 4, 6):
        assert run(conn, AFTER, count=count, limit=500) == run(conn, BEFORE, count=count, limit=500)
    assert [r[-3:-1] for r in run(conn, AFTER, count=4, limit=500) if r[1] == "dgx-5"] == [(2, 2)]  # node 0 whole
