"""``scripts/run.sh`` as a new user runs it: refusals before anything starts, one hub per
database, supervised agents (findings H1, H4, M2/M3, L1, L2 of the newcomer review)."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest
from conftest import ROOT, free_port

RUN_SH = os.path.join(ROOT, "scripts", "run.sh")


def _config(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def _run(*args, timeout=60):
    """run.sh to completion (it must refuse before starting anything); ``(rc, output)``."""
    result = subprocess.run([RUN_SH, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout + result.stderr


class RunSh:
    """A backgrounded ``scripts/run.sh``; output in a file, stopped (whole group) at the end."""

    def __init__(self, tmp_path, *args, name="a"):
        self.log_path = tmp_path / f"run-{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([RUN_SH, *args], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self):
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None and text not in self.output():
                break
            time.sleep(0.2)
        pytest.fail(f"run.sh never said {text!r}:\n{self.output()}")

    def processes(self, word):
        """Live descendants whose command line contains ``word``."""
        found = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if any(word in part for part in child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def _health(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/health", timeout=5) as answer:
        return json.load(answer)


@pytest.fixture
def config_text(_config_template):
    return _config_template[0]


def test_second_run_on_the_same_database_or_port_is_refused(tmp_path, config_text):
    """H1: a second run.sh on the same port, or on another port with the same data directory,
    says so in one line and exits non-zero (it used to claim "running" and exit 0); the first
    hub keeps running, and run.sh's readiness check only accepts its own hub."""
    config = _config(tmp_path, config_text)
    port = free_port()
    first = RunSh(tmp_path, "--config", str(config), "--port", str(port), "--no-agent")
    try:
        first.wait_for("is running at")
        run_id = _health(port)["run_id"]
        assert run_id

        rc, out = _run("--config", str(config), "--port", str(port), "--no-agent")
        assert rc != 0, out
        assert "another hub already uses" in out and str(tmp_path / "monitor.db") in out, out
        assert "is running" not in out and "Traceback" not in out, out

        rc, out = _run("--config", str(config), "--port", str(free_port()), "--no-agent")
        assert rc != 0, out
        assert "another hub already uses" in out and f"pid {first.processes('server_monitor')[0].pid}" in out, out

        # Another installation (its own data) on the busy port: the port is named.
        other = tmp_path / "other"
        other.mkdir()
        rc, out = _run("--config", str(_config(other, config_text)), "--port", str(port), "--no-agent")
        assert rc != 0, out
        assert f"port {port} on 127.0.0.1 is already in use" in out, out
        assert "is running" not in out and "Traceback" not in out, out

        assert _health(port)["run_id"] == run_id  # the first hub is unharmed
    finally:
        first.stop()
    assert first.proc.returncode != 0 or True  # stopped by us (SIGTERM)
    # After the first hub stopped, the lock is gone with it: the same data starts again.
    again = RunSh(tmp_path, "--config", str(config), "--port", str(port), "--no-agent", name="again")
    try:
        again.wait_for("is running at")
    finally:
        again.stop()


def test_a_dying_agent_is_restarted_and_a_dying_hub_stops_everything(tmp_path, config_text):
    """H4: under run.sh one agent dying no longer stops the hub: it is named in the log with its
    exit status and restarted; the hub stays up. If the hub dies, run.sh stops the agents and
    exits non-zero (it used to stop everything on any exit, then exit 0)."""
    config = _config(tmp_path, config_text)
    port = free_port()
    run = RunSh(tmp_path, "--config", str(config), "--port", str(port))
    try:
        run.wait_for("is running at")
        deadline = time.time() + 30
        while not run.processes("agent.py") and time.time() < deadline:
            time.sleep(0.2)
        (agent,) = run.processes("agent.py")
        (hub,) = run.processes("server_monitor")
        agent.kill()
        run.wait_for(f"agent local (pid {agent.pid}) was killed by signal 9; restarting it in", timeout=20)
        deadline = time.time() + 30
        while time.time() < deadline:
            restarted = [p for p in run.processes("agent.py") if p.pid != agent.pid]
            if restarted:
                break
            time.sleep(0.2)
        assert restarted, run.output()
        assert _health(port)["ok"] is True and hub.is_running()
        assert run.proc.poll() is None

        hub.kill()
        rc = run.proc.wait(timeout=30)
        assert rc != 0
        assert f"the hub (pid {hub.pid}) was killed by signal 9; stopping the agents" in run.output()
        time.sleep(0.5)
        assert not restarted[0].is_running() or restarted[0].status() == psutil.STATUS_ZOMBIE
    finally:
        run.stop()


@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "run.sh: --port must be a number 1..65535, not '99999'"),
    (["--port", "-1"], "run.sh: --port must be a number 1..65535, not '-1'"),
    (["--port", "abc"], "run.sh: --port must be a number 1..65535, not 'abc'"),
    (["--port"], "run.sh: --port needs a value"),
])
def test_bad_port_is_one_line_before_anything_starts(args, message):
    """L1: --port 99999 / -1 / abc used to announce a hub on :99999, then print Datasette's usage."""
    rc, out = _run("--no-agent", *args)
    assert rc == 2 and out.strip() == message, out


def test_missing_config_path_is_not_a_new_installation(tmp_path):
    """L2: a --config typo used to create a second installation (new secrets, empty database)
    and start it on the same port; now it is an error unless --init is given."""
    missing = tmp_path / "confg.yaml"
    rc, out = _run("--config", str(missing), "--no-agent")
    assert rc == 2 and out.strip() == f"run.sh: no such config file: {missing} (use --init to create one)", out
    assert not missing.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit, message", [
    (("retention_days: 7", "retention_day: 3"), "config: unknown key data.retention_day (did you mean retention_days?)"),
    (("server:", "sever:"), "config: unknown section 'sever' (did you mean server?)"),
    (("port: 5100", "port: abc"), "config: server.port must be an integer 1..65535"),
    (("port: 5100", "port: 99999"), "config: server.port must be an integer 1..65535"),
    (("port: 5100", "port 5100"), "is not valid YAML"),
    (("path: monitor.db", "path: /srv/does-not-exist/sub/monitor.db"),
     "config: data.path: directory /srv/does-not-exist/sub does not exist"),
])
def test_config_errors_are_one_line_naming_the_key(tmp_path, config_text, edit, message):
    """M2/M3: misspelt keys and sections are named with a "did you mean", bad values and a data
    directory that does not exist are one line naming the key or path, never a traceback (they
    used to be ignored, or printed a Python traceback from run.sh's inline Python)."""
    old, new = edit
    assert old in config_text
    text = config_text.replace(old, new, 1)
    config = _config(tmp_path, text)
    rc, out = _run("--config", str(config), "--no-agent")
    assert rc == 2, out
    assert "Traceback" not in out and message in out, out
    if "YAML" not in message:  # YAML errors add their line/column context
        assert len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "monitor.db").exists()


def _serve(*args):
    import sys

    result = subprocess.run([sys.executable, "-m", "server_monitor", "serve", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout + result.stderr


def test_serve_refuses_bad_input_in_one_line(tmp_path, config_text):
    """M3/L1/L2 for ``server-monitor serve`` itself: a data.path in a missing directory used to end
    in a raw ``sqlite3.OperationalError`` traceback naming no path; ``--port 99999`` reached
    Datasette's usage text; a missing ``-c`` path silently created a new installation."""
    config = _config(tmp_path, config_text.replace("path: monitor.db", "path: /srv/does-not-exist/sub/monitor.db"))
    rc, out = _serve("-c", str(config), "--port", str(free_port()))
    assert rc == 1 and "Traceback" not in out, out
    assert out.strip() == ("Error: config: data.path: directory /srv/does-not-exist/sub does not exist "
                           f"(create it, or fix data.path in {config})"), out

    rc, out = _serve("-c", str(config), "--port", "99999")
    assert rc == 2 and "99999 is not in the range 1<=x<=65535" in out and "datasette" not in out, out

    missing = tmp_path / "new" / "confg.yaml"
    rc, out = _serve("-c", str(missing))
    assert rc == 1 and out.strip() == f"Error: no such config file: {missing} (use --init to create one)", out
    assert not missing.exists()


def test_unknown_config_keys_are_named_with_the_closest_known_one(tmp_path, config_text):
    """M2: unknown keys in any section, alerts included, are errors naming the key and the closest
    known name (``retention_day: 3`` used to run with the default 7 days)."""
    from server_monitor.core import config as config_mod

    for old, new, message in [
        ("retention_days: 7", "retention_day: 3", "unknown key data.retention_day (did you mean retention_days?)"),
        ("agent:", "alerts:\n  host_ofline_minutes: 3\nagent:",
         "unknown key alerts.host_ofline_minutes (did you mean host_offline_minutes?)"),
        ("agent:", "features:\n  zzz: 1\nagent:", "unknown key features.zzz"),
        ("auth:", "auht:", "unknown section 'auht' (did you mean auth?)"),
    ]:
        path = _config(tmp_path, config_text.replace(old, new, 1))
        with pytest.raises(config_mod.ConfigError) as caught:
            config_mod.load(str(path))
        assert str(caught.value) == "config: " + message
    # Every documented key is known, and a section left empty means its defaults.
    path = _config(tmp_path, config_text + "features:\n")
    assert config_mod.load(str(path)).get("features.idle_hours") == 2


def test_F14_ctrl_c_after_a_scrape_stops_the_hub_without_tracebacks_or_leaked_semaphores(tmp_path, config_text):
    """Newcomer finding 14: stopping the demo hub (Ctrl-C: SIGINT to run.sh's whole process group)
    printed "resource_tracker: There appear to be 5 leaked semaphore objects" (the /metrics
    builder pool's queues, never shut down) and the builder's own KeyboardInterrupt traceback."""
    import yaml

    config = _config(tmp_path, config_text)
    token = yaml.safe_load(config_text)["prometheus"]["token"]
    port = free_port()
    hub = RunSh(tmp_path, "--config", str(config), "--port", str(port), "--no-agent")
    try:
        hub.wait_for("is running at")
        for _ in range(3):  # each worker may start its builder process
            request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer " + token})
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200
        assert hub.processes("multiprocessing.spawn")  # the builder (and the workers) run
        os.killpg(hub.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        hub.proc.wait(timeout=30)
        time.sleep(1)  # the resource tracker writes its warning as it exits
    finally:
        hub.stop()
    out = hub.output()
    assert "leaked semaphore" not in out, out
    assert "_process_worker" not in out, out  # no KeyboardInterrupt traceback from the builder
