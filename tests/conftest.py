"""Shared fixtures: hub configs, sample reports, a running ingest server, Datasette clients."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
FAKE_NVSMI = os.path.join(TESTS, "fake_nvidia_smi.py")
sys.path.insert(0, TESTS)

from reports import sample_report  # noqa: E402,F401  (re-exported for tests)


# The test files that keep one worker busy longest, longest first (seconds of one worker; see
# docs/reliability.md "Test suite time"). scripts/test.sh's parallel run hands files to workers in
# collection order (--no-loadscope-reorder), so these start at once on separate workers. xdist's
# default order (files with the most tests first) started them last, as they hold few tests, and
# the run ended with one worker alone on a two-minute file.
LONG_FILES = ["test_deploy.py", "test_hub_datasette.py", "test_proof.py", "test_proof_faults.py"]


def pytest_collection_modifyitems(config, items):
    """Put the tests of :data:`LONG_FILES` first (stable: every file keeps its own order)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


def free_port():
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def _config_template(tmp_path_factory):
    """One generated config (PBKDF2 hashing is slow on purpose), copied per test."""
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.core import config as config_mod

    path = tmp_path_factory.mktemp("template") / "config.yaml"
    cfg, password = config_mod.create(str(path))
    # One worker process for the tests' hubs (the product's default is 2): starting a second
    # one per hub would cost the suite a minute; tests/test_workers.py, test_proof_mixed.py and
    # the run.sh/deploy tests run the hub with two.
    text = path.read_text().replace("\nserver:\n", "\nserver:\n  workers: 1\n", 1)
    assert "  workers: 1\n" in text
    # The admin's hash with 1,000 PBKDF2 rounds instead of the product's 480,000 (the rounds
    # are part of the stored hash, so the hub checks what it is given): every admin login
    # of the suite checked the full count, 0.26 s of CPU each. Users the tests create use 1,000
    # too; config.create's own hash is what tests of init-config and the deployment see.
    weak = hash_password(password, iterations=1000)
    assert cfg.get("auth.password_hash") in text
    text = text.replace(cfg.get("auth.password_hash"), weak, 1)
    return text, password


@pytest.fixture
def hub_config(tmp_path, monkeypatch, _config_template):
    """A hub config with random secrets in tmp_path (its own monitor.db and auth.db).

    ``.password`` holds the admin password; ``$SERVER_MONITOR_CONFIG`` points at it.
    """
    from server_monitor.core import config as config_mod

    text, password = _config_template
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(0o600)
    cfg = config_mod.load(str(path))
    cfg.password = password
    monkeypatch.setenv(config_mod.ENV_VAR, cfg.path)
    return cfg


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def ingest_server(hub_config):
    """The WSGI ingest app served by wsgiref on a loopback port; yields its base URL."""
    import ingest

    app = ingest.make_application(hub_config)
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_port}"
    server.config = hub_config
    yield server
    server.shutdown()
    server.server_close()


def make_datasette(cfg):
    """A Datasette instance configured exactly like ``server-monitor serve`` runs it."""
    from server_monitor.serving.asgi import build_datasette

    return build_datasette(cfg)


@pytest.fixture
def admin(datasette, hub_config):
    """The config admin logged in to ``datasette`` (a ``test_hub_datasette.Client``), with ``.token``
    (the agent token) and ``.db`` (the monitor.db path)."""
    from test_hub_datasette import Client

    client = Client(datasette)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    client.token = hub_config.get("agent.token")
    client.db = hub_config.db_path
    return client


@pytest.fixture
def datasette(hub_config):
    from server_monitor.storage import schema

    schema.migrate(hub_config.db_path)
    return make_datasette(hub_config)


def start_hub(config_path, log_path, start_s=30):
    """Start the real hub (``python -m server_monitor serve -c config_path``) on a free loopback
    port in a session of its own, logging to ``log_path``; returns the ``Popen`` once ``/login``
    answers, with ``.base_url`` and ``.log`` (the open log file). Fails the test when it does not
    start within ``start_s`` seconds."""
    import urllib3

    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server_monitor", "serve", "-c", str(config_path), "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    http = urllib3.PoolManager(retries=False)
    deadline = time.time() + start_s
    while time.time() < deadline:
        try:
            if http.request("GET", base + "/login", timeout=1).status == 200:
                break
        except urllib3.exceptions.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("hub did not start:\n" + open(log_path).read())
    proc.base_url, proc.log = base, log
    return proc


@pytest.fixture
def hub_process(hub_config, tmp_path):
    """The real hub (``python -m server_monitor serve``) on a free loopback port; ``.base_url``."""
    proc = start_hub(hub_config.path, tmp_path / "hub.log")
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    proc.log.close()


def shared_dir(tmp_path_factory, name, build):
    """A directory ``build(path)`` fills once per test run, shared by the pytest-xdist workers
    (one builds it under a file lock, the others wait and reuse it)."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory above the per-worker ones
    out = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".done").exists():
            if out.exists():
                shutil.rmtree(out)
            out.mkdir()
            build(out)
            (out / ".done").write_text("")
    return out


@pytest.fixture(scope="session")
def agent_dist(tmp_path_factory):
    """The x86_64 agent zipapp built once by scripts/build_agent.sh (dir with .pyz and .sha256)."""

    def build(out):
        result = subprocess.run([os.path.join(ROOT, "scripts", "build_agent.sh"), "--arch", "x86_64", "--out",
                                 str(out)], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    return shared_dir(tmp_path_factory, "agent-dist", build)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """Wheels of requirements.txt (and setuptools, the build backend), fetched once per run, for
    install tests that build several release venvs (``$SM_WHEELHOUSE`` of scripts/_release.sh)."""

    def build(out):
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                                 "-r", os.path.join(ROOT, "requirements.txt"), "setuptools>=61", "-w", str(out)],
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    return shared_dir(tmp_path_factory, "wheelhouse", build)


def file_connection(path):
    """An autocommit sqlite3 connection that remembers its file (``.path``) for Maintenance, with
    ``natural_key()`` registered as on every Datasette connection (plugins/sm_natural.py), so the
    canned queries run here as they run in the hub."""
    import sqlite3

    from server_monitor.core import natural

    class Conn(sqlite3.Connection):
        pass

    conn = sqlite3.connect(path, isolation_level=None, factory=Conn)
    conn.path = path
    natural.register(conn)
    return conn


# Browser fixtures (Playwright + Debian chromium), shared by the browser tests.
from browser import browser, page  # noqa: E402,F401
