"""Issue 22 items 9, 10 and 11: the hub's answers behind the pages (idle holders, lost GPUs,
alert onsets), with reports stored through the real ingest and read through the real
Datasette app (canned queries, /api/fleet) and the real alert engine."""

import sqlite3
import time

from reports import mig_report, sample_report
from test_hub_datasette import Client, ingest

from server_monitor.jobs import alerts
from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report


def _admin(datasette, hub_config):
    client = Client(datasette)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    return client


def _cells(doc, name):
    server = next(s for s in doc["servers"] if s["name"] == name)
    return [dict(zip(doc["gpu_fields"], g)) for g in server["gpus"]]


def test_item9_a_gpu_whose_utilization_is_unknown_is_never_an_idle_holder(datasette, hub_config):
    """Three GPUs held (30 GB each) for 3 hours: GPU 0 at 0 %, GPU 1 reporting utilization
    "[N/A]" (null), and a MIG GPU (utilization never reported). Only GPU 0 is an idle holder in
    the idle_holders query, the fleet document's states and counts and the who-panel's idle
    column (227e0d8 read null as 0 % and called all of them idle)."""
    admin = _admin(datasette, hub_config)
    token = hub_config.get("agent.token")
    now = int(time.time())
    report = sample_report("holder", gpus=2, processes=1, sample_time=now - 10)
    report["gpus"][0]["utilization.gpu"] = 0
    report["gpus"][1]["utilization.gpu"] = None  # nvidia-smi printed [N/A]
    for g in report["gpus"]:
        g["memory.used"] = 30000
        g["memory.free"] = g["memory.total"] - g["memory.reserved"] - 30000
    for p in report["processes"]:
        p["used_gpu_memory"] = 30000
    assert ingest(admin, report, token).status_code == 201
    mig = mig_report("mig-holder", busy_instances=(0, 1), sample_time=now - 10)
    mig["gpus"][0]["memory.used"] = 30000
    assert ingest(admin, mig, token).status_code == 201
    conn = sqlite3.connect(hub_config.db_path)
    gpus = dict(conn.execute("SELECT s.hostname || ':' || g.gpu_index, g.id FROM gpus g JOIN servers s ON s.id = g.server_id"))
    rows = []
    for i in range(1, 361):  # 3 hours of samples every 30 s, all held
        ts = now - 10 - i * 30
        rows += [(gpus["holder:0"], ts, 0, 30000), (gpus["holder:1"], ts, None, 30000), (gpus["mig-holder:0"], ts, None, 30000)]
    conn.executemany("INSERT OR IGNORE INTO gpu_samples (gpu_id, ts, utilization_gpu, memory_used_mib) VALUES (?,?,?,?)", rows)
    conn.commit()
    idle = admin.get("/monitor/idle_holders.json?_shape=array").json()
    assert [(r["server"], r["gpu_index"]) for r in idle] == [("holder", 0)], idle
    assert idle[0]["idle_hours"] >= 2.9 and idle[0]["users"] == "user0"
    doc = admin.get("/api/fleet?fresh=1").json()
    assert [c["state"] for c in _cells(doc, "holder")] == ["idle", "busy"]
    assert [c["state"] for c in _cells(doc, "mig-holder")] == ["mig"]
    assert doc["counts"]["gpus"].get("idle") == 1
    assert {w["user"]: w["idle"] for w in doc["who"]}["user0"] == 1


def test_item10_a_known_gpu_that_goes_lost_is_one_cell_and_one_problem(datasette, hub_config):
    """A host reports GPUs 0 and 1, then GPU 1 is gone and nvidia-smi names it lost with its
    own spelling of the bus (``0000:28:00.0`` against the GPU's ``00000000:28:00.0``). The
    grid shows two cells (GPU 1 lost, not a third "GPU 28:00" cell), the header counts one
    lost GPU, and there is one problem (227e0d8: three cells and "2 broken")."""
    admin = _admin(datasette, hub_config)
    token = hub_config.get("agent.token")
    now = int(time.time())
    assert ingest(admin, sample_report("node-034", gpus=2, processes=0, sample_time=now - 60), token).status_code == 201
    later = sample_report("node-034", gpus=1, processes=0, sample_time=now - 30)
    later["gpu_status"] = {"state": "gpu_lost", "stale": False, "message": "1 GPU lost",
                           "lost": [{"pci.bus_id": "0000:28:00.0",
                                     "message": "Unable to determine the device handle for GPU0000:28:00.0: Unknown Error"}]}
    assert ingest(admin, later, token).status_code == 201
    engine = alerts.AlertEngine(hub_config.db_path, alerts.settings(type("C", (), {"get": lambda *a, **k: {}})()))
    engine.run_once(now)
    doc = admin.get("/api/fleet?fresh=1").json()
    cells = _cells(doc, "node-034")
    assert [(c["index"], c["state"]) for c in cells] == [(0, "busy"), (1, "lost")], cells
    assert doc["counts"]["gpus"].get("lost") == 1
    assert [p["rule"] for p in doc["problems"]] == ["gpu_lost"]


def _put(conn, report, t):
    report["sent_at"] = t  # sent when sampled and received at once: no clock skew to correct
    store_report(conn, validate_report(report), t)


def test_item11_alerts_start_when_the_condition_started_not_at_the_first_evaluation(tmp_path):
    """Five hours of stored history, then the hub's first evaluation (a restart, or the demo's
    backfill): a GPU missing since 5 h ago (the driver naming it lost), a driver mismatch since
    3 h ago, a disk over 90 % since 2 h ago. Each alert's started_at is the first report that
    showed it (227e0d8 stamped them all with the evaluation time: "GPU LOST … for 10 s")."""
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    now = int(time.time())
    step = 600
    start = now - 6 * 3600
    lost_from = now - 5 * 3600
    for t in range(start, now + 1, step):
        lost = sample_report("dgx-a01", gpus=2 if t < lost_from else 1, processes=0, disks=1, sample_time=t)
        if t >= lost_from:
            lost["gpu_status"] = {"state": "gpu_lost", "stale": False, "message": "1 GPU lost",
                                  "lost": [{"pci.bus_id": "0000:28:00.0", "message": "Unable to determine the device handle"}]}
        _put(conn, lost, t)
        broken = sample_report("gpu-c01", gpus=0 if t >= now - 3 * 3600 else 1, processes=0, disks=1, sample_time=t)
        if t >= now - 3 * 3600:
            broken["gpu_status"] = {"state": "driver_mismatch", "lost": [], "stale": False,
                                    "message": "Failed to initialize NVML: Driver/library version mismatch"}
        if t >= now - 2 * 3600:
            broken["disks"][0]["used_bytes"] = broken["disks"][0]["total_bytes"] * 95 // 100
        _put(conn, broken, t)
    engine = alerts.AlertEngine(path, alerts.settings(type("C", (), {"get": lambda *a, **k: {}})()))
    fired = engine.run_once(now + 10)["fired"]
    assert sorted(key.split(":")[0] for key in fired) == ["disk_full", "gpu_failure", "gpu_lost"], fired
    started = dict(conn.execute("SELECT rule, started_at FROM alerts"))
    first_at = lambda since: start + -(-(since - start) // step) * step  # noqa: E731  (first report at or after)
    assert started["gpu_lost"] == first_at(lost_from)
    assert started["gpu_failure"] == first_at(now - 3 * 3600)
    assert started["disk_full"] == first_at(now - 2 * 3600)
    # A second pass keeps the stored onset.
    assert engine.run_once(now + 70)["fired"] == []
    assert dict(conn.execute("SELECT rule, started_at FROM alerts")) == started


def test_item11_history_stored_after_the_alert_moves_its_start_back(tmp_path):
    """The demo (and an agent replaying its spool after an outage) sends the current report
    first and the hours before it afterwards: the alert fired on the current report alone is
    moved back to the onset the replayed history shows, on the next pass."""
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    now = int(time.time())
    lost_from = now - 5 * 3600

    def report(t):
        r = sample_report("dgx-a01", gpus=2 if t < lost_from else 1, processes=0, sample_time=t)
        if t >= lost_from:
            r["gpu_status"] = {"state": "gpu_lost", "stale": False, "message": "1 GPU lost",
                               "lost": [{"pci.bus_id": "0000:28:00.0", "message": "Unable to determine the device handle"}]}
        return r
    _put(conn, sample_report("dgx-a01", gpus=2, processes=0, sample_time=now - 6 * 3600), now - 6 * 3600)
    _put(conn, report(now), now)
    engine = alerts.AlertEngine(path, alerts.settings(type("C", (), {"get": lambda *a, **k: {}})()))
    engine.run_once(now + 1)
    for t in range(now - 6 * 3600 + 600, now, 600):  # the replay
        _put(conn, report(t), t)
    engine.run_once(now + 61)
    (started,) = conn.execute("SELECT started_at FROM alerts WHERE rule = 'gpu_lost'").fetchone()
    assert started == lost_from  # the first replayed report without the GPU
