"""End to end: the real hub process and the real agent process over loopback HTTP."""

import getpass
import os
import subprocess
import sys

import pytest
from conftest import FAKE_NVSMI, ROOT
from http_client import Browserless

pytestmark = pytest.mark.slow


def run_agent(tmp_path, hub_url, token, extra_env=None, *args):
    config = tmp_path / "agent_config.yaml"
    # Each run its own spool: as root the default is /var/lib/server-monitor-agent/spool,
    # shared with every other test and left behind.
    config.write_text(f"server_url: {hub_url}\ntoken: {token}\nnvidia_smi: {FAKE_NVSMI}\ninterval: 30\n"
                      f"spool_dir: {tmp_path / 'spool'}\n")
    env = dict(os.environ, FAKE_NVSMI_CAPTURE="h100-80gb", FAKE_NVSMI_STATE="load", FAKE_NVSMI_GPUS="2",
               FAKE_NVSMI_PID="parent", **(extra_env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_agent_reports_to_hub_and_admin_sees_capture_values(hub_process, hub_config, tmp_path):
    result = run_agent(tmp_path, hub_process.base_url, hub_config.get("agent.token"), None, "--once")
    assert result.returncode == 0, result.stderr

    anonymous = Browserless(hub_process.base_url)
    assert anonymous.request("GET", "/monitor/gpus.json").status == 401
    assert anonymous.request("GET", "/").status == 302

    admin = Browserless(hub_process.base_url)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    gpus = admin.request("GET", "/monitor/gpus.json?_shape=array").json()
    assert len(gpus) == 2
    for gpu in gpus:
        assert gpu["name"] == "NVIDIA H100 80GB HBM3"
        assert gpu["memory_total_mib"] == 81559
        assert gpu["memory_used_mib"] == 19818
        assert gpu["power_limit_w"] == 700
        assert gpu["power_draw_w"] == 631.95
        assert gpu["utilization_gpu"] == 100
        assert gpu["temperature_gpu_c"] == 59
        assert gpu["fan_speed"] is None  # datacenter card without a fan
    servers = admin.request("GET", "/monitor/servers.json?_shape=array").json()
    assert len(servers) == 1 and servers[0]["status"] == "online"
    assert servers[0]["gpu_state"] == "ok" and servers[0]["gpus_busy"] == 2
    procs = admin.request("GET", "/monitor/processes.json?_shape=array").json()
    assert len(procs) == 6
    # The fake reported the agent's own PID, so attribution read real /proc data.
    assert {p["user"] for p in procs} == {getpass.getuser()}
    assert sorted(p["used_gpu_memory_mib"] for p in procs) == [1542, 1542, 2566, 2566, 15690, 15690]
    dashboard = admin.request("GET", "/")
    assert dashboard.status == 200 and b"dashboard.js" in dashboard.data


def test_agent_reports_failure_state_by_name(hub_process, hub_config, tmp_path):
    result = run_agent(tmp_path, hub_process.base_url, hub_config.get("agent.token"),
                       {"FAKE_NVSMI_MODE": "driver_mismatch"}, "--once")
    assert result.returncode == 0, result.stderr
    admin = Browserless(hub_process.base_url)
    admin.login(hub_config.get("auth.username"), hub_config.password)
    server = admin.request("GET", "/monitor/servers.json?_shape=array").json()[0]
    assert server["gpu_state"] == "driver_mismatch"
    assert server["status"] == "error"
    assert "Driver/library version mismatch" in server["gpu_message"]


def test_agent_with_wrong_token_fails_loudly(hub_process, tmp_path):
    result = run_agent(tmp_path, hub_process.base_url, "not-the-token", None, "--once")
    assert result.returncode == 1
    assert "not stored" in result.stderr and "401" in result.stderr
    # A refused token is a configuration problem, not a bad report: the report is kept for the next run.
    assert "kept in the spool" in result.stderr
