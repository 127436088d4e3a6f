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
