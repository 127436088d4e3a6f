"""AMD / Intel GPUs from sysfs and DRM fdinfo (monitor_agent/drm.py) on the fixture trees.

The trees under tests/fixtures/sysfs/<host> and tests/fixtures/procfs/<host> are written by
tests/drm_tree.py from the kernel's documented formats (see their SOURCE.md).
"""

import filecmp
import os
import shutil

import pytest
from conftest import ROOT

import drm_tree
from monitor_agent import drm
from monitor_agent.collect import ReportBuilder
from monitor_agent.config import AgentConfigError, check
from server_monitor.storage.contract import validate_report

FIX = os.path.join(ROOT, "tests", "fixtures")
IDS = [os.path.join(FIX, "sysfs", "amdgpu.ids")]
PCI_IDS = [os.path.join(FIX, "sysfs", "pci.ids")]


def collector(host, sys_root=None, proc_root=None, clock=None):
    kw = {"clock": clock} if clock else {}
    return drm.DrmCollector(sys_root or os.path.join(FIX, "sysfs", host), proc_root or os.path.join(FIX, "procfs", host),
                            ids_paths=IDS, pci_ids_paths=PCI_IDS, **kw)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- pure parsers


def test_parse_dpm_current_and_ints():
    assert drm.parse_dpm_current("0: 500Mhz\n1: 2100Mhz *\n") == 2100
    assert drm.parse_dpm_current("0: 96Mhz\n1: 456Mhz\n") is None
    assert drm.parse_dpm_current(None) is None
    assert drm.parse_int("0x1002\n") == 0x1002 and drm.parse_int("garbage") is None and drm.parse_int("") is None
    assert drm.parse_percent("100") == 100 and drm.parse_percent("250") is None and drm.parse_percent("-1") is None


def test_parse_amdgpu_ids_and_pci_ids():
    with open(IDS[0]) as fp:
        names = drm.parse_amdgpu_ids(fp.read())
    assert names[(0x744C, 0xC8)] == "AMD Radeon RX 7900 XTX"
    assert names[(0x74A1, 0x00)] == "AMD Instinct MI300X"
    with open(PCI_IDS[0]) as fp:
        text = fp.read()
    assert drm.pci_ids_name(text, 0x8086, 0x56A0) == "DG2 [Arc A770]"
    assert drm.pci_ids_name(text, 0x8086, 0x0BDA) == "Ponte Vecchio XT (1 Tile) [Data Center GPU Max 1100]"
    assert drm.pci_ids_name(text, 0x10DE, 0x56A0) is None  # device id of another vendor


def test_hwmon_temperatures_by_label():
    t = drm.hwmon_temperatures({"temp1_input": "52000", "temp1_label": "edge", "temp2_input": "67500",
                                "temp2_label": "junction", "temp3_input": "60000", "temp3_label": "mem"})
    assert t == {"edge": 52, "junction": 67.5, "mem": 60}
    # MI300: no edge sensor; garbage and absurd values null only themselves.
    t = drm.hwmon_temperatures({"temp1_input": "N/A", "temp1_label": "edge", "temp2_input": "99999999",
                                "temp2_label": "junction", "temp3_input": "61000", "temp3_label": "mem"})
    assert t == {"edge": None, "junction": None, "mem": 61}


def test_parse_fdinfo_amdgpu_i915_xe():
    amd = drm.parse_fdinfo(drm_tree.amdgpu_fdinfo("0000:05:00.0", 12, 1024, gfx_ns=5, compute_ns=7))
    assert amd["driver"] == "amdgpu" and amd["pdev"] == "0000:05:00.0" and amd["client_id"] == 12
    assert amd["device_bytes"] == 1024 * 1024  # drm-resident-vram: 1024 KiB, GTT not counted
    assert amd["engines"] == {"gfx": 5, "compute": 7, "dma": 0, "dec": 0, "enc": 0}
    old = drm.parse_fdinfo(drm_tree.amdgpu_fdinfo("0000:05:00.0", 12, 2048, new_keys=False))
    assert old["device_bytes"] == 2048 * 1024  # older kernels: drm-memory-vram only
    i915 = drm.parse_fdinfo(drm_tree.i915_fdinfo("0000:03:00.0", 11, 6144, 25662044495))
    assert i915["device_bytes"] == 6144 * drm.MIB and i915["capacity"] == {"video": 2}
    assert i915["engines"]["render"] == 25662044495
    xe = drm.parse_fdinfo(drm_tree.xe_fdinfo("0000:8a:00.0", 4, 20480, 100, 1000))
    assert xe["device_bytes"] == 20480 * drm.MIB and xe["cycles"]["ccs"] == 100 and xe["total_cycles"]["ccs"] == 1000
    assert drm.parse_fdinfo("pos:\t0\nflags:\t02\n") is None  # not a DRM fd
    assert drm.parse_fdinfo("drm-driver:\tamdgpu\nno client id\n") is None


def test_engine_busy_from_ns_and_cycles():
    prev = {"engines": {"gfx": 0, "video": 0}, "cycles": {"ccs": 100}, "total_cycles": {"ccs": 1000},
            "capacity": {"video": 2}}
    cur = {"engines": {"gfx": 15 * 10**9, "video": 30 * 10**9}, "cycles": {"ccs": 600},
           "total_cycles": {"ccs": 2000}, "capacity": {"video": 2}}
    assert drm.engine_busy(prev, cur, 30 * 10**9) == {"gfx": 50.0, "video": 50.0, "ccs": 50.0}
    # A counter that went backwards (client id reused) gives nothing for that engine.
    assert drm.engine_busy(cur, prev, 30 * 10**9) == {}


# ---------------------------------------------------------------- collector on the fixture trees


def test_mi300x_host_values_equal_fixture():
    result = collector("mi300x-8").collect()
    gpus = result["gpus"]
    assert len(gpus) == 8  # the BMC's ASPEED VGA (card0) is not a GPU here
    assert [g["pci.bus_id"] for g in gpus] == drm_tree.MI300X_BUS
    assert [g["index"] for g in gpus] == list(range(8))
    g = gpus[0]
    assert g == {
        "index": 0, "uuid": "GPU-5a1c3e7f90b2d400", "vendor": "amd", "name": "AMD Instinct MI300X",
        "pci.bus_id": "0000:05:00.0", "driver_version": "6.8.5", "utilization.gpu": 100, "utilization.memory": 33,
        "memory.used": 181200, "memory.total": 196592, "temperature.gpu": 86, "temperature.junction": 86,
        "temperature.memory": 72, "power.draw": 704.0, "power.limit": 750.0, "fan.speed": None, "clocks.sm": 2100,
        "clocks.mem": 1300, "compute_partition": "SPX", "memory_partition": "NPS1",
    }
    assert gpus[2]["utilization.gpu"] == 0 and gpus[2]["clocks.sm"] == 500 and gpus[2]["memory.used"] == 283
    assert len({g["uuid"] for g in gpus}) == 8


def test_mi300x_processes_deduplicated_by_client():
    procs = collector("mi300x-8").collect()["processes"]
    by_pid = {}
    for p in procs:
        by_pid.setdefault(p["pid"], []).append(p)
    # 4101 shares client 10 with 4100 (forked child): counted once, for the lowest PID,
    # and 4100's dup'ed fd of the same client is not counted twice.
    assert 4101 not in by_pid
    assert [p["used_gpu_memory"] for p in by_pid[4100]] == [180917]
    # 4400 holds an idle handle (no memory, no engine time): not a GPU process.
    assert 4400 not in by_pid
    # 4300 runs on two GPUs: one row per GPU.
    assert sorted((p["gpu_uuid"], p["used_gpu_memory"]) for p in by_pid[4300]) == [
        ("GPU-5a1c3e7f90b30733", 1024), ("GPU-5a1c3e7f90b31844", 2048)]
    assert sorted(by_pid) == [4100, 4110, 4130, 4140, 4160, 4170, 4300]
    assert all(p["process_name"] in ("/usr/bin/python3", "/opt/venv/bin/python") for p in procs)
    assert all(p["utilization.gpu"] is None for p in procs)  # first cycle: no delta yet


def test_engine_utilisation_from_deltas_between_cycles(tmp_path):
    sys_root, proc_root = drm_tree.mi300x_host(str(tmp_path))
    clock = Clock(1000.0)
    c = collector(None, sys_root, proc_root, clock)
    c.collect()
    # 30 s later pid 4100's client (id 10) has 15 s more compute time (its dup'ed fd and the
    # child's fd show the same counters, as the kernel does for one client).
    new = drm_tree.amdgpu_fdinfo(drm_tree.MI300X_BUS[0], 10, (181200 - 283) * 1024, compute_ns=7 * 10**9 + 15 * 10**9)
    for path in ("4100/fdinfo/5", "4100/fdinfo/9", "4101/fdinfo/7"):
        with open(os.path.join(proc_root, path), "w") as fp:
            fp.write(new)
    clock.t = 1030.0
    procs = {p["pid"]: p for p in c.collect()["processes"] if p["gpu_uuid"] == "GPU-5a1c3e7f90b2d400"}
    assert procs[4100]["utilization.gpu"] == 50.0
    assert 4101 not in procs


def test_radeon_workstation_names_from_amdgpu_ids_and_fan():
    result = collector("radeon-7900xtx").collect()
    (g,) = result["gpus"]  # connector and render nodes are not GPUs; the 512 MiB iGPU is skipped
    assert g["name"] == "AMD Radeon RX 7900 XTX"  # no product_name: libdrm's amdgpu.ids
    assert g["uuid"] == "0000:03:00.0"  # no unique_id: the PCI bus id
    assert (g["temperature.gpu"], g["temperature.junction"], g["temperature.memory"]) == (52, 67, 60)
    assert (g["power.draw"], g["power.limit"], g["fan.speed"]) == (187.0, 303.0, 35)
    assert (g["memory.used"], g["memory.total"], g["clocks.sm"], g["clocks.mem"]) == (6144, 24560, 1423, 1249)
    procs = sorted((p["pid"], p["process_name"], p["used_gpu_memory"]) for p in result["processes"])
    assert procs == [(1234, "/usr/lib/xorg/Xorg", 256), (2345, "/home/bob/venv/bin/python", 4096)]


def test_integrated_amd_gpu_kept_on_request():
    c = drm.DrmCollector(os.path.join(FIX, "sysfs", "radeon-7900xtx"), os.path.join(FIX, "procfs", "radeon-7900xtx"),
                         ids_paths=IDS, pci_ids_paths=PCI_IDS, min_vram_mib=0)
    gpus = c.collect()["gpus"]
    assert [(g["pci.bus_id"], g["memory.total"]) for g in gpus] == [("0000:03:00.0", 24560), ("0000:13:00.0", 512)]


def test_intel_host_i915_and_xe(tmp_path):
    shutil.copytree(os.path.join(FIX, "sysfs", "intel-arc-max"), tmp_path / "sys", symlinks=True)
    shutil.copytree(os.path.join(FIX, "procfs", "intel-arc-max"), tmp_path / "proc", symlinks=True)
    clock = Clock(1000.0)
    c = collector(None, str(tmp_path / "sys"), str(tmp_path / "proc"), clock)
    first = c.collect()
    arc, pvc = first["gpus"]  # the integrated GPU at 00:02.0 is skipped
    assert (arc["vendor"], arc["name"], arc["pci.bus_id"], arc["index"]) == (
        "intel", "Intel DG2 [Arc A770]", "0000:03:00.0", 0)
    assert pvc["name"] == "Intel Ponte Vecchio XT (1 Tile) [Data Center GPU Max 1100]" and pvc["index"] == 1
    # i915: no VRAM total, used memory from the clients' local0; clock from gt_act_freq_mhz.
    assert (arc["memory.total"], arc["memory.used"], arc["clocks.sm"], arc["power.limit"]) == (None, 6144, 2100, 190.0)
    # xe: total from tile0/physical_vram_size_bytes, temperatures pkg/vram.
    assert (pvc["memory.total"], pvc["memory.used"], pvc["clocks.sm"]) == (49152, 20480, 1550)
    assert (pvc["temperature.gpu"], pvc["temperature.junction"], pvc["temperature.memory"]) == (58, 58, 54)
    # No gpu_busy_percent and no power reading on the first cycle.
    assert arc["utilization.gpu"] is None and arc["power.draw"] is None and arc["utilization.memory"] is None
    # Second cycle, 10 s later: energy counters and engine time advanced.
    hw = tmp_path / "sys" / "devices" / "pci0000:00" / "0000:02:01.0" / "0000:03:00.0" / "hwmon" / "hwmon3"
    (hw / "energy1_input").write_text(str(123456000000 + 1500 * 10**6) + "\n")  # 1500 J in 10 s
    (tmp_path / "proc" / "3100" / "fdinfo" / "8").write_text(
        drm_tree.i915_fdinfo("0000:03:00.0", 11, 6144, 25662044495 + 8 * 10**9))
    (tmp_path / "proc" / "3200" / "fdinfo" / "8").write_text(
        drm_tree.xe_fdinfo("0000:8a:00.0", 4, 20480, 28257900 + 250, 7655183225 + 1000))
    clock.t = 1010.0
    arc, pvc = c.collect()["gpus"]
    assert arc["power.draw"] == 150.0
    assert arc["utilization.gpu"] == 80  # render engine 8 s busy of 10 s, summed over clients
    assert pvc["utilization.gpu"] == 25  # ccs cycles 250 of 1000


def test_nvidia_card_left_to_nvidia_smi():
    gpus = collector("nvidia-amd").collect()["gpus"]
    assert [(g["vendor"], g["name"], g["index"]) for g in gpus] == [("amd", "AMD Instinct MI210", 0)]
    # A GPU another collector already reported (by bus id) is not reported twice.
    assert collector("nvidia-amd").collect(skip_bus_ids=["00000000:B1:00.0"])["gpus"] == []


def test_missing_hwmon_garbage_values_and_vanished_processes():
    result = collector("amd-odd").collect()
    bare, bad = result["gpus"]  # card2 is a second node of card1's PCI device
    assert bare["uuid"] == "GPU-0c1d2e3f40516273" and bare["utilization.gpu"] == 5
    assert bare["memory.total"] == 65520 and bare["temperature.gpu"] is None and bare["power.draw"] is None
    # Each garbage value nulls only itself.
    assert bad["uuid"] == "0000:c9:00.0"  # unique_id "not-a-hex-id!" is not an id
    assert bad["utilization.gpu"] is None and bad["utilization.memory"] is None and bad["memory.used"] is None
    assert bad["memory.total"] == 65520 and bad["power.limit"] == 560.0 and bad["temperature.memory"] == 61
    assert bad["temperature.gpu"] is None and bad["power.draw"] is None and bad["clocks.sm"] is None
    assert bad["compute_partition"] is None
    # 6100's fdinfo vanished, 6150 has no fd directory: skipped. 6200's vram is garbage
    # (null) but its gfx time is valid, so it is listed.
    assert [(p["pid"], p["used_gpu_memory"]) for p in result["processes"]] == [(6200, None)]


def test_fdinfo_disappearing_between_readlink_and_read(tmp_path, monkeypatch):
    sys_root, proc_root = drm_tree.mi300x_host(str(tmp_path))
    real_readlink = os.readlink

    def racing_readlink(path, *a, **kw):
        target = real_readlink(path, *a, **kw)
        if path.endswith("/4110/fd/5"):
            shutil.rmtree(os.path.join(proc_root, "4110"))  # the process exits right now
        return target

    monkeypatch.setattr(drm.os, "readlink", racing_readlink)
    procs = collector(None, sys_root, proc_root).collect()["processes"]
    assert 4110 not in {p["pid"] for p in procs} and 4100 in {p["pid"] for p in procs}


def test_fixture_trees_match_their_generator(tmp_path):
    drm_tree.write_all(str(tmp_path))
    for kind in ("sysfs", "procfs"):
        for host in drm_tree.HOSTS:
            _same_tree(os.path.join(FIX, kind, host), str(tmp_path / kind / host))


def _same_tree(a, b):
    for dirpath, dirnames, filenames in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        assert sorted(os.listdir(other)) == sorted(dirnames + filenames), rel
        for name in dirnames + filenames:
            pa, pb = os.path.join(dirpath, name), os.path.join(other, name)
            if os.path.islink(pa):
                assert os.readlink(pa) == os.readlink(pb), pa
            elif os.path.isfile(pa):
                assert filecmp.cmp(pa, pb, shallow=False), pa


# ---------------------------------------------------------------- in the report


def _cfg(tmp_path, host, **extra):
    cfg = check({"server_url": "http://127.0.0.1:9", "token": "x", "nvidia_smi": str(tmp_path / "no-nvidia-smi"),
                 "interval": 30, "gpu_timeout": 10, "spool_max_mb": 64, "spool_max_age_h": 168, "retry_base_s": 5,
                 "retry_max_s": 300, "inventory_interval": 60, "probe_interval": 60, "probes": [],
                 "spool_dir": str(tmp_path / "spool"),
                 "sysfs_root": os.path.join(FIX, "sysfs", host), "procfs_root": os.path.join(FIX, "procfs", host),
                 **extra})
    return cfg


def test_amd_only_host_report_is_valid_and_not_gpu_less(tmp_path):
    builder = ReportBuilder(_cfg(tmp_path, "mi300x-8"))
    report = validate_report(builder.build())
    assert report["gpu_status"]["state"] == "ok"  # nvidia-smi missing is normal here
    assert len(report["gpus"]) == 8 and {g["vendor"] for g in report["gpus"]} == {"amd"}
    procs = {p["pid"]: p for p in report["processes"]}
    # Same attribution as NVIDIA processes, from the fixture's /proc.
    assert (procs[4100]["user"], procs[4100]["container_kind"]) == ("nobody", "user-slice")
    assert (procs[4110]["user"], procs[4110]["container_kind"]) == ("root", "docker")
    assert (procs[4130]["user"], procs[4130]["container"], procs[4130]["container_kind"]) == (
        "alice", "vision_trainer", "lxc")
    assert procs[4300]["container"] == "job 4242"


def test_config_roots_and_old_key(tmp_path):
    cfg = _cfg(tmp_path, "mi300x-8")
    assert cfg["drm"] is True
    old = check({"server_url": "http://h:1", "token": "x", "proc_root": "/srv/proc", "spool_dir": "/tmp/s",
                 **{k: 1 for k in ("interval", "gpu_timeout", "spool_max_mb", "spool_max_age_h", "retry_base_s",
                                   "retry_max_s", "inventory_interval", "probe_interval")}})
    assert old["procfs_root"] == "/srv/proc" and old["sysfs_root"] == "/sys"
    with pytest.raises(AgentConfigError, match="^sysfs_root must be an absolute path"):
        _cfg(tmp_path, "mi300x-8", sysfs_root="sys")
    with pytest.raises(AgentConfigError, match="^drm_min_vram_mib must be a whole number"):
        _cfg(tmp_path, "mi300x-8", drm_min_vram_mib="4G")


def test_blocked_sysfs_read_times_out_without_stalling_the_report(tmp_path):
    """An amdgpu attribute that blocks (a GPU hang) costs one bounded wait, not the report."""
    import time

    sys_root = tmp_path / "sys"
    shutil.copytree(os.path.join(FIX, "sysfs", "mi300x-8"), sys_root, symlinks=True)
    builder = ReportBuilder(_cfg(tmp_path, "mi300x-8", sysfs_root=str(sys_root), interval=2, gpu_timeout=1))
    assert len(builder.build()["gpus"]) == 8
    busy = sys_root / "devices" / "pci0000:00" / "0000:00:01.0" / "0000:05:00.0" / "gpu_busy_percent"
    busy.unlink()
    os.mkfifo(busy)  # opening it for reading blocks until a writer comes: a real blocking read
    start = time.monotonic()
    report = validate_report(builder.build())
    assert time.monotonic() - start < 3
    assert report["gpu_status"]["state"] == "timeout" and report["gpu_status"]["stale"] is True
    assert "did not finish within 1 s" in report["gpu_status"]["message"] and report["gpus"] == []
    assert validate_report(builder.build())["gpu_status"]["state"] == "busy"  # nothing new started
    with open(busy, "w") as fp:  # the GPU answers again
        fp.write("42\n")
    builder._drm_thread.join(5)
    busy.unlink()
    busy.write_text("42\n")
    report = validate_report(builder.build())
    assert report["gpu_status"]["state"] == "ok" and report["gpus"][0]["utilization.gpu"] == 42


# --- issue 22 item 5: AMD APUs (Strix Halo, MI300A) with a small VRAM carve-out -------------------------

def test_item5_strix_halo_apu_counted_with_its_gtt_memory():
    """A Ryzen AI Max+ 395 (real sysfs sizes: 512 MiB carve-out, 128 GiB GTT) is a compute GPU, not
    skipped as integrated graphics; memory.* is the GTT pool compute allocates from, and each
    process's memory is its GTT share (drm-memory-gtt / drm-resident-gtt)."""
    result = collector("strix-halo").collect()
    (g,) = result["gpus"]
    assert (g["pci.bus_id"], g["name"], g["vendor"]) == (drm_tree.STRIX_HALO_BUS, "AMD Radeon 8060S Graphics", "amd")
    assert g["memory.total"] == drm_tree.STRIX_HALO_GTT // drm.MIB == 131072
    assert g["memory.used"] == drm_tree.STRIX_HALO_GTT_USED_MIB
    procs = sorted((p["pid"], p["used_gpu_memory"]) for p in result["processes"])
    assert procs == [(3100, 14), (4200, 24160)]  # GTT MiB, not the 5 MiB / 2 MiB of carve-out


def test_item5_apu_kept_whatever_drm_min_vram_mib_says(tmp_path):
    """The skip rule for integrated graphics (VRAM < drm_min_vram_mib) does not apply to the compute
    APUs, also not with a larger threshold; a Ryzen desktop iGPU stays skipped."""
    big = drm.DrmCollector(os.path.join(FIX, "sysfs", "strix-halo"), os.path.join(FIX, "procfs", "strix-halo"),
                           ids_paths=IDS, pci_ids_paths=PCI_IDS, min_vram_mib=65536)
    assert [g["memory.total"] for g in big.collect()["gpus"]] == [131072]
    assert [g["pci.bus_id"] for g in collector("radeon-7900xtx").collect()["gpus"]] == ["0000:03:00.0"]
    # MI300A (1002:74a0) is the other compute APU; its tree here is built like the Strix Halo one.
    sys_root, proc_root = drm_tree.strix_halo_host(str(tmp_path))
    with open(os.path.join(sys_root, "devices", "pci0000:00", "0000:00:08.1", drm_tree.STRIX_HALO_BUS, "device"),
              "w") as fp:
        fp.write("0x74a0\n")
    mi300a = drm.DrmCollector(sys_root, proc_root, ids_paths=IDS, pci_ids_paths=PCI_IDS).collect()["gpus"]
    assert [(g["memory.used"], g["memory.total"]) for g in mi300a] == [(24174, 131072)]


def test_item5_apu_report_is_valid(tmp_path):
    """The agent's report for a Strix Halo host passes the hub's contract with the APU in it."""
    cfg = check({"server_url": "http://127.0.0.1:9", "token": "x", "nvidia_smi": str(tmp_path / "none"),
                 "sysfs_root": os.path.join(FIX, "sysfs", "strix-halo"),
                 "procfs_root": os.path.join(FIX, "procfs", "strix-halo"), "kmsg_path": None,
                 "spool_dir": str(tmp_path / "spool"),
                 **{k: 30 for k in ("interval", "gpu_timeout", "spool_max_mb", "spool_max_age_h", "retry_base_s",
                                    "retry_max_s", "inventory_interval", "probe_interval")}})
    report = validate_report(ReportBuilder(cfg).build())
    assert report["gpu_status"]["state"] == "ok"
    assert [(g["vendor"], g["memory.total"]) for g in report["gpus"]] == [("amd", 131072)]
