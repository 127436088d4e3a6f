"""Issue 22 item 7: Slurm GPU allocations — parser on real outputs, collector with a fake
scontrol, contract/store/free GPUs/GPU-hours, the real agent against the real hub, the grid."""

import getpass
import os
import subprocess
import sys
import time

import pytest
from conftest import FAKE_NVSMI, ROOT, file_connection
from reports import sample_report

from monitor_agent import slurm
from monitor_agent.runner import BoundedRunner

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "slurm")
FAKE_SCONTROL = os.path.join(HERE, "fakebin", "scontrol")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def local_start(text):
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


# ---- parser on the real outputs -----------------------------------------------------------

def test_item7_parser_huji_fixture_old_and_new_gres_forms():
    jobs = slurm.parse_jobs(fixture("scontrol_show_job_d_huji.txt"))
    assert [j["JobId"] for j in jobs] == ["1", "2398617", "153291", "134238037", "2423559", "20547", "1306093",
                                          "25686416", "25687666"]
    # Old form (Slurm <= 19.05): GRES_IDX=gpu(IDX:0,2-3,5).
    assert slurm.node_allocations(jobs, "node-06") == [{
        "job_id": "153291", "array_id": None, "user": "user3", "uid": 300, "partition": "medium", "name": "name3", "state": "RUNNING",
        "start_time": local_start("2019-02-07T16:05:09"), "gpu_indexes": [0, 2, 3, 5]}]
    # Array task: the id squeue prints, ArrayJobId_ArrayTaskId; newer GRES=gpu(IDX:5).
    [task] = slurm.node_allocations(jobs, "cortex-08")
    assert task["job_id"] == "2423559" and task["array_id"] == "2423430_72" and task["user"] == "user4" and task["gpu_indexes"] == [5]
    # Another GRES before the GPU, and a typed GPU GRES followed by another.
    assert slurm.node_allocations(jobs, "node-005")[0]["gpu_indexes"] == [3]
    [typed] = slurm.node_allocations(jobs, "node-001")
    assert typed["job_id"] == "25687666" and typed["gpu_indexes"] == [1] and typed["partition"] == "interactive"
    # A 3-node job without GPUs, a CPU-only job (GRES=), a COMPLETED array task: nothing.
    for node in ("node-63", "node-64", "node-65", "node-12", "node-44"):
        assert slurm.node_allocations(jobs, node) == []
    # PENDING jobs hold nothing.
    assert all(a["job_id"] not in ("134238037", "20547") for n in ("node-06", "cortex-08") for a in
               slurm.node_allocations(jobs, n))
    assert jobs[0]["details"][1] == {"Nodes": "node-64", "CPU_IDs": "0,4-7", "Mem": "2000", "GRES": ""}


def test_item7_parser_multinode_several_jobs_per_node_and_hostile_names():
    jobs = slurm.parse_jobs(fixture("scontrol_show_job_d_multinode.txt"))
    # Two jobs on dgx-12: an array task of a 2-node job (IDX 0-3) and a typed H200 job (4-5,7; the shard
    # entry is not a GPU). The job whose name and command pose as "UserId=root(0) ... Nodes=dgx-12
    # GRES=gpu:8(IDX:0-7)" runs on dgx-40/48 and is not seen on dgx-12.
    allocs = slurm.node_allocations(jobs, "dgx-12")
    assert [(a["job_id"], a["array_id"], a["user"], a["uid"], a["gpu_indexes"]) for a in allocs] == [
        ("4200", "4190_10", "user8", 800, [0, 1, 2, 3]), ("4300", None, "user9", 900, [4, 5, 7])]
    assert slurm.node_allocations(jobs, "dgx-10")[0]["gpu_indexes"] == [7]
    # One detail line for both nodes of a bracketed hostlist.
    for node in ("dgx-40", "dgx-48"):
        [pre] = slurm.node_allocations(jobs, node)
        assert pre["job_id"] == "4100" and pre["user"] == "user7" and pre["uid"] == 700
        assert pre["gpu_indexes"] == [3, 5, 6, 7] and pre["name"].startswith("pretrain UserId=root(0)")
    # DeepOps' documented job: JOB_GRES line before the detail line.
    [bash] = slurm.node_allocations(jobs, "gpu01")
    assert (bash["job_id"], bash["user"], bash["gpu_indexes"], bash["state"]) == ("106", "testuser", [0], "RUNNING")
    assert slurm.node_allocations(jobs, "dgx-44") == []


def test_item7_hostlist_indexes_and_gres_values():
    assert slurm.expand_hostlist("gpu[01-02,04,06],cpu1") == ["gpu01", "gpu02", "gpu04", "gpu06", "cpu1"]
    assert slurm.expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert slurm.expand_hostlist("node-[63-65]") == ["node-63", "node-64", "node-65"]
    assert slurm.expand_indexes("0,2-3,5") == [0, 2, 3, 5] and slurm.expand_indexes("N/A") == []
    assert slurm.gres_gpu_indexes("gpu:(null):8(IDX:0-7)") == list(range(8))
    assert slurm.gres_gpu_indexes("gpu:a100:1(IDX:0),gpu:v100:2(IDX:1-2)") == [0, 1, 2]
    assert slurm.gres_gpu_indexes("gpu:h200:0(IDX:N/A)") == []
    assert slurm.gres_gpu_indexes("gpu:nvidia_a100_1g.10gb:1(IDX:3)") == []  # MIG GRES: not whole GPUs
    assert slurm.gres_gpu_indexes("") == [] and slurm.gres_gpu_indexes(None) == []


# ---- collector with the fake scontrol ----------------------------------------------------------

GPUS8 = [{"index": i, "uuid": f"GPU-{i}", "vendor": "nvidia"} for i in range(8)]


def test_item7_collector_fake_scontrol_cached_bounded_and_kept_on_failure(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    monkeypatch.setenv("FAKE_SCONTROL_LOG", str(log))
    collector = slurm.SlurmCollector(FAKE_SCONTROL, node="dgx-12", interval=60, timeout=5)
    first = collector.collect(GPUS8, now=1000.0)
    assert first["slurm_state"] == "ok"
    assert [(j["job_id"], j["gpu_uuids"]) for j in first["slurm_jobs"]] == [
        ("4200", ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]), ("4300", ["GPU-4", "GPU-5", "GPU-7"])]
    collector.collect(GPUS8, now=1030.0)  # cached: no second call within the interval
    # (after a good job read, the node's partitions once per partition_interval: issue 24 item 1)
    assert log.read_text().splitlines() == ["show job -d", "show node dgx-12"]
    # slurmctld down: the allocations read last stay in force, the state says why.
    monkeypatch.setenv("FAKE_SCONTROL_MODE", "fail")
    failed = collector.collect(GPUS8, now=1061.0)
    assert failed["slurm_state"] == "error" and len(failed["slurm_jobs"]) == 2
    # A hung scontrol is killed at the timeout.
    monkeypatch.setenv("FAKE_SCONTROL_MODE", "hang")
    hung = slurm.SlurmCollector(FAKE_SCONTROL, node="dgx-12", timeout=1, runner=BoundedRunner())
    start = time.monotonic()
    assert hung.collect(GPUS8)["slurm_state"] == "timeout"
    assert time.monotonic() - start < 3


def test_item7_no_slurm_host_report_unchanged(tmp_path, caplog):
    from monitor_agent.collect import ReportBuilder
    from monitor_agent.config import DEFAULTS

    cfg = dict(DEFAULTS, nvidia_smi=str(tmp_path / "no-nvidia-smi"), scontrol=str(tmp_path / "no-scontrol"),
               kmsg_path=None, sysfs_root=str(tmp_path), procfs_root="/proc", inventory_interval=60)
    builder = ReportBuilder(cfg)
    with caplog.at_level("DEBUG"):
        report = builder.build()
        builder.build()
    assert "slurm_jobs" not in report and "slurm_state" not in report
    assert not [r for r in caplog.records if "slurm" in r.getMessage().lower()]
    # The hub stores such a report as before: no allocation, the idle GPU offered.
    from server_monitor.storage import schema
    from server_monitor.storage.contract import validate_report
    from server_monitor.storage.store import store_report

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    plain = sample_report("plain", gpus=2, processes=0, state="idle")
    store_report(conn, validate_report(plain), time.time())
    assert conn.execute("select count(*) from gpus where slurm_job is not null").fetchone()[0] == 0
    assert conn.execute("select count(*) from gpu_processes").fetchone()[0] == 0


# ---- hub: contract, store, /free, GPU-hours -----------------------------------------------------

def allocated_report(hostname="dgx-12", sample_time=None, processes_on=()):
    """8 idle GPUs; jobs 4190_10 (user8: GPUs 0-3) and 4300 (user9: 4, 5, 7) as the agent reports them."""
    report = sample_report(hostname, gpus=8, processes=0, state="idle", sample_time=sample_time)
    report["sent_at"] = report["sample_time"]  # sent when sampled: no clock skew
    for g in report["gpus"]:
        g["utilization.gpu"] = 0
    uuids = [g["uuid"] for g in report["gpus"]]
    report["slurm_state"] = "ok"
    report["slurm_jobs"] = [
        {"job_id": "4200", "array_id": "4190_10", "user": "user8", "uid": 800, "partition": "dgx", "name": "sweep", "state": "RUNNING",
         "start_time": 1742396702.0, "gpu_indexes": [0, 1, 2, 3], "gpu_uuids": uuids[0:4]},
        {"job_id": "4300", "user": "user9", "uid": 900, "partition": "dgx", "name": "finetune", "state": "RUNNING",
         "start_time": 1742396970.0, "gpu_indexes": [4, 5, 7], "gpu_uuids": [uuids[4], uuids[5], uuids[7]]},
    ]
    report["processes"] = [{"gpu_uuid": uuids[i], "pid": 5000 + i, "process_name": "python train.py",
                            "used_gpu_memory": 2048, "user": "user8", "uid": 800, "container": "job 4200",
                            "container_kind": "slurm"} for i in processes_on]
    return report


def test_item7_contract_nulls_a_hostile_job_string_only():
    from server_monitor.storage.contract import validate_report

    report = allocated_report()
    report["slurm_jobs"][1]["name"] = "x\u202eevil"
    checked = validate_report(report)
    # Free text under the shared text rule (tests/test_textrule.py): the bad character is
    # replaced by U+FFFD and the field named; the rest of the job is kept.
    assert checked["slurm_jobs"][1]["name"] == "x\ufffdevil" and checked["slurm_jobs"][1]["user"] == "user9"
    assert any("slurm_jobs[1].name" in n for n in checked["replaced"])


@pytest.fixture
def admin(datasette, hub_config):
    from test_hub_datasette import Client

    client = Client(datasette)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    client.token = hub_config.get("agent.token")
    return client


def test_item7_free_gpus_never_offers_allocated_gpus(admin):
    from test_hub_datasette import ingest

    assert ingest(admin, allocated_report(), admin.token).status_code == 201
    free = admin.get("/monitor/free_gpus.json?_shape=array").json()
    assert [(r["server"], r["free_gpus"], r["free_indexes"]) for r in free] == [("dgx-12", 1, "6")]
    assert admin.get("/monitor/free_gpus.json?_shape=array&count=2").json() == []
    gpus = {g["gpu_index"]: g for g in admin.get("/monitor/gpus.json?_shape=array").json()}
    doc = admin.get("/api/fleet").json()
    cells = [dict(zip(doc["gpu_fields"], g)) for g in doc["servers"][0]["gpus"]]
    assert [c["state"] for c in cells] == ["alloc"] * 6 + ["free", "alloc"]
    assert cells[4]["slurm"] == ["4300", "user9"] and cells[6]["slurm"] is None
    proc = dict(zip(doc["proc_fields"], cells[0]["procs"][0]))
    assert proc == {"pid": None, "user": "user8", "container": "slurm-alloc:job 4200", "mib": 0, "name": None,
                    "gi": None}
    who = {w["user"]: w for w in doc["who"]}
    assert who["user8"]["gpus"] == 4 and who["user9"]["gpus"] == 3
    assert who["user9"]["containers"] == ["slurm-alloc:job 4300"]
    assert doc["counts"]["gpus"] == {"alloc": 7, "free": 1}
    assert len(gpus) == 8


def test_item7_gpu_hours_count_allocated_gpus_for_the_jobs_user(tmp_path):
    from server_monitor.storage import schema
    from server_monitor.storage.contract import validate_report
    from server_monitor.serving.queries import QUERIES
    from server_monitor.storage.rollup import Maintenance
    from server_monitor.storage.store import store_report

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = file_connection(path)
    t0 = (int(time.time()) // 3600 - 3) * 3600
    # One hour allocated with no process; the next hour the job's process runs on GPU 0 (counted once).
    for i in range(120):
        ts = t0 + i * 30
        store_report(conn, validate_report(allocated_report(sample_time=ts)), ts + 1)
    for i in range(120, 240):
        ts = t0 + i * 30
        store_report(conn, validate_report(allocated_report(sample_time=ts, processes_on=(0,))), ts + 1)
    Maintenance(path, now=lambda: t0 + 3 * 3600, pause=0).run_once()

    def hours(by):
        cur = conn.execute(QUERIES["gpu_hours"]["sql"], {"since": str(t0), "until": str(t0 + 2 * 3600), "by": by, "group": "",
                                                        "_scope_all": 1, "_scope_servers": "[]",
                                                        "_scope_processes": 1})
        return {row[0]: row[2] for row in cur.fetchall()}

    by_user = hours("user")
    assert by_user["user8"] == pytest.approx(8.0, abs=0.01)  # 4 GPUs x 2 h, GPU 0 via its process in hour 2
    assert by_user["user9"] == pytest.approx(6.0, abs=0.01)  # 3 GPUs x 2 h, no process ever
    by_container = hours("container")
    assert by_container["job 4300"] == pytest.approx(6.0, abs=0.01)
    # The allocation rows carry the name the job's processes get from their cgroup (job_<JobId>).
    assert by_container["job 4200"] == pytest.approx(8.0, abs=0.01)
    assert sum(by_user.values()) == pytest.approx(14.0, abs=0.01)  # never counted twice


# ---- the real agent against the real hub -------------------------------------------------------

@pytest.mark.slow
def test_item7_agent_with_fake_scontrol_end_to_end(hub_process, hub_config, tmp_path):
    from http_client import Browserless

    config = tmp_path / "agent_config.yaml"
    config.write_text(f"server_url: {hub_process.base_url}\ntoken: {hub_config.get('agent.token')}\n"
                      f"nvidia_smi: {FAKE_NVSMI}\ninterval: 30\nspool_dir: {tmp_path / 'spool'}\n"
                      f"scontrol: {FAKE_SCONTROL}\nslurm_node: dgx-12\nkmsg_path: null\n")
    env = dict(os.environ, FAKE_NVSMI_CAPTURE="h100-80gb", FAKE_NVSMI_STATE="idle", FAKE_NVSMI_GPUS="8",
               FAKE_SCONTROL_LOG=str(tmp_path / "scontrol.log"))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), "--once"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # show node: the node's partitions (issue 24 item 1), read after a good job read.
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["show job -d", "show node dgx-12"]
    admin = Browserless(hub_process.base_url)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    gpus = sorted(admin.request("GET", "/monitor/gpus.json?_shape=array").json(), key=lambda g: g["gpu_index"])
    assert len(gpus) == 8
    free = admin.request("GET", "/monitor/free_gpus.json?_shape=array").json()
    assert [(r["free_gpus"], r["free_indexes"]) for r in free] == [(1, "6")]
    doc = admin.request("GET", "/api/fleet").json()
    cells = [dict(zip(doc["gpu_fields"], g)) for g in doc["servers"][0]["gpus"]]
    assert [c["slurm"] for c in cells] == [["4190_10", "user8"]] * 4 + [["4300", "user9"]] * 2 + [
        None, ["4300", "user9"]]
    assert [c["state"] for c in cells].count("alloc") == 7
    assert {w["user"]: w["gpus"] for w in doc["who"]} == {"user8": 4, "user9": 3}
    assert getpass.getuser()  # the agent ran as this user; the jobs' users come from scontrol


# ---- the grid in a real browser -------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_item7_browser_grid_cell_hover_and_who_panel_show_the_allocation(page, hub_process, hub_config):
    from browser import login, push
    from playwright.sync_api import expect

    push(hub_process, hub_config, allocated_report())
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    cells = page.locator("#grid .cell")
    assert cells.count() == 8
    cell = cells.nth(4)
    assert "s-alloc" in cell.get_attribute("class")
    assert cell.locator(".l1").inner_text() == "◷alloc" and cell.locator(".l2").inner_text() == "user9"
    label = cell.get_attribute("aria-label")
    assert "allocated to a Slurm job, no process yet" in label and "Slurm job 4300 of user9" in label
    assert "s-free" in cells.nth(6).get_attribute("class")
    assert "1 free" in page.inner_text("#summary") and "7 allocated (Slurm)" in page.inner_text("#summary")
    cell.hover()
    tip = page.locator("#tip")
    expect(tip).to_be_visible()
    text = tip.inner_text()
    assert "Slurm job 4300 of user9 — allocated, no process yet" in text
    assert "slurm-alloc:job 4300" in text and "allocated, no process yet" in text
    who = page.inner_text("#who-body")
    assert "user8" in who and "user9" in who and "slurm-alloc:job 4300" in who
    assert page.console_errors == []


@pytest.mark.browser
@pytest.mark.slow
def test_item7_browser_every_cell_glyph_is_drawn_not_a_missing_glyph_box(page, hub_process, hub_config):
    """The state glyphs of the grid cells and the legend (◷ allocated, ◌ idle, ✕ lost, ▲ error,
    ○ offline, ◐ stale, ■ maintenance, ✖ critical) are drawn from a font the browser has: each
    glyph, drawn on a canvas in the cells' font, differs from a code point no font has (the box
    a browser draws for a missing glyph). The allocated cell's "⧗" (U+29D7) is in no font of
    Debian's chromium with its DejaVu fonts: the demo's alloc cells read "▯alloc"."""
    from browser import login, push

    push(hub_process, hub_config, allocated_report())
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell.s-alloc")
    result = page.evaluate("""() => {
      const glyphs = new Set();
      for (const e of document.querySelectorAll('#grid .cell, #legend .cell')) {
        for (const ch of e.textContent) if (ch.codePointAt(0) > 0x2000) glyphs.add(ch);
      }
      const font = getComputedStyle(document.querySelector('#grid .cell.s-alloc .l1')).font;
      const draw = (ch) => {
        const c = document.createElement('canvas');
        c.width = 60; c.height = 60;
        const ctx = c.getContext('2d');
        ctx.font = font;
        ctx.fillText(ch, 10, 40);
        return c.toDataURL();
      };
      const missing = draw(String.fromCodePoint(0x10FFFD));
      return { glyphs: [...glyphs], missing: [...glyphs].filter((g) => draw(g) === missing) };
    }""")
    assert result["missing"] == [], result
    assert {"◷", "◌", "✕", "▲", "○", "◐", "■", "✖"} <= set(result["glyphs"]), result
    assert page.console_errors == []
