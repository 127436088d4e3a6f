"""The agent zipapp: built by scripts/build_agent.sh, run with no pip packages (python -I)."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import FAKE_NVSMI, ROOT

pytestmark = pytest.mark.slow


def interpreters():
    """Every Python 3.9+ this machine has (pyenv's included), the running one first."""
    found = [sys.executable]
    candidates = [shutil.which(f"python3.{minor}") for minor in range(9, 15)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for path in candidates:
        if not path or not os.path.exists(path):
            continue
        try:
            out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] >= (3, 9))"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out == "True" and os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
            found.append(path)
    return found


@pytest.fixture(scope="module")
def pyz(agent_dist):
    path = agent_dist / "server-monitor-agent-x86_64.pyz"
    digest = (agent_dist / "server-monitor-agent-x86_64.pyz.sha256").read_text().split()[0]
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    return path


def clean_python(base, tmp_path):
    """A fresh venv of ``base`` with nothing installed; returns its python."""
    venv = tmp_path / ("venv-" + os.path.basename(os.path.dirname(os.path.dirname(base))))
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the test builds and runs the x86_64 zipapp")
@pytest.mark.parametrize("base", interpreters())
def test_zipapp_runs_without_any_package(pyz, base, tmp_path):
    python = clean_python(base, tmp_path)
    check = subprocess.run([python, "-I", "-c", "import psutil"], capture_output=True)
    assert check.returncode != 0  # really nothing installed
    config = tmp_path / "agent.yaml"
    config.write_text(f"nvidia_smi: {FAKE_NVSMI}\n")
    env = dict(os.environ, SHIV_ROOT=str(tmp_path / "shiv"), FAKE_NVSMI_GPUS="2")
    result = subprocess.run([python, "-I", str(pyz), "-c", str(config), "--once", "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gpu_status"]["state"] == "ok"
    assert [g["memory.total"] for g in report["gpus"]] == [81559, 81559]
    assert report["memory"]["total_bytes"] > 0


def test_zipapp_reports_to_a_hub(pyz, ingest_server, tmp_path):
    python = clean_python(sys.executable, tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(f"server_url: {ingest_server.base_url}\ntoken: {ingest_server.config.get('agent.token')}\n"
                      f"nvidia_smi: {FAKE_NVSMI}\nspool_dir: {tmp_path / 'spool'}\n")
    env = dict(os.environ, SHIV_ROOT=str(tmp_path / "shiv"))
    result = subprocess.run([python, "-I", str(pyz), "-c", str(config), "--once"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    import sqlite3

    assert sqlite3.connect(ingest_server.config.db_path).execute("select count(*) from gpus").fetchone()[0] == 1


def test_agent_source_stays_python_39():
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vermin"), "-t=3.9-", "--violations",
                             "--no-tips", "agent.py", "monitor_agent"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
