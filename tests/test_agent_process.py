"""The real agent process on its schedule: hub outages and hung nvidia-smi."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import urllib3
from conftest import FAKE_NVSMI, ROOT, free_port

pytestmark = pytest.mark.slow


def start_agent(tmp_path, url, token, interval=1, env=None, **cfg):
    config = tmp_path / "agent.yaml"
    lines = [f"server_url: {url}", f"token: {token}", f"interval: {interval}", f"nvidia_smi: {FAKE_NVSMI}",
             f"spool_dir: {tmp_path / 'spool'}", "retry_base_s: 0.5", "retry_max_s: 2"]
    lines += [f"{k}: {v}" for k, v in cfg.items()]
    config.write_text("\n".join(lines) + "\n")
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(config), "-v"],
                            env=dict(os.environ, **(env or {})), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = tmp_path / "agent.log"
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)


def start_hub(config, port, tmp_path):
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", config.path, "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    http = urllib3.PoolManager(retries=False)
    for _ in range(150):
        try:
            if http.request("GET", f"http://127.0.0.1:{port}/login", timeout=1).status == 200:
                return proc
        except urllib3.exceptions.HTTPError:
            time.sleep(0.2)
    raise AssertionError("hub did not start")


def test_hub_outage_then_recovery_with_the_real_agent(hub_config, tmp_path):
    port = free_port()
    agent = start_agent(tmp_path, f"http://127.0.0.1:{port}", hub_config.get("agent.token"),
                        env={"FAKE_NVSMI_GPUS": "1"})
    try:
        time.sleep(5)  # about five intervals with nothing listening
        assert len(list((tmp_path / "spool").glob("*.json.gz"))) >= 3
        hub = start_hub(hub_config, port, tmp_path)
        try:
            deadline = time.time() + 20
            while time.time() < deadline and list((tmp_path / "spool").glob("*.json.gz")):
                time.sleep(0.3)
            time.sleep(1.5)
        finally:
            stop(agent)
            os.killpg(hub.pid, signal.SIGTERM)
            hub.wait(timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
    log = agent.log_path.read_text()
    made = re.findall(r"report ([0-9a-f-]{36}) (delivered|spooled)", log)
    assert len(made) >= 6
    conn = sqlite3.connect(hub_config.db_path)
    stored = [r for (r,) in conn.execute("select report_id from host_samples order by ts")]
    assert list((tmp_path / "spool").glob("*.json.gz")) == []
    assert sorted(stored) == sorted(rid for rid, _ in made)
    assert stored == [rid for rid, _ in made]  # sample order kept


def test_hung_nvidia_smi_does_not_stop_host_reports(ingest_server, tmp_path):
    mark = f"hung-{os.getpid()}-{time.time_ns()}"  # tells this agent's nvidia-smi from other tests' running in parallel
    agent = start_agent(tmp_path, ingest_server.base_url, ingest_server.config.get("agent.token"), interval=2,
                        env={"FAKE_NVSMI_MODE": "hang", "SM_TEST_MARK": mark}, gpu_timeout=1)
    time.sleep(7.5)
    stop(agent)
    conn = sqlite3.connect(ingest_server.config.db_path)
    rows = conn.execute("select ts, gpu_state from host_samples order by ts").fetchall()
    assert len(rows) >= 3, agent.log_path.read_text()
    assert {state for _, state in rows} <= {"timeout", "busy"}
    gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:])]
    assert all(1 <= g <= 3 for g in gaps), gaps  # on the 2 s schedule despite the hang
    # No nvidia-smi left behind.
    import psutil

    leftover = []
    for p in psutil.process_iter(["cmdline"]):
        if FAKE_NVSMI in " ".join(p.info["cmdline"] or []):
            try:
                if p.environ().get("SM_TEST_MARK") == mark:
                    leftover.append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    assert leftover == []
