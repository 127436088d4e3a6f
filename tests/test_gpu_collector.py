"""GPU collection through the fake nvidia-smi: every failure kind reported by name."""

import subprocess
import sys
import time

import pytest
from conftest import FAKE_NVSMI

from monitor_agent.gpu import GpuCollector
from monitor_agent.runner import BoundedRunner


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Configure the fake via its environment; returns a function that sets variables."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_NVSMI_LOG", str(log))
    monkeypatch.setenv("FAKE_NVSMI_CAPTURE", "h100-80gb")

    def configure(**env):
        for key, value in env.items():
            monkeypatch.setenv("FAKE_NVSMI_" + key.upper(), str(value))
        return log

    return configure


def calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_eight_gpus_two_calls_per_cycle(fake):
    log = fake(gpus=8)
    collector = GpuCollector(FAKE_NVSMI)
    first = collector.collect()
    assert first["status"]["state"] == "ok"
    assert [g["index"] for g in first["gpus"]] == list(range(8))
    assert len({g["uuid"] for g in first["gpus"]}) == 8
    assert len(first["processes"]) == 24
    # --help-query-gpu and --version once, then the two queries (topo -m is not part of a cycle)
    assert len(calls(log)) == 4 and "gpu_topology" not in first
    collector.collect()
    assert len(calls(log)) == 6
    assert first["gpus"][0]["cuda_version"] == "13.1" and first["gpus"][0]["driver_version"] == "590.48.01"


_spawned = []
_watching = []


def _audit(event, args):
    if _watching and event in ("subprocess.Popen", "os.fork", "os.posix_spawn"):
        _spawned.append(event)


sys.addaudithook(_audit)


@pytest.mark.parametrize("name", ["nowhere/nvidia-smi", "nvidia-smi-not-on-path"])
def test_missing_nvidia_smi_means_no_gpu_not_an_error(tmp_path, name):
    path = str(tmp_path / name) if "/" in name else name
    _watching.append(True)
    try:
        result = GpuCollector(path).collect()
    finally:
        _watching.clear()
    assert result == {"status": {"state": "not_installed", "message": None, "lost": [], "stale": False},
                      "gpus": [], "processes": []}
    assert _spawned == []  # an AMD-only host forks nothing for the missing tool


@pytest.mark.parametrize(
    "mode,state,text",
    [
        ("driver_mismatch", "driver_mismatch", "Failed to initialize NVML: Driver/library version mismatch"),
        ("no_devices", "no_devices", "No devices were found"),
        ("driver_not_loaded", "driver_not_loaded", "couldn't communicate with the NVIDIA driver"),
        ("no_permission", "insufficient_permissions", "Insufficient Permissions"),
    ],
)
def test_whole_tool_failures(fake, mode, state, text):
    fake(mode=mode)
    result = GpuCollector(FAKE_NVSMI).collect()
    assert result["status"]["state"] == state
    assert text in result["status"]["message"]
    assert result["gpus"] == []


@pytest.mark.parametrize("mode,bus", [("lost:1", "00000000:28:00.0"), ("is_lost:1", "00000000:28:00.0"),
                                      ("lost_nospace:1", "0000:28:00.0")])
def test_one_lost_gpu_keeps_the_others(fake, mode, bus):
    fake(gpus=4, mode=mode)
    result = GpuCollector(FAKE_NVSMI).collect()
    assert result["status"]["state"] == "gpu_lost"
    assert [g["index"] for g in result["gpus"]] == [0, 2, 3]
    assert [item["pci.bus_id"] for item in result["status"]["lost"]] == [bus]
    assert bus in result["status"]["message"]
    assert "GPU-" not in result["status"]["message"]  # never another GPU's CSV row


def test_gpu_requires_reset_is_reported_by_name(fake):
    fake(gpus=2, mode="reset:0")
    result = GpuCollector(FAKE_NVSMI).collect()
    assert result["status"]["state"] == "ok"
    assert result["gpus"][0]["state"] == "requires_reset" and result["gpus"][0]["memory.used"] is None
    assert "state" not in result["gpus"][1] and result["gpus"][1]["memory.used"] == 19818


def test_all_sentinel_spellings_null_values_but_keep_the_gpu(fake):
    fake(gpus=2, mode="sentinels")
    result = GpuCollector(FAKE_NVSMI).collect()
    assert result["status"]["state"] == "ok"
    assert len(result["gpus"]) == 2
    gpu = result["gpus"][0]
    assert gpu["uuid"].startswith("GPU-") and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert all(gpu[k] is None for k in ("utilization.gpu", "memory.used", "power.draw", "temperature.gpu"))


def test_field_unknown_to_the_driver_is_dropped_and_remembered(fake):
    # An older driver: no power.draw.instant, throttle reasons under their old name.
    log = fake(drop="power.draw.instant,clocks_event_reasons.active")
    collector = GpuCollector(FAKE_NVSMI, discover_fields=False)
    result = collector.collect()
    assert result["status"]["state"] == "ok"
    gpu = result["gpus"][0]
    assert "power.draw.instant" not in gpu
    assert gpu["power.draw"] == 631.95
    assert gpu["clocks_event_reasons.active"] == 0  # answered by clocks_throttle_reasons.active
    # kmd_version (595+) is unknown to this 590 capture too: driver_version answers instead.
    assert collector.unsupported == {"power.draw.instant", "clocks_event_reasons.active", "kmd_version"}
    assert gpu["driver_version"] == "590.48.01"
    before = len(calls(log))
    collector.collect()
    assert len(calls(log)) - before == 2  # learnt: no more failing queries


def test_non_utf8_and_comma_in_process_name(fake):
    fake(mode="garbage")
    result = GpuCollector(FAKE_NVSMI).collect()
    names = [p["process_name"] for p in result["processes"]]
    assert "/opt/bad\ufffd\ufffdname, with comma/train.py" in names
    assert all(p["pid"] for p in result["processes"])


def test_hung_nvidia_smi_is_killed_on_time(fake):
    fake(mode="hang")
    collector = GpuCollector(FAKE_NVSMI, timeout=1.0)
    start = time.monotonic()
    result = collector.collect()
    elapsed = time.monotonic() - start
    assert result["status"]["state"] == "timeout"
    assert result["status"]["stale"] is True
    assert elapsed < 2.0


def test_child_ignoring_sigterm_and_holding_stdout_does_not_block(fake):
    fake(mode="hang_hard")
    runner = BoundedRunner()
    start = time.monotonic()
    result = runner.run([FAKE_NVSMI, "--query-gpu=index", "--format=csv"], timeout=1.0)
    assert result.state == "timeout"
    assert time.monotonic() - start < 1.5
    # The whole process group was killed: nothing holds the pipe any more.
    time.sleep(0.2)
    assert not runner.busy()


def test_no_second_call_while_a_killed_child_is_still_alive():
    # A child in uninterruptible sleep outlives SIGKILL; tests cannot make one, so a live
    # process outside our reach stands in for it as the runner's lingering child.
    runner = BoundedRunner()
    stuck = subprocess.Popen(["sleep", "30"])
    try:
        runner._lingering = stuck
        assert runner.run(["true"], timeout=1).state == "busy"
        stuck.kill()
        stuck.wait()
        assert runner.run(["true"], timeout=1).state == "ok"
    finally:
        stuck.kill()


def test_report_strings_are_cleaned_of_control_and_bidi_characters():
    from monitor_agent.collect import clean_text

    report = {"host": {"hostname": "ab\u202egnp.exe"}, "processes": [{"process_name": "x\x1b[31my\tz"}], "n": 3}
    assert clean_text(report) == {"host": {"hostname": "ab\ufffdgnp.exe"},
                                  "processes": [{"process_name": "x\ufffd[31my\tz"}], "n": 3}


def test_item3_mig_host_reads_the_table_on_the_first_cycle_then_once_a_minute(fake):
    """Item 3: the first cycle reads -L and the table, so its report already says which instance is
    busy (on 227e0d8 the first report had every instance's memory and processes unknown, and /free
    offered the busy one). Then no extra call while the processes stay the ones placed, the table
    again a minute later."""
    log = fake(capture="h100-mig", gpus=1)
    collector = GpuCollector(FAKE_NVSMI)
    first = collector.collect()
    assert first["gpus"][0]["mig.mode.current"] is True
    assert [c.split()[-1] for c in calls(log)[-2:]] == ["-L", FAKE_NVSMI]  # help, version, query, apps, -L, table
    assert len(calls(log)) == 6
    assert [(d["profile"], d["uuid"], d["gpu_instance_id"], d["memory.used"], d["memory.total"])
            for d in first["mig_devices"]] == [
        ("3g.40gb", "MIG-00000000-0000-0000-0000-000000000000", 2, 11091, 40448),
        ("2g.20gb", "MIG-00000001-0000-0000-0000-000000000001", 3, 17, 20096),
        ("1g.10gb", "MIG-00000002-0000-0000-0000-000000000002", 9, 9, 9984),
        ("1g.10gb", "MIG-00000003-0000-0000-0000-000000000003", 10, 9, 9984)]
    assert all(d["sampled_at"] is not None for d in first["mig_devices"])
    assert {(p["pid"], p["gpu_instance_id"], p["mig_uuid"]) for p in first["processes"]} == {
        (21180, 2, "MIG-00000000-0000-0000-0000-000000000000"), (21181, 2, "MIG-00000000-0000-0000-0000-000000000000"),
        (21198, 2, "MIG-00000000-0000-0000-0000-000000000000")}
    collector.collect()
    assert len(calls(log)) == 8  # within the minute, same processes: no extra call
    collector._mig_table_at -= 61  # a minute later: the table
    third = collector.collect()
    assert len(calls(log)) == 11 and calls(log)[-1].split()[-1].endswith("fake_nvidia_smi.py")
    assert [(d["gpu_instance_id"], d["memory.used"], d["memory.total"]) for d in third["mig_devices"]] == [
        (2, 11091, 40448), (3, 17, 20096), (9, 9, 9984), (10, 9, 9984)]


def test_non_mig_host_makes_no_mig_call(fake):
    log = fake(capture="h200", gpus=2)
    collector = GpuCollector(FAKE_NVSMI)
    assert "mig_devices" not in collector.collect()
    collector.collect()
    assert len(calls(log)) == 6 and not any(c.endswith(" -L") for c in calls(log))


def test_slow_nvidia_smi_still_delivers_with_its_age(fake):
    # Each call takes 1.2 s; a report waits 1 s (40 % of a 2.5 s interval). Before, each call
    # was killed at 1 s and no GPU was ever reported.
    from monitor_agent.gpu import BackgroundGpu

    log = fake(mode="slow:1.2", gpus=2, capture="rtx-4080")  # a 595 driver: kmd_version known, 2 calls
    collector = GpuCollector(FAKE_NVSMI, timeout=10, discover_fields=False)
    background = BackgroundGpu(collector, wait=1.0)
    start = time.monotonic()
    first = background.collect()
    assert time.monotonic() - start < 2.5  # the report is not held up (1 s wait, loaded machine)
    assert first["status"]["state"] == "busy" and first["gpus"] == [] and first["status"]["stale"] is True
    time.sleep(max(0.0, 8.0 - (time.monotonic() - start)))  # a later report (margin for a loaded machine)
    second = background.collect()
    assert second["status"]["state"] == "ok" and len(second["gpus"]) == 2
    assert second["status"]["stale"] is True and 7.5 <= second["status"]["age_s"] <= 12.0
    assert second["gpus"][0]["memory.used"] == 1474
    # Never two nvidia-smi at once: a collection starts only after the previous one ended.
    time.sleep(4.0)
    background.collect()
    starts = [c for c in calls(log) if not c.endswith("topo -m")]
    assert 4 <= len(starts) <= 6  # two or three collections of two calls, never overlapping
    assert len(calls(log)) - len(starts) == 1  # topo -m once, after the first collection
    background._thread.join(15)  # its last collection would log into the next test's file


def test_fast_nvidia_smi_is_reported_fresh(fake):
    from monitor_agent.gpu import BackgroundGpu

    fake(gpus=1)
    background = BackgroundGpu(GpuCollector(FAKE_NVSMI, timeout=10), wait=10)
    result = background.collect()
    assert result["status"] == {"state": "ok", "message": None, "lost": [], "stale": False}
    assert len(result["gpus"]) == 1
    background._thread.join(10)  # its topo -m read, after the result, would log into the next test's file


def test_topology_is_read_between_cycles_when_the_gpus_change(fake, monkeypatch):
    from monitor_agent.gpu import BackgroundGpu

    log = fake(gpus=2)
    collector = GpuCollector(FAKE_NVSMI, timeout=10, topology_interval=0.0)
    background = BackgroundGpu(collector, wait=10)
    per_cycle, topologies = [], []
    for _ in range(4):
        before = len(calls(log))
        result = background.collect()
        # The calls this cycle's collection made (topo -m runs after the result is handed over).
        per_cycle.append(len([c for c in calls(log)[before:] if not c.endswith("topo -m")]))
        topologies.append(result.get("gpu_topology"))
        assert result["status"]["state"] == "ok" and result["status"]["stale"] is False
        background._thread.join(10)  # a quiet agent: the next cycle comes after the read
    assert per_cycle == [4, 2, 2, 2], calls(log)  # --help-query-gpu and --version once, then only the two queries
    assert topologies[0] is None and topologies[1]["gpus"][0]["cpu_affinity"] == "0-19"
    assert topologies[2:] == [None, None]  # same GPUs, same driver: not read again
    assert len([c for c in calls(log) if c.endswith("topo -m")]) == 1
    monkeypatch.setenv("FAKE_NVSMI_GPUS", "3")  # a GPU hot-plugged: a new UUID set
    background.collect()
    background._thread.join(10)
    assert len([c for c in calls(log) if c.endswith("topo -m")]) == 2
    assert background.collect()["gpu_topology"] is not None


def test_topology_is_read_at_most_once_per_interval_while_it_fails(fake):
    fake(gpus=1, topo="/nonexistent/topo.txt")  # the fake exits 1 on topo -m
    collector = GpuCollector(FAKE_NVSMI, timeout=10, topology_interval=60.0)
    collector.collect()
    assert collector.topology_due(now=1000.0)
    assert collector.read_topology(now=1000.0) is None
    assert not collector.topology_due(now=1030.0) and collector.topology_due(now=1060.0)
    collector._topo_key = collector._gpu_key  # as after a successful read: then once a day
    assert not collector.topology_due(now=1000.0 + 3600) and collector.topology_due(now=1000.0 + 86400)
