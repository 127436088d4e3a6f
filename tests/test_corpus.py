"""Issue 22: the corpus of real outputs gathered from public issues and documentation.

Each file in the corpus folders is run through the agent's own parser for its format and checked
against the values recorded for it in ``EXPECTED`` (key facts, not just "parses"). A file without an
entry fails the test, so a new fixture must come with its expectations. Sources: the ``SOURCE.md``
beside each folder. Counted in docs/agent.md ("Formats handled").
"""

import os
import re

import pytest

from monitor_agent import drm, kmsg, nvsmi

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# folder (under fixtures/) -> file-name filter: the real outputs gathered for issue 22.
CORPUS_DIRS = {
    "topo": lambda name: name.endswith(".txt") and name != "8gpu-nvlink-pairs.txt",  # that one is hand-written
    "kmsg/real": lambda name: name.endswith(".txt"),
    "nvsmi": lambda name: not name.endswith(".md"),
    "fdinfo": lambda name: name.endswith(".txt"),
}

# --- expectations -----------------------------------------------------------------------------------------
# topo: GPU index -> (NUMA node, CPU affinity) and the set of NVLink pairs.
TOPO = {
    "dgx1-v100-mlx5-cpu-affinity-only.txt": ({0: (None, "0-19,40-59"), 7: (None, "20-39,60-79")}, 16),
    "a100-2gpu-mlx5-numa.txt": ({0: ("0", "0-63"), 1: ("1", "64-127")}, 0),
    "power9-v100-4gpu-mlx5-numa8.txt": ({0: ("0", "0-63"), 3: ("8", "64-127")}, 2),
    "rtx4090-8gpu-nic-gpu-numa-id.txt": ({0: ("0", "0-55,112-167"), 7: ("1", "56-111,168-223")}, 0),
    "a100-2gpu-nv12-nic-slurm-pasted.txt": ({0: ("3", "48-63,176-191"), 1: ("3", "48-63,176-191")}, 1),
    "dgx-a100-mlx5x18-pasted-gpu0-3.txt": ({0: ("0", "0-47,96-143"), 3: ("0", "0-47,96-143")}, 22),
}
# kmsg: [(bus id, xid, pid, process, GPU instance)] for the Xid lines, and the buses reported lost.
KMSG = {
    "akash-support-244.txt": ([("00000000:00:05.0", 43, 1045242, "pt_main_thread", None),
                               ("00000000:00:07.0", 31, 2512125, "python3.10", None),
                               ("00000000:00:08.0", 94, None, None, None)], []),
    "gpud-46-dmesg.txt": ([("00000000:CB:00.0", 13, None, None, None),
                           ("00000000:CB:00.0", 109, 1797828, "pt_main_thread", None)], []),
    "gpud-1160-1174-nvlink5.txt": ([("00000019:01:00.0", 149, None, None, None),
                                    ("00000018:01:00.0", 145, None, None, None),
                                    ("00000000:01:00.0", 144, None, None, None)], []),
    "open-gpu-kernel-modules-1150.txt": ([("00000000:DC:00.0", 45, 1818990, "python3", None),
                                          ("00000000:ED:00.0", 45, 1818992, "python3", None)], []),
    "bumblebee-677-old-driver.txt": ([("00000000:01:00.0", 32, None, None, None),
                                      ("00000000:01:00.0", 31, None, None, None)], []),
    "nvidia-ga100-error-containment.txt": ([("00000000:01:00.0", 94, 7194, None, 5),
                                            ("00000000:01:00.0", 94, 7062, None, None),
                                            ("00000000:01:00.0", 95, 7062, None, None)], []),
    "nvsentinel-155-fallen-without-xid.txt": ([("00000000:44:00.0", 79, None, None, None)],
                                              ["00000000:B3:00.0", "00000000:44:00.0"]),
    "bumblebee-554-fallen-old-driver.txt": ([], ["00000000:01:00.0"]),
    "ml-engineering-row-remapper.txt": ([("00000000:10:1C.0", 63, 1896, None, None)], []),
    "open-gpu-kernel-modules-862-init-failed.txt": ([], []),  # NVRM: GPU <bus> lines that are not a loss
}
# nvidia-smi: -L (GPU count, MIG count on GPU 0, name of GPU 0), lost lines (bus id), failures (state).
LIST = {
    "L-a100-sxm4-80gb-mig-4x1g.txt": (4, 4, "NVIDIA A100-SXM4-80GB", "1g.20gb"),
    "L-a100-sxm4-80gb-mig-7x1g-535.txt": (1, 7, "NVIDIA A100-SXM4-80GB", "1g.10gb"),
    "L-quadro-rtx-4000-x2-535.txt": (2, 0, "Quadro RTX 4000", None),
    "L-geforce-rtx-3090-x4.txt": (4, 0, "NVIDIA GeForce RTX 3090", None),
}
LOST = {
    "lost-2015-space.txt": "0000:0B:00.0", "lost-nvswitch-cluster.txt": "0000:20:00.0",
    "lost-container-a-i-0.txt": "0000:09:00.0", "lost-windows-detect.txt": "0000:B1:00.0",
    "lost-tesla-p4-nas.txt": "0000:07:00.0", "lost-a30-560.txt": "0000:17:00.0",
}
FAIL = {
    "fail-mismatch-570.txt": "driver_mismatch", "fail-mismatch-550-ci.txt": "driver_mismatch",
    "fail-mismatch-460.txt": "driver_mismatch", "fail-no-driver-440.txt": "driver_not_loaded",
    "fail-no-devices-rtx5090.txt": "no_devices",
}
CSV = {
    # first row, by report key: nvidia-smi 520 with header and units, clocks.current.* (old names)
    "query-gpu-csv-units-520.56.06.csv": (13, {"index": 0, "temperature.gpu": 56, "utilization.gpu": 26,
                                               "utilization.memory": 4, "fan.speed": 34, "pstate": "P3",
                                               "power.draw": 83.92, "clocks.sm": 1320, "clocks.mem": 5001}),
}
# fdinfo: driver, pdev, client id, device-local bytes, GTT bytes, engines with time or cycles.
FDINFO = {
    "xe-kernel-doc-example.txt": ("xe", "0000:03:00.0", 3, 23992 * 1024, 192 * 1024, {"rcs", "bcs", "vcs", "vecs",
                                                                                        "ccs"}),
    "amdgpu-radeon-client.txt": ("amdgpu", "0000:08:00.0", 217, 2068 * 1024, 8192 * 1024, {"gfx"}),
}
EXPECTED = {**{("topo", k): v for k, v in TOPO.items()}, **{("kmsg/real", k): v for k, v in KMSG.items()},
            **{("nvsmi", k): v for k, v in {**LIST, **LOST, **FAIL, **CSV}.items()},
            **{("fdinfo", k): v for k, v in FDINFO.items()}}


def corpus():
    for folder, keep in CORPUS_DIRS.items():
        for name in sorted(os.listdir(os.path.join(FIX, folder))):
            if keep(name):
                yield folder, name


def _read(folder, name):
    with open(os.path.join(FIX, folder, name), encoding="utf-8") as fp:
        return fp.read()


def _csv_fields(header):
    """The (report key, query name, kind) list for a CSV header, as the agent's GPU_FIELDS name them."""
    fields = []
    for column in header.split(", "):
        query = re.sub(r"\s*\[.*\]$", "", column.strip())
        entry = next(((key, query, kind) for key, names, kind in nvsmi.GPU_FIELDS if query in names), None)
        fields.append(entry or (query, query, "str"))
    return fields


@pytest.mark.parametrize("folder,name", list(corpus()))
def test_corpus_file_parses_to_its_recorded_values(folder, name, tmp_path):
    assert (folder, name) in EXPECTED, f"{folder}/{name} has no expectations in tests/test_corpus.py"
    text, want = _read(folder, name), EXPECTED[(folder, name)]
    if folder == "topo":
        per_gpu, nvlink_pairs = want
        parsed = nvsmi.parse_topo(text)
        gpus = {g["index"]: (g["numa_affinity"], g["cpu_affinity"]) for g in parsed["gpus"]}
        assert {i: gpus[i] for i in per_gpu} == per_gpu
        assert sum(1 for link in parsed["links"] if link["link"].startswith("NV")) == nvlink_pairs
    elif folder == "kmsg/real":
        xids, lost = want
        lines = [line for line in text.splitlines() if line.strip()]
        path = tmp_path / "kmsg"  # one /dev/kmsg record per line, in the device's record format
        path.write_text("".join(f"4,{100 + n},{1000 + n},-;{line}\n" for n, line in enumerate(lines)))
        reader = kmsg.KmsgReader(str(path), boot_time=1_000_000, history_s=10**9)
        events = reader.collect(now=1_000_100)["xid_events"]
        assert [(e["pci.bus_id"], e["xid"], e["pid"], e["process_name"], e["gpu_instance_id"]) for e in events] == xids
        assert all(e["name"] for e in events)  # every code in the corpus is named from NVIDIA's catalog
        assert [g["pci.bus_id"] for g in reader.lost_gpus()] == lost
    elif name.startswith("L-"):
        count, migs, first, profile = want
        listing = nvsmi.parse_list_gpus(text)
        assert (len(listing), len(listing[0]["mig"]), listing[0]["name"]) == (count, migs, first)
        assert all(g["uuid"].startswith("GPU-") for g in listing.values())
        assert {m["profile"] for m in listing[0]["mig"].values()} == ({profile} if profile else set())
    elif name.startswith("lost-"):
        gpus, lost, other = nvsmi.parse_gpu_rows(text, nvsmi.choose_fields())
        assert gpus == [] and other == [] and [item["pci.bus_id"] for item in lost] == [want]
    elif name.startswith("fail-"):
        state, message = nvsmi.classify_failure(1, text)
        assert state == want and message == text.splitlines()[0]
    elif name.endswith(".csv"):
        rows, first = want
        header, _, body = text.partition("\n")
        gpus, lost, other = nvsmi.parse_gpu_rows(body, _csv_fields(header))
        assert (len(gpus), lost, other) == (rows, [], [])
        assert {key: gpus[0][key] for key in first} == first
    elif folder == "fdinfo":
        driver, pdev, client, device, gtt, engines = want
        info = drm.parse_fdinfo(text)
        assert (info["driver"], info["pdev"], info["client_id"], info["device_bytes"], info["gtt_bytes"]) == (
            driver, pdev, client, device, gtt)
        assert set(info["engines"]) | set(info["cycles"]) == engines
    else:
        raise AssertionError(f"no parser for {folder}/{name}")


def test_corpus_size():
    """The issue asks for at least 40 real outputs overall; this corpus holds its part (docs/agent.md)."""
    assert len(list(corpus())) >= 34
