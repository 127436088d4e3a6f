"""nvidia-smi topo -m: parsed on the real captures and a multi-GPU fixture; free GPU sets chosen by
NVLink and NUMA node, through the free_gpus canned query."""

import os

import pytest
from capture_file import Capture, all_captures
from reports import sample_report
from test_hub_datasette import Client, ingest

from monitor_agent import nvsmi
from server_monitor.core import topology

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "topo", "8gpu-nvlink-pairs.txt")
AFFINITY = {"rtx-2080-super__595": "0-23", "rtx-4080": "0-15", "h100-80gb": "0-19", "h100-mig": "0-19", "h200": "0-23"}


@pytest.mark.parametrize("name", sorted(AFFINITY))
def test_single_gpu_captures(name):
    parsed = nvsmi.parse_topo(Capture(name).section("capabilities", "topo -m"))
    assert parsed == {"gpus": [{"index": 0, "cpu_affinity": AFFINITY[name], "numa_affinity": "0",
                                "gpu_numa_id": None}], "links": []}


def test_windows_capture_has_no_matrix():
    # nvidia-smi 591 on Windows answered "ERROR: Option -m is missing its value."
    assert nvsmi.parse_topo(Capture("windows").section("capabilities", "topo -m")) is None
    assert len([c for c in all_captures() if "windows" in c]) == 1


def test_eight_gpu_matrix():
    parsed = nvsmi.parse_topo(open(FIXTURE).read())
    assert [g["numa_affinity"] for g in parsed["gpus"]] == ["0"] * 4 + ["1"] * 4
    assert parsed["gpus"][5]["cpu_affinity"] == "32-63,96-127"
    links = {(x["a"], x["b"]): x["link"] for x in parsed["links"]}
    assert len(links) == 28  # every pair once; the NIC is left out
    assert [pair for pair, link in sorted(links.items()) if link == "NV4"] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert links[(0, 2)] == "NODE" and links[(3, 4)] == "SYS"


def _candidates(free):
    parsed = nvsmi.parse_topo(open(FIXTURE).read())
    numa = {g["index"]: g["numa_affinity"] for g in parsed["gpus"]}
    links = {(x["a"], x["b"]): x["link"] for x in parsed["links"]}
    return [{"i": i, "numa": numa[i], "free": 80000 - i, "uuid": f"GPU-{i}", "name": "H100"} for i in free], links


def test_choose_prefers_nvlink_then_numa():
    candidates, links = _candidates(range(8))
    assert topology.choose(candidates, links, 2)["devices"] == "0,1" and topology.choose(candidates, links, 2)["link"] == "NV4"
    four = topology.choose(candidates, links, 4)
    assert four["devices"] == "0,1,2,3" and four["link"] == "NODE" and four["numa"] == "0"
    # GPU 1 busy: the pair 2-3 beats 0 + 2 (more free memory on 0, but only a PCIe NODE link).
    candidates, links = _candidates([0, 2, 3, 4, 6])
    two = topology.choose(candidates, links, 2)
    assert (two["devices"], two["link"], two["numa"]) == ("2,3", "NV4", "0")
    # Not enough on one node: the set spans both and says so.
    candidates, links = _candidates([0, 1, 4])
    three = topology.choose(candidates, links, 3)
    assert three["link"] == "SYS" and three["numa"] is None
    assert topology.choose(candidates, links, 4) is None
    # Without topology: the GPUs with the most free memory, as before.
    assert topology.choose([dict(c, numa=None) for c in candidates], {}, 2)["devices"] == "0,1"


def test_free_gpus_uses_the_topology(datasette, hub_config):
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    report = sample_report("dgx", gpus=8, processes=1)
    for g in report["gpus"]:
        g["utilization.gpu"] = 0
    busy = {1, 5}
    report["processes"] = [p for p in report["processes"] if int(p["gpu_uuid"].split("-")[2]) in busy]
    report["gpu_topology"] = nvsmi.parse_topo(open(FIXTURE).read())
    assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    two = admin.get("/monitor/free_gpus.json?_shape=array&count=2").json()
    assert [(r["cuda_visible_devices"], r["link"], r["numa_node"]) for r in two] in (
        [("2,3", "NV4", "0")], [("6,7", "NV4", "1")])
    three = admin.get("/monitor/free_gpus.json?_shape=array&count=3").json()
    assert three[0]["numa_node"] in ("0", "1") and three[0]["link"] in ("NODE", "NV4")
    assert admin.get("/monitor/gpus.json?_shape=array").json()[4]["gpu_index"] == 4


# --- issue 22 item 1: topo -m on InfiniBand nodes (NIC columns named mlx5_*), real matrices ------------

TOPO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "topo")

# file -> (NUMA node per GPU index, CPU Affinity per GPU index, NVLink partners per GPU index {gpu: {other: "NV#"}})
REAL_TOPO = {
    # DGX-1 (V100): four mlx5 columns, only a "CPU Affinity" column (no NUMA column: numa stays null).
    "dgx1-v100-mlx5-cpu-affinity-only.txt": (
        [None] * 8, ["0-19,40-59"] * 4 + ["20-39,60-79"] * 4,
        {0: {1: "NV1", 2: "NV1", 3: "NV2", 4: "NV2"}, 5: {1: "NV2", 4: "NV1", 6: "NV2", 7: "NV1"},
         7: {3: "NV1", 4: "NV2", 5: "NV1", 6: "NV2"}}),
    # A100 PCIe node, mlx5_0/mlx5_1 and "NUMA Affinity".
    "a100-2gpu-mlx5-numa.txt": (["0", "1"], ["0-63", "64-127"], {0: {}, 1: {}}),
    # POWER9 + V100 (NUMA nodes 0 and 8), NVLink pairs NV3, four mlx5 columns.
    "power9-v100-4gpu-mlx5-numa8.txt": (["0", "0", "8", "8"], ["0-63"] * 2 + ["64-127"] * 2,
                                        {0: {1: "NV3"}, 1: {0: "NV3"}, 2: {3: "NV3"}, 3: {2: "NV3"}}),
    # DGX A100 (NVSwitch NV12, 18 mlx5 columns), pasted with spaces; the stored copy holds GPU0-3.
    "dgx-a100-mlx5x18-pasted-gpu0-3.txt": (["0"] * 4, ["0-47,96-143"] * 4,
                                            {0: {i: "NV12" for i in range(1, 8)}}),
    # Slurm job of 2 A100 (NV12) with NIC0..NIC9, pasted with spaces.
    "a100-2gpu-nv12-nic-slurm-pasted.txt": (["3", "3"], ["48-63,176-191"] * 2, {0: {1: "NV12"}, 1: {0: "NV12"}}),
}


@pytest.mark.parametrize("name", sorted(REAL_TOPO))
def test_item1_topo_infiniband_mlx5_columns(name):
    """Real topo -m matrices (public sources in fixtures/topo/SOURCE.md): NUMA node, CPU affinity and the
    NVLink partners of each GPU come out right; no link word is ever stored as a NUMA node."""
    numa, cpus, nvlinks = REAL_TOPO[name]
    parsed = nvsmi.parse_topo(open(os.path.join(TOPO_DIR, name)).read())
    assert [g["index"] for g in parsed["gpus"]] == list(range(len(numa)))
    assert [g["numa_affinity"] for g in parsed["gpus"]] == numa
    assert [g["cpu_affinity"] for g in parsed["gpus"]] == cpus
    assert all(g["gpu_numa_id"] is None for g in parsed["gpus"])  # N/A or no such column
    for gpu, partners in nvlinks.items():
        got = {}
        for link in parsed["links"]:
            if gpu in (link["a"], link["b"]) and link["link"].startswith("NV"):
                got[link["b"] if link["a"] == gpu else link["a"]] = link["link"]
        assert got == partners, gpu
    words = {"X", "SYS", "SOC", "NODE", "PHB", "PXB", "PIX"}
    for g in parsed["gpus"]:
        assert g["numa_affinity"] not in words and not (g["numa_affinity"] or "").startswith("NV")


def test_topo_links_only_between_gpu_columns():
    """Only GPU columns give GPU pairs: the DGX-1's mlx5 cells (PIX/PHB) are not links to GPU 8.. 11."""
    parsed = nvsmi.parse_topo(open(os.path.join(TOPO_DIR, "dgx1-v100-mlx5-cpu-affinity-only.txt")).read())
    assert len(parsed["links"]) == 28 and max(link["b"] for link in parsed["links"]) == 7


def test_item1_hub_never_takes_a_link_word_for_a_numa_node(datasette, hub_config):
    """An agent from before the fix sends numa_affinity "SYS": the hub stores null and the picker
    does not group GPUs by it."""
    assert topology.numa_node("SYS") is None and topology.numa_node("NV12") is None
    assert topology.numa_node("0") == "0" and topology.numa_node("0,8,252-255") == "0,8,252-255"
    candidates = [{"i": i, "numa": "SYS", "free": 1000, "uuid": f"GPU-{i}", "name": "A100"} for i in range(2)]
    assert topology.choose(candidates, {(0, 1): "NV12"}, 2)["numa"] is None
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    report = sample_report("ib-node", gpus=2, processes=0)
    report["gpu_topology"] = {"gpus": [{"index": 0, "cpu_affinity": "NODE", "numa_affinity": "SYS", "gpu_numa_id": None},
                                       {"index": 1, "cpu_affinity": "0-47", "numa_affinity": "1", "gpu_numa_id": None}],
                              "links": [{"a": 0, "b": 1, "link": "NV12"}]}
    assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    rows = admin.get("/monitor/gpus.json?_shape=array").json()
    assert sorted((r["gpu_index"], r["numa_node"]) for r in rows if r["server"] == "ib-node") == [(0, None), (1, "1")]
    assert sorted((r["gpu_index"], r["cpu_affinity"]) for r in rows if r["server"] == "ib-node") == [(0, None),
                                                                                                    (1, "0-47")]
    assert topology.cpu_list("NODE") is None and topology.cpu_list("0-47,96-143") == "0-47,96-143"
