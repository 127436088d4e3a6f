"""Issue 22 items 2 and 3: MIG tables as drivers print them, and no MIG instance offered as free
while its state is unknown or a sibling compute instance runs a job.

The tables and ``-L`` listings are real outputs from public documentation and issues
(``tests/fixtures/mig_corpus/SOURCE.md``); each runs through the real parser (``monitor_agent.nvsmi``),
the real collector with the fake nvidia-smi replaying them, the real agent process and the real
hub (ingest into SQLite, ``free_gpus`` through Datasette).
"""

import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import FAKE_NVSMI, ROOT
from reports import mig_report
from test_hub_datasette import ingest

from monitor_agent import nvsmi
from monitor_agent.gpu import MIG_LIST_INTERVAL_S, MIG_RECHECK_S, GpuCollector

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mig_corpus")


def corpus(name):
    return os.path.join(CORPUS, name)


def read(name):
    with open(corpus(name), encoding="utf-8") as fp:
        return fp.read()


# Every table of the corpus: its MIG devices as (GPU, GI, CI, MIG dev, memory used, total MiB, SMs)
# and its processes as (GPU, GI, CI, PID, name, MiB).
BLACKSCHOLES = [(0, 1, 0, 59785, "./BlackScholes", 153), (0, 1, 1, 59796, "./BlackScholes", 153),
                (0, 1, 2, 59885, "./BlackScholes", 153)]
TABLES = {
    # Merged memory cells: the GI's memory printed once, on its first CI's row.
    "mig-user-guide-a100-40gb-3ci-idle.txt": (
        [(0, 1, 0, 0, 11, 20224, 14), (0, 1, 1, 1, 11, 20224, 14), (0, 1, 2, 2, 11, 20224, 14)], []),
    "mig-user-guide-a100-40gb-3ci-busy.txt": (
        [(0, 1, 0, 0, 476, 20224, 14), (0, 1, 1, 1, 476, 20224, 14), (0, 1, 2, 2, 476, 20224, 14)], BLACKSCHOLES),
    "a100-80gb-515-2ci-bar1.txt": ([(0, 1, 0, 0, 19, 40192, 14), (0, 1, 1, 1, 19, 40192, 14)], []),
    "a100-80gb-550-2gi-2ci.txt": (
        [(0, 1, 0, 0, 37, 40192, 14), (0, 1, 1, 1, 37, 40192, 28), (0, 2, 0, 2, 49, 40192, 14),
         (0, 2, 1, 3, 49, 40192, 28)], []),
    "a100-80gb-550-gi-without-ci.txt": ([], []),
    # One CI per GI (the default): each row has its own memory.
    "rtx-pro-6000-610-host-two-gpus.txt": (
        [(2, gi, 0, gi - 3, 64, 24192, 46) for gi in (3, 4, 5, 6)]
        + [(3, gi, 0, gi - 3, 1786 if gi == 6 else 64, 24192, 46) for gi in (3, 4, 5, 6)],
        [(3, 6, 0, 698976, "python3", 1714)]),
    "rtx-pro-6000-610-container.txt": ([(0, 6, 0, 0, 1786, 24192, 46)], [(0, 6, 0, 1, "python3", 1714)]),
    "nvitop-pr8-a100-processes.txt": ([], [
        (0, None, None, 55111, "tritonserver", 20481), (1, 3, 0, 34965, "python", 14195),
        (1, 3, 0, 61812, "python3", 149), (1, 5, 0, 46505, "python", 9807), (1, 6, 0, 42859, "python", 9865),
        (2, 3, 0, 26294, "python", 15191), (2, 4, 0, 28989, "python", 13323), (3, 3, 0, 37648, "python", 13313),
        (3, 4, 0, 46064, "python", 9833), (3, 5, 0, 48604, "python", 10321)]),
}


MERGED = ["a100-80gb-515-2ci-bar1.txt", "a100-80gb-550-2gi-2ci.txt", "mig-user-guide-a100-40gb-3ci-busy.txt",
          "mig-user-guide-a100-40gb-3ci-idle.txt"]


@pytest.mark.parametrize("name", MERGED)
def test_item2_merged_memory_cells_keep_every_compute_instance(name):
    """Item 2: every CI row is kept; a CI printed under its GI's merged memory cell gets that GI's
    memory (shared), never the memory of another GI; processes keep their GI and CI."""
    check_table(name)


@pytest.mark.parametrize("name", sorted(set(TABLES) - set(MERGED)))
def test_mig_corpus_tables_with_one_compute_instance_per_gpu_instance(name):
    """The other tables of the corpus (one CI per GI, none, or only a Processes box), parsed exactly."""
    check_table(name)


def check_table(name):
    devices, processes = nvsmi.parse_mig_table(read(name))
    want_devices, want_processes = TABLES[name]
    assert [(d["gpu_index"], d["gpu_instance_id"], d["compute_instance_id"], d["mig_index"], d["memory.used"],
             d["memory.total"], d["sm_count"]) for d in devices] == want_devices
    assert [(p["gpu_index"], p["gpu_instance_id"], p["compute_instance_id"], p["pid"], p["process_name"],
             p["used_gpu_memory"]) for p in processes] == want_processes


def test_mig_corpus_covers_every_file():
    listed = {name for name in os.listdir(CORPUS) if name.endswith(".txt")}
    assert listed == set(TABLES) | set(LISTS)
    with open(corpus("SOURCE.md"), encoding="utf-8") as fp:
        source = fp.read()
    assert all(f"`{name}`" in source for name in listed)


LISTS = {
    "a100-80gb-550-2gi-2ci.L.txt": {0: ("GPU-59227d3b-92c1-9394-2694-e5d2d09d7ca6", [
        (0, "1c.3g.40gb", "MIG-ea8d189c-bcdb-519a-a97e-8a2e7848bc1c"),
        (1, "2c.3g.40gb", "MIG-28722365-8992-5bc1-bc81-c8bd010e507c"),
        (2, "1c.4g.40gb", "MIG-54f0f6f3-0c7c-5087-b810-9770732e8591"),
        (3, "2c.4g.40gb", "MIG-b8753643-33b5-589f-bc5f-da5995b5674c")])},
    "a100-80gb-550-two-gpus.L.txt": {
        0: ("GPU-59227d3b-92c1-9394-2694-e5d2d09d7ca6", [
            (0, "1c.3g.40gb", "MIG-ea8d189c-bcdb-519a-a97e-8a2e7848bc1c"),
            (1, "2c.3g.40gb", "MIG-28722365-8992-5bc1-bc81-c8bd010e507c"),
            (2, "1c.4g.40gb", "MIG-54f0f6f3-0c7c-5087-b810-9770732e8591"),
            (3, "2c.4g.40gb", "MIG-b8753643-33b5-589f-bc5f-da5995b5674c")]),
        1: ("GPU-13d510f6-4f49-f720-697a-91908f12e2d6", [
            (0, "2g.20gb", "MIG-593bb78a-c62d-51f5-970b-5056771ec6fb"),
            (1, "2g.20gb", "MIG-658e3359-4288-54e8-bb01-98ae7c9448ea"),
            (2, "1g.10gb", "MIG-6b765df0-e1a2-54ab-9525-224e8d14ce0a")])},
    "a100-40gb-r450-mig-gpu-uuid.L.txt": {0: ("GPU-2fa5cf01-9520-1bc1-995b-cc0c6d9bca7c", [
        (0, "1c.3g.20gb", "MIG-GPU-2fa5cf01-9520-1bc1-995b-cc0c6d9bca7c/1/0"),
        (1, "1c.3g.20gb", "MIG-GPU-2fa5cf01-9520-1bc1-995b-cc0c6d9bca7c/2/0")])},
    "mig-user-guide-a100-40gb-3ci.L.txt": {0: ("GPU-00000000-0000-0000-0000-000000000000", [
        (0, "1c.3g.20gb", "MIG-c7384736-a75d-5afc-978f-d2f1294409fd"),
        (1, "1c.3g.20gb", "MIG-c376546e-7559-5610-9721-124e8dbb1bc8"),
        (2, "1c.3g.20gb", "MIG-928edfb0-898f-53bd-bf24-c7e5d08a6852")])},
    "a100-80gb-550-gi-without-ci.L.txt": {0: ("GPU-59227d3b-92c1-9394-2694-e5d2d09d7ca6", [])},
}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_mig_corpus_listings(name):
    """``nvidia-smi -L`` with MIG lines: R450's ``MIG-GPU-<uuid>/<gi>/<ci>`` names, later drivers'
    ``MIG-<uuid>``, compute-instance profiles (``1c.3g.40gb``), lines padded with blanks."""
    listing = nvsmi.parse_list_gpus(read(name))
    assert {gpu: (info["uuid"], [(i, m["profile"], m["uuid"]) for i, m in sorted(info["mig"].items())])
            for gpu, info in listing.items()} == LISTS[name]


def test_item2_each_compute_instance_joined_to_its_own_uuid():
    """Two GIs of two CIs each (A100 80GB, driver 550): four MIG devices, each with its -L name,
    the CIs of one GI with that GI's memory."""
    devices, _ = nvsmi.parse_mig_table(read("a100-80gb-550-2gi-2ci.txt"))
    joined = nvsmi.mig_devices(nvsmi.parse_list_gpus(read("a100-80gb-550-2gi-2ci.L.txt")), devices)
    assert [(d["profile"], d["uuid"], d["gpu_instance_id"], d["compute_instance_id"], d["memory.used"])
            for d in joined] == [
        ("1c.3g.40gb", "MIG-ea8d189c-bcdb-519a-a97e-8a2e7848bc1c", 1, 0, 37),
        ("2c.3g.40gb", "MIG-28722365-8992-5bc1-bc81-c8bd010e507c", 1, 1, 37),
        ("1c.4g.40gb", "MIG-54f0f6f3-0c7c-5087-b810-9770732e8591", 2, 0, 49),
        ("2c.4g.40gb", "MIG-b8753643-33b5-589f-bc5f-da5995b5674c", 2, 1, 49)]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The fake nvidia-smi (H100-MIG capture for the GPU query) answering -L and the table from the corpus."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_NVSMI_LOG", str(log))
    monkeypatch.setenv("FAKE_NVSMI_CAPTURE", "h100-mig")
    monkeypatch.setenv("FAKE_NVSMI_GPUS", "1")

    def configure(table=None, listing=None, **env):
        if table:
            monkeypatch.setenv("FAKE_NVSMI_MIG_TABLE", corpus(table))
        if listing:
            monkeypatch.setenv("FAKE_NVSMI_MIG_LIST", corpus(listing))
        for key, value in env.items():
            monkeypatch.setenv("FAKE_NVSMI_" + key.upper(), str(value))
        return log

    configure.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return configure


GUIDE_UUIDS = ["MIG-c7384736-a75d-5afc-978f-d2f1294409fd", "MIG-c376546e-7559-5610-9721-124e8dbb1bc8",
               "MIG-928edfb0-898f-53bd-bf24-c7e5d08a6852"]


def test_item2_agent_places_each_process_in_its_compute_instance(fake):
    """The MIG User Guide's three BlackScholes runs, one per CI of GI 1: three MIG devices (227e0d8
    kept only CI 0, so two of the three processes had no instance), each process in its own CI."""
    fake(table="mig-user-guide-a100-40gb-3ci-busy.txt", listing="mig-user-guide-a100-40gb-3ci.L.txt",
         state="load", pids="59785,59796,59885")
    result = GpuCollector(FAKE_NVSMI).collect()
    assert [(d["mig_index"], d["uuid"], d["gpu_instance_id"], d["compute_instance_id"], d["memory.used"],
             d["memory.total"]) for d in result["mig_devices"]] == [
        (0, GUIDE_UUIDS[0], 1, 0, 476, 20224), (1, GUIDE_UUIDS[1], 1, 1, 476, 20224),
        (2, GUIDE_UUIDS[2], 1, 2, 476, 20224)]
    assert [(p["pid"], p["gpu_instance_id"], p["compute_instance_id"], p["mig_uuid"]) for p in result["processes"]] == [
        (59785, 1, 0, GUIDE_UUIDS[0]), (59796, 1, 1, GUIDE_UUIDS[1]), (59885, 1, 2, GUIDE_UUIDS[2])]


def test_item3_table_read_again_when_a_process_starts_between_reads(fake):
    """A job started after the last table read is not placed: the next cycle at least MIG_RECHECK_S
    after that read reads the table again (227e0d8 waited up to a minute, reporting every instance
    idle meanwhile)."""
    log = fake(table="mig-user-guide-a100-40gb-3ci-idle.txt", listing="mig-user-guide-a100-40gb-3ci.L.txt",
               state="idle")
    collector = GpuCollector(FAKE_NVSMI)
    first = collector.collect()
    assert first["processes"] == [] and all(d["sampled_at"] is not None for d in first["mig_devices"])
    calls = len(fake.calls())
    fake(table="mig-user-guide-a100-40gb-3ci-busy.txt", state="load", pids="59785,59796,59885")
    soon = collector.collect()  # within MIG_RECHECK_S of the read: no call, the processes unplaced
    assert len(fake.calls()) == calls + 2 and all("mig_uuid" not in p for p in soon["processes"])
    collector._mig_table_at -= MIG_RECHECK_S
    later = collector.collect()
    assert len(fake.calls()) == calls + 5 and fake.calls()[-1].split()[-1] == FAKE_NVSMI
    assert [p["mig_uuid"] for p in later["processes"]] == GUIDE_UUIDS
    assert [d["memory.used"] for d in later["mig_devices"]] == [476, 476, 476]
    assert log.exists()


def test_item3_table_read_in_the_same_cycle_when_L_changes(fake):
    """The blog's A100: GIs created without compute instances ("No MIG devices found"), then two CIs
    per GI. When -L names new devices, the table is read in the same cycle, so they are never
    reported without memory and processes."""
    fake(table="a100-80gb-550-gi-without-ci.txt", listing="a100-80gb-550-gi-without-ci.L.txt", state="idle")
    collector = GpuCollector(FAKE_NVSMI)
    assert collector.collect()["mig_devices"] == []
    fake(table="a100-80gb-550-2gi-2ci.txt", listing="a100-80gb-550-2gi-2ci.L.txt")
    calls = len(fake.calls())
    collector._mig_listed_at -= MIG_LIST_INTERVAL_S
    result = collector.collect()
    assert [c.split()[-1] for c in fake.calls()[calls:]][-2:] == ["-L", FAKE_NVSMI]
    assert [(d["uuid"], d["memory.used"], d["memory.total"], d["sampled_at"] is not None)
            for d in result["mig_devices"]] == [
        ("MIG-ea8d189c-bcdb-519a-a97e-8a2e7848bc1c", 37, 40192, True),
        ("MIG-28722365-8992-5bc1-bc81-c8bd010e507c", 37, 40192, True),
        ("MIG-54f0f6f3-0c7c-5087-b810-9770732e8591", 49, 40192, True),
        ("MIG-b8753643-33b5-589f-bc5f-da5995b5674c", 49, 40192, True)]


# ---- hub: free_gpus through real ingest (SQLite) and Datasette ------------------------------------

def free_mig(client):
    rows = client.get("/monitor/free_gpus.json?_shape=array").json()
    return [(r["server"], r["mig_profile"], r["cuda_visible_devices"], r["min_free_mib"]) for r in rows
            if r["mig_profile"] is not None]


def corpus_report(hostname, table, listing, busy_pids=(), placed=True):
    """A report of one H100-MIG-capture GPU carrying the MIG devices the agent's own parser makes of a
    corpus table and listing (GPU UUID replaced by the report's), and one process per ``busy_pids``
    entry placed where the table says (or left unplaced)."""
    report = mig_report(hostname, busy_instances=())
    gpu = report["gpus"][0]
    listing = nvsmi.parse_list_gpus(read(listing))
    listing[0]["uuid"] = gpu["uuid"]
    devices, procs = nvsmi.parse_mig_table(read(table))
    report["mig_devices"] = [dict(d, sampled_at=report["sample_time"]) for d in nvsmi.mig_devices(listing, devices)]
    by_ci = {(d["gpu_instance_id"], d["compute_instance_id"]): d["uuid"] for d in report["mig_devices"]}
    where = {p["pid"]: p for p in procs}
    for pid in busy_pids:
        proc = {"gpu_uuid": gpu["uuid"], "pid": pid, "process_name": where[pid]["process_name"],
                "used_gpu_memory": where[pid]["used_gpu_memory"], "user": "alice", "uid": 1000,
                "container": None, "container_kind": None}
        if placed:
            gi, ci = where[pid]["gpu_instance_id"], where[pid]["compute_instance_id"]
            proc.update(gpu_instance_id=gi, compute_instance_id=ci, mig_uuid=by_ci[(gi, ci)])
        report["processes"].append(proc)
    return report


def test_item3_free_gpus_never_offers_an_unknown_or_sibling_busy_mig_instance(admin):
    # A first report as 227e0d8's agent sent it: instances named by -L, memory and processes unknown,
    # and a job on the GPU that no instance holds yet.
    unknown = mig_report("mig-unknown", busy_instances=())
    for device in unknown["mig_devices"]:
        device.update({"gpu_instance_id": None, "compute_instance_id": None, "memory.used": None,
                       "memory.total": None, "sm_count": None, "sampled_at": None})
    unknown["processes"] = [{"gpu_uuid": unknown["gpus"][0]["uuid"], "pid": 21180, "process_name": "./gpu_burn",
                             "used_gpu_memory": 7484, "user": "bob", "uid": 1001, "container": None,
                             "container_kind": None}]
    assert ingest(admin, unknown, admin.token).status_code == 201
    # Known instances, but a process the last table did not place (started between two reads).
    unplaced = corpus_report("mig-unplaced", "mig-user-guide-a100-40gb-3ci-busy.txt",
                             "mig-user-guide-a100-40gb-3ci.L.txt", busy_pids=(59796,), placed=False)
    assert ingest(admin, unplaced, admin.token).status_code == 201
    # The MIG User Guide's GI 1 split in three CIs, a job in CI 1: CIs 0 and 2 share its memory.
    sibling = corpus_report("mig-sibling", "mig-user-guide-a100-40gb-3ci-busy.txt",
                            "mig-user-guide-a100-40gb-3ci.L.txt", busy_pids=(59796,))
    assert ingest(admin, sibling, admin.token).status_code == 201
    # Two GIs of two CIs each (A100 80GB), a job in GI 1's CI 0: only GI 2 is free, offered once, as
    # its CI with the most SMs.
    two = corpus_report("mig-two-gi", "a100-80gb-550-2gi-2ci.txt", "a100-80gb-550-2gi-2ci.L.txt")
    two["processes"].append({"gpu_uuid": two["gpus"][0]["uuid"], "pid": 4242, "process_name": "python train.py",
                             "used_gpu_memory": 1024, "user": "carol", "uid": 1002, "container": None,
                             "container_kind": None, "gpu_instance_id": 1, "compute_instance_id": 0,
                             "mig_uuid": "MIG-ea8d189c-bcdb-519a-a97e-8a2e7848bc1c"})
    assert ingest(admin, two, admin.token).status_code == 201
    # The idle GI 1 of the guide (three CIs, no job): one row, not three.
    idle = corpus_report("mig-idle", "mig-user-guide-a100-40gb-3ci-idle.txt", "mig-user-guide-a100-40gb-3ci.L.txt")
    assert ingest(admin, idle, admin.token).status_code == 201
    assert free_mig(admin) == [
        ("mig-two-gi", "2c.4g.40gb", "MIG-b8753643-33b5-589f-bc5f-da5995b5674c", 40192 - 49),
        ("mig-idle", "1c.3g.20gb", GUIDE_UUIDS[0], 20224 - 11)]
    conn = sqlite3.connect(admin.db)
    assert conn.execute("select m.mig_index, m.process_count from mig_devices m join servers s on s.id = m.server_id"
                        " where s.hostname = 'mig-sibling' order by m.mig_index").fetchall() == [(0, 0), (1, 1), (2, 0)]


def test_item3_agent_once_on_a_busy_mig_host_offers_only_the_idle_instances(ingest_server, admin, tmp_path):
    """The real agent, ``--once``, on the H100-MIG capture under load (a job in GI 2): its one report
    places the job, and /free offers the three other instances, not the busy one (227e0d8 offered
    all four: the first report had no table read)."""
    config = tmp_path / "agent.yaml"
    config.write_text(f"server_url: {ingest_server.base_url}\ntoken: {admin.token}\ninterval: 5\n"
                      f"nvidia_smi: {FAKE_NVSMI}\nspool_dir: {tmp_path / 'spool'}\nhostname: mig-once\n")
    env = dict(os.environ, FAKE_NVSMI_GPUS="1", FAKE_NVSMI_CAPTURE="h100-mig", FAKE_NVSMI_STATE="load")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), "--once"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.startswith("stored report "), result.stderr
    offered = free_mig(admin)
    assert [(server, profile, uuid) for server, profile, uuid, _ in offered] == [
        ("mig-once", "2g.20gb", "MIG-00000001-0000-0000-0000-000000000001"),
        ("mig-once", "1g.10gb", "MIG-00000002-0000-0000-0000-000000000002"),
        ("mig-once", "1g.10gb", "MIG-00000003-0000-0000-0000-000000000003")]
    conn = sqlite3.connect(admin.db)
    assert conn.execute("select count(*), min(mig_uuid) from gpu_processes").fetchone() == (
        3, "MIG-00000000-0000-0000-0000-000000000000")


def test_item3_fleet_document_marks_unknown_and_shared_mig_instances(admin):
    """The grid's MIG sub-cells: 227e0d8 called every instance without a process "free", also one
    whose usage was never read and one beside a busy sibling CI. Now each device carries the state
    /free goes by: busy, shared, unknown or free."""
    sibling = corpus_report("mig-sibling", "mig-user-guide-a100-40gb-3ci-busy.txt",
                            "mig-user-guide-a100-40gb-3ci.L.txt", busy_pids=(59796,))
    assert ingest(admin, sibling, admin.token).status_code == 201
    unknown = mig_report("mig-unknown", busy_instances=())
    for device in unknown["mig_devices"]:
        device.update({"memory.used": None, "memory.total": None, "sampled_at": None})
    assert ingest(admin, unknown, admin.token).status_code == 201
    doc = admin.get("/api/fleet").json()
    mig = {s["name"]: s["gpus"][0][doc["gpu_fields"].index("mig")] for s in doc["servers"]}
    assert [(m[0], m[5], m[6]) for m in mig["mig-sibling"]] == [
        (GUIDE_UUIDS[0], 0, "shared"), (GUIDE_UUIDS[1], 1, "busy"), (GUIDE_UUIDS[2], 0, "shared")]
    assert [m[6] for m in mig["mig-unknown"]] == ["unknown"] * 4


def test_item2_metrics_one_series_per_gpu_instance(admin):
    """/metrics after keeping every CI: the guide's GI 1 with three CIs (all named 1c.3g.20gb) is one
    DCGM_FI_DEV_FB_USED series labelled GPU_I_PROFILE 3g.20gb, as dcgm-exporter labels a GI (a series per
    CI would repeat one label set, which Prometheus rejects); processes summed over its CIs."""
    from prometheus_client.parser import text_string_to_metric_families

    busy = corpus_report("mig-metrics", "mig-user-guide-a100-40gb-3ci-busy.txt", "mig-user-guide-a100-40gb-3ci.L.txt",
                         busy_pids=(59785, 59796))
    assert ingest(admin, busy, admin.token).status_code == 201
    found = {f.name: f for f in text_string_to_metric_families(admin.get("/metrics").text)}
    mig = [(s.labels["GPU_I_ID"], s.labels["GPU_I_PROFILE"], s.value) for s in found["DCGM_FI_DEV_FB_USED"].samples
           if s.labels.get("Hostname") == "mig-metrics" and s.labels.get("GPU_I_ID")]
    assert mig == [("1", "3g.20gb", 476)]
    procs = [s.value for s in found["server_monitor_gpu_processes"].samples
             if s.labels.get("Hostname") == "mig-metrics" and s.labels.get("GPU_I_ID")]
    assert procs == [2]
