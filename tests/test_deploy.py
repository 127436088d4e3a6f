"""Deployment scripts in a temporary root with fake systemctl/useradd/chown on PATH.

The fake systemctl really starts the units' ExecStart, so the installed hub answers HTTP
and the installed agent reports to it.
"""

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import time

import pytest
import urllib3
import yaml
from conftest import ROOT, TESTS, free_port

pytestmark = pytest.mark.slow
SCRIPTS = os.path.join(ROOT, "scripts")
HTTP = urllib3.PoolManager(retries=False)


def env_for(root, agent_dist, wheelhouse=None):
    extra = {"SM_WHEELHOUSE": str(wheelhouse)} if wheelhouse else {}
    return dict(os.environ, SM_ROOT=str(root), SM_AGENT_DIST=str(agent_dist), **extra,
                PATH=os.path.join(TESTS, "fakebin") + os.pathsep + os.environ["PATH"],
                FAKE_SYSTEMCTL_LOG=str(root / "calls.log"), SM_AGENT_SETTLE="3")


def run(script, *args, env, src=ROOT, check=True, timeout=600):
    result = subprocess.run([os.path.join(src, "scripts", script), *args], env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def wait_health(port, want=200, seconds=40):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if HTTP.request("GET", f"http://127.0.0.1:{port}/-/health", timeout=2).status == want:
                return True
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.3)
    return False


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def deployed(tmp_path, agent_dist, wheelhouse):
    root = tmp_path / "root"
    root.mkdir()
    env = env_for(root, agent_dist, wheelhouse)  # four release venvs, installed from local wheels
    port = free_port()
    yield root, env, port
    subprocess.run([os.path.join(TESTS, "fakebin", "systemctl"), "stop", "server-monitor.service",
                    "server-monitor-agent.service"], env=env)


def test_install_upgrade_rollback_uninstall(deployed):
    root, env, port = deployed
    result = run("install_server.sh", "--port", str(port), "--admin", "boss", env=env)
    assert "/static/agent/install_agent.sh" in result.stderr and "password:" in result.stderr
    config = root / "etc/server-monitor/config.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    cfg = yaml.safe_load(config.read_text())
    assert cfg["auth"]["username"] == "boss" and cfg["server"]["port"] == port
    # Loopback by default, with the reverse proxy's config written next to it (N3).
    assert cfg["server"]["host"] == "127.0.0.1" and "loopback" in result.stderr
    proxy = (root / "etc/server-monitor/nginx-server-monitor.conf").read_text()
    assert f"proxy_pass http://127.0.0.1:{port};" in proxy and "client_header_timeout" in proxy
    assert cfg["data"]["path"] == str(root / "var/lib/server-monitor/monitor.db")
    unit = (root / "etc/systemd/system/server-monitor.service").read_text()
    for line in ("User=server-monitor", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "ReadWritePaths=/var/lib/server-monitor",
                 "ExecStart=/opt/server-monitor/current/.venv/bin/server-monitor serve -c /etc/server-monitor/config.yaml"):
        assert line in unit
    calls = (root / "calls.log").read_text()
    assert "useradd --system" in calls and "enable server-monitor.service" in calls
    first_release = os.path.realpath(root / "opt/server-monitor/current")
    assert os.path.exists(os.path.join(first_release, ".venv/bin/server-monitor"))
    assert wait_health(port), (root / "run/server-monitor.service.log").read_text()
    assert (root / "opt/server-monitor/current/static/agent/server-monitor-agent-x86_64.pyz").exists()

    # Re-running keeps config and data.
    before = sha(config)
    run("install_server.sh", "--port", str(port), env=env)
    assert sha(config) == before
    assert wait_health(port)

    # An agent installed from the hub itself reports to it.
    token_file = root / "token"
    token_file.write_text(cfg["agent"]["token"] + "\n")
    run("install_agent.sh", "--url", f"http://127.0.0.1:{port}", "--token-file", str(token_file), "--interval", "5",
        env=env)
    agent_config = root / "etc/server-monitor/agent_config.yaml"
    assert oct(agent_config.stat().st_mode & 0o777) == "0o600"
    assert yaml.safe_load(agent_config.read_text())["token"] == cfg["agent"]["token"]
    agent_unit = (root / "etc/systemd/system/server-monitor-agent.service").read_text()
    assert "User=root" in agent_unit and "After=network-online.target" in agent_unit and "Restart=on-failure" in agent_unit
    db = cfg["data"]["path"]
    deadline = time.time() + 60
    while time.time() < deadline:
        with sqlite3.connect(db) as conn:
            if conn.execute("select count(*) from servers").fetchone()[0]:
                break
        time.sleep(1)
    else:
        pytest.fail((root / "run/server-monitor-agent.service.log").read_text())
    # A second run keeps the agent config unless --force.
    before = sha(agent_config)
    token_file.write_text("another-token\n")
    run("install_agent.sh", "--url", f"http://127.0.0.1:{port}", "--token-file", str(token_file), env=env)
    assert sha(agent_config) == before

    # A broken new release: health check fails, the old release comes back, data intact.
    before_upgrade = os.path.realpath(root / "opt/server-monitor/current")
    broken = root.parent / "broken-src"
    # symlinks=True: the sysfs fixture trees under tests/ hold symlink loops, as /sys does.
    shutil.copytree(ROOT, broken, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".venv-build", ".git", "dist", "*.db", ".run", "tests"))
    cli = broken / "server_monitor" / "cli.py"
    text = cli.read_text()
    sabotaged = re.sub(r"(\ndef serve\([^)]*\):\n)", "\\1    raise SystemExit(3)  # broken on purpose\n", text, count=1)
    assert sabotaged != text
    cli.write_text(sabotaged)
    result = run("upgrade.sh", "server", "--timeout", "8", env=env, src=str(broken), check=False)
    assert result.returncode != 0 and "rolled back" in result.stderr
    assert os.path.realpath(root / "opt/server-monitor/current") == before_upgrade
    assert wait_health(port)
    assert list((root / "var/lib/server-monitor/backups").iterdir())

    # A good upgrade switches and stays.
    run("upgrade.sh", "server", "--timeout", "40", env=env)
    second = os.path.realpath(root / "opt/server-monitor/current")
    assert second not in (first_release, before_upgrade) and wait_health(port)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from servers").fetchone()[0] >= 1

    # Uninstall keeps configuration and data; --purge removes them.
    run("uninstall.sh", "all", env=env)
    assert not (root / "etc/systemd/system/server-monitor.service").exists()
    assert not (root / "etc/systemd/system/server-monitor-agent.service").exists()
    assert not (root / "opt/server-monitor").exists() and not (root / "opt/server-monitor-agent").exists()
    assert config.exists() and os.path.exists(db) and agent_config.exists()
    run("uninstall.sh", "all", "--purge", env=env)
    assert not config.exists() and not os.path.exists(db) and not agent_config.exists()


def test_dry_run_changes_nothing(tmp_path, agent_dist):
    root = tmp_path / "root"
    root.mkdir()
    env = env_for(root, agent_dist)
    result = run("install_server.sh", "--dry-run", env=env)
    assert "+ systemctl enable server-monitor.service" in result.stderr
    result = run("install_agent.sh", "--url", "http://127.0.0.1:9", "--token", "t", "--dry-run", env=env)
    assert "+ write" in result.stderr
    assert sorted(os.listdir(root)) == []
    result = run("uninstall.sh", "all", "--purge", "--dry-run", env=env)
    assert result.returncode == 0


def test_scripts_are_shellcheck_clean():
    import glob

    shellcheck = os.path.join(os.path.dirname(os.sys.executable), "shellcheck")
    scripts = sorted(glob.glob(os.path.join(SCRIPTS, "*.sh"))) + [os.path.join(ROOT, ".ci", "run")]
    result = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for script in scripts:
        text = open(script).read()
        if not os.path.basename(script).startswith("_"):
            assert "set -euo pipefail" in text, script


def test_dockerfile_and_compose():
    lines = [ln.strip() for ln in open(os.path.join(ROOT, "Dockerfile")) if ln.strip() and not ln.startswith("#")]
    final = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")):]
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'VOLUME ["/data"]' in final
    assert any(ln.startswith("HEALTHCHECK") for ln in final)
    assert any("/-/health" in ln for ln in final)
    cmd = [ln for ln in final if ln.startswith("CMD")][-1]
    assert "/data/config.yaml" in cmd
    env = " ".join(ln for ln in lines if ln.startswith("ENV") or ln.startswith("ARG"))
    for secret_word in ("TOKEN=", "SECRET", "PASSWORD"):
        assert secret_word not in env
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    hub = compose["services"]["hub"]
    assert any(v.endswith(":/data") for v in hub["volumes"])
    # Published on the host's loopback only; a reverse proxy faces the network (N3).
    assert hub["ports"] == ["127.0.0.1:5100:5100"]
    assert "environment" not in hub or all("=" not in str(v) for v in hub["environment"])
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    assert "config.yaml" in ignored and "*.db" in ignored
