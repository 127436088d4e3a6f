"""End to end for AMD GPUs: the real agent process, pointed at a sysfs/procfs fixture tree
(tests/fixtures/sysfs|procfs, see their SOURCE.md), reports to the real hub over loopback;
the hub's JSON, free-GPU finder and Prometheus export show the AMD GPUs."""

import os
import subprocess
import sys

import pytest
from conftest import FAKE_NVSMI, ROOT
from http_client import Browserless
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

FIX = os.path.join(ROOT, "tests", "fixtures")


def run_agent(tmp_path, hub_url, token, host, nvidia_smi, machine_id, env=None, amd_smi="amd-smi-not-here"):
    config = tmp_path / f"agent_{host}.yaml"
    config.write_text(f"amd_smi: {amd_smi}\n" +
        f"server_url: {hub_url}\ntoken: {token}\nnvidia_smi: {nvidia_smi}\ninterval: 30\n"
        f"hostname: {host}\nmachine_id: {machine_id}\nspool_dir: {tmp_path / ('spool-' + host)}\n"
        f"sysfs_root: {os.path.join(FIX, 'sysfs', host)}\nprocfs_root: {os.path.join(FIX, 'procfs', host)}\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), "--once"],
                            env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_amd_hosts_reach_gpus_processes_free_and_metrics(hub_process, hub_config, tmp_path):
    token = hub_config.get("agent.token")
    amd_smi = tmp_path / "amd-smi"  # answers from the fixtures written from AMD's documented JSON
    amd_smi.write_text(f'#!/bin/sh\ncase "$1" in metric) cat {FIX}/amdsmi/metric_ecc_rocm7.json ;;'
                       f' xgmi) cat {FIX}/amdsmi/xgmi_link_status.json ;; esac\n')
    amd_smi.chmod(0o755)
    run_agent(tmp_path, hub_process.base_url, token, "mi300x-8", str(tmp_path / "absent-nvidia-smi"), "a" * 32,
              amd_smi=str(amd_smi))
    run_agent(tmp_path, hub_process.base_url, token, "nvidia-amd", FAKE_NVSMI, "b" * 32,
              {"FAKE_NVSMI_CAPTURE": "h100-80gb", "FAKE_NVSMI_STATE": "idle", "FAKE_NVSMI_GPUS": "1"})
    admin = Browserless(hub_process.base_url)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302

    servers = {s["server"] if "server" in s else s["hostname"]: s
               for s in admin.request("GET", "/monitor/servers.json?_shape=array").json()}
    # No nvidia-smi on the MI300X host: a GPU host all the same, online and not in error.
    assert servers["mi300x-8"]["status"] == "online" and servers["mi300x-8"]["gpu_state"] == "ok"
    assert servers["mi300x-8"]["gpu_count"] == 8
    assert servers["nvidia-amd"]["gpu_count"] == 2

    gpus = admin.request("GET", "/monitor/gpus.json?_shape=array").json()
    amd = [g for g in gpus if g["server"] == "mi300x-8"]
    assert len(amd) == 8 and {g["vendor"] for g in amd} == {"amd"}
    g0 = amd[0]
    assert (g0["name"], g0["uuid"], g0["pci_bus_id"], g0["gpu_index"]) == (
        "AMD Instinct MI300X", "GPU-5a1c3e7f90b2d400", "0000:05:00.0", 0)
    assert (g0["utilization_gpu"], g0["memory_used_mib"], g0["memory_total_mib"], g0["power_draw_w"],
            g0["power_limit_w"], g0["temperature_gpu_c"], g0["temperature_junction_c"],
            g0["temperature_memory_c"], g0["clocks_sm_mhz"], g0["compute_partition"], g0["memory_partition"]) == (
        100, 181200, 196592, 704, 750, 86, 86, 72, 2100, "SPX", "NPS1")
    assert [g["ecc_errors_uncorrected_volatile_total"] for g in amd] == [0, 0, 0, 0, 0, 0, 2, 0]
    assert [g["xgmi_links_down"] for g in amd] == [0, 0, 0, 1, 0, 1, 0, 0]
    # The health badge reads them like NVIDIA's: uncorrectable ECC critical, a link down a warning.
    assert (amd[6]["health"], amd[3]["health"], amd[0]["health"]) == ("critical", "warning", "ok")
    history = admin.request(
        "GET", f"/monitor/gpu_history.json?_shape=array&server_id={g0['server_id']}&hours=1").json()
    assert {h["gpu_id"] for h in history} == {g["gpu_id"] for g in amd}
    assert {h["gpu_id"]: h["utilization_gpu"] for h in history}[g0["gpu_id"]] == 100
    mixed = sorted((g["vendor"], g["name"]) for g in gpus if g["server"] == "nvidia-amd")
    assert mixed == [("amd", "AMD Instinct MI210"), ("nvidia", "NVIDIA H100 80GB HBM3")]

    procs = [p for p in admin.request("GET", "/monitor/processes.json?_shape=array").json()
             if p["server"] == "mi300x-8"]
    owners = {(p["pid"], p["user"], p["container_kind"], p["container"]) for p in procs}
    assert (4130, "alice", "lxc", "vision_trainer") in owners  # user from the container's own passwd
    assert (4110, "root", "docker", "3f4a9c2e1b7d") in owners
    assert (4300, "nobody", "slurm", "job 4242") in owners
    assert {p["vendor"] for p in procs} == {"amd"}
    assert sorted(p["used_gpu_memory_mib"] for p in procs if p["pid"] == 4300) == [1024, 2048]

    free = admin.request("GET", "/monitor/free_gpus.json?_shape=array&count=2").json()
    row = [r for r in free if r["server"] == "mi300x-8"]
    assert len(row) == 1 and row[0]["vendor"] == "amd"
    assert row[0]["env"] == "ROCR_VISIBLE_DEVICES=2,5" and row[0]["cuda_visible_devices"] is None
    assert row[0]["gpu_uuids"] == amd[2]["uuid"] + "," + amd[5]["uuid"]
    page = admin.request("GET", "/free")
    assert page.status == 200 and b"free.js" in page.data

    scrape = Browserless(hub_process.base_url).request(
        "GET", "/metrics", headers={"Authorization": f"Bearer {hub_config.get('prometheus.token')}"})
    assert scrape.status == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.data.decode())}
    gfx = {s.labels["gpu_id"]: s for s in families["gpu_gfx_activity"].samples if s.labels["hostname"] == "mi300x-8"}
    assert len(gfx) == 8 and gfx["0"].value == 100
    assert gfx["0"].labels["card_model"] == "AMD Instinct MI300X" and gfx["0"].labels["gpu_uuid"] == g0["uuid"]
    junction = [s for s in families["gpu_junction_temperature"].samples if s.labels["gpu_id"] == "0"
                and s.labels["hostname"] == "mi300x-8"]
    assert junction[0].value == 86
    # The MI300X has no edge sensor: no gpu_edge_temperature for it; the MI210 has one.
    edge = {s.labels["hostname"] for s in families["gpu_edge_temperature"].samples}
    assert edge == {"nvidia-amd"}
    ecc = {s.labels["gpu_id"]: s.value for s in families["gpu_ecc_uncorrect_total"].samples
           if s.labels["hostname"] == "mi300x-8"}
    assert ecc["6"] == 2
    used = [s for s in families["gpu_used_vram"].samples if s.labels["hostname"] == "nvidia-amd"]
    assert [s.value for s in used] == [30720]
    # NVIDIA keeps the DCGM names, now with a vendor label; no AMD GPU among them.
    dcgm = families["DCGM_FI_DEV_GPU_UTIL"].samples
    assert {s.labels["vendor"] for s in dcgm} == {"nvidia"} and {s.labels["Hostname"] for s in dcgm} == {"nvidia-amd"}
    counts = {(s.labels["Hostname"], s.labels["vendor"]) for s in families["server_monitor_gpu_processes"].samples}
    assert ("mi300x-8", "amd") in counts
