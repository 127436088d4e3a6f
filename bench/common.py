"""What the benchmarks and the proof suite share, written once.

* :data:`ROOT` and the import path: the checkout's own ``server_monitor`` and ``monitor_agent``,
  and ``tests/`` for the report builder (``tests/reports.py``: contract-v1 reports with values
  from the real nvidia-smi captures) and the logging-in HTTP client (``tests/http_client.py``);
* :class:`Hub`: ``python -m server_monitor serve`` on its own config and database in a work
  directory, started, stopped, killed, measured (CPU seconds, RSS);
* :func:`login`, :func:`timed`, :func:`pct`, :func:`free_port`, :func:`machine`;
* :func:`fresh_database`, :func:`fresh_report` and :func:`store`: a report of a template with a new id and time,
  validated and stored through the hub's own path (``validate_report`` + ``store_report``).
"""

import copy
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (os.path.join(ROOT, "tests"), ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import psutil  # noqa: E402
import urllib3  # noqa: E402

from http_client import Browserless  # noqa: E402
from reports import sample_report  # noqa: E402,F401 - the report builder, re-exported for the commands
from server_monitor.core import config as config_mod  # noqa: E402
from server_monitor.storage import schema  # noqa: E402
from server_monitor.storage.contract import validate_report  # noqa: E402
from server_monitor.storage.store import store_report  # noqa: E402

HTTP = urllib3.PoolManager(maxsize=16, retries=False)


def free_port():
    """A free TCP port on 127.0.0.1 (int)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    """The ``p`` quantile (0..1) of ``values`` by rank, or None when empty."""
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else None


def timed(method, url, http=HTTP, **kw):
    """One request, its body read undecoded: ``(response, body bytes, elapsed ms)``."""
    t0 = time.perf_counter()
    response = http.request(method, url, preload_content=False, decode_content=False, **kw)
    body = response.read(decode_content=False)
    elapsed = (time.perf_counter() - t0) * 1000
    response.release_conn()
    return response, body, elapsed


def machine():
    """One line naming the machine a figure was taken on: CPUs, RAM, Python, SQLite."""
    return (f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")


def fresh_report(template, ts, **fields):
    """A deep copy of report ``template`` (dict) with a new ``report_id``, ``sample_time`` and
    ``sent_at`` of ``ts`` (epoch s) and ``fields`` set."""
    report = copy.deepcopy(template)
    report.update(report_id=str(uuid.uuid4()), sample_time=ts, sent_at=ts, **fields)
    return report


def fresh_database(path):
    """Delete ``path`` and its WAL/SHM files if present, migrate a new database there and
    return a writer connection (``schema.connect``: the hub's pragmas)."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    schema.migrate(path)
    return schema.connect(path)


def store(conn, report, ts):
    """``report`` through the hub's write path: ``validate_report`` then ``store_report`` at
    received time ``ts``. Raises ``ContractError`` for a report the hub would answer 400."""
    store_report(conn, validate_report(report), ts)


def login(hub, retries=False):
    """Log in to ``hub`` as its admin like a browser; returns ``(urllib3 pool, Cookie header dict)``.

    ``retries=None``: urllib3's default retries of idempotent requests, as browsers do on a
    stale kept-alive connection (the proof suite's long runs)."""
    client = Browserless(hub.url, retries=retries)
    client.login("admin", hub.password)
    return client.http, client.cookie_header


class Hub:
    """``python -m server_monitor serve`` on its own config and database in ``workdir``.

    The config (random secrets, admin password kept in ``workdir/password``) is created on first
    use and reused when the directory already holds one, so a populated database serves several
    runs. The port is chosen once: a restarted hub answers on the same URL (agents keep it).
    ``config`` is the loaded :class:`~server_monitor.core.config.Config`. A subclass may run
    another checkout (``root``, ``env``) and wait for another page (``ready_path``).
    """

    root = ROOT
    env = None
    ready_path = "/-/health"

    def __init__(self, workdir):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config_path = os.path.join(workdir, "config.yaml")
        password_file = os.path.join(workdir, "password")
        if os.path.exists(self.config_path) and os.path.exists(password_file):
            with open(password_file) as fp:
                self.password = fp.read()
        else:
            _, self.password = config_mod.create(self.config_path)
            with open(password_file, "w") as fp:
                fp.write(self.password)
        self.config = config_mod.load(self.config_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log = None
        self.samples = []

    def start(self, workers=None, fsize=None):
        """Start the hub and wait (up to 30 s) until :attr:`ready_path` answers 200; returns self.

        ``workers``: ``serve --workers`` (None: the config's ``server.workers``). ``fsize``: a
        limit (bytes) on the size of any file the hub writes (RLIMIT_FSIZE: "disk full").
        Raises RuntimeError with the end of ``hub.log`` when it does not start.
        """
        def limits():
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

        self.log = open(os.path.join(self.workdir, "hub.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server_monitor", "serve", "-c", self.config_path, "--port", str(self.port)]
            + (["--workers", str(workers)] if workers else []),
            cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=limits)
        http = urllib3.PoolManager(retries=False)
        for _ in range(300):
            try:
                if http.request("GET", self.url + self.ready_path, timeout=1).status == 200:
                    return self
            except urllib3.exceptions.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("hub did not start: " + open(os.path.join(self.workdir, "hub.log")).read()[-2000:])

    def stop(self, sig=signal.SIGTERM):
        """Send ``sig`` to the hub's process group (SIGKILL: a crash) and wait for it."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        if self.log is not None:
            self.log.close()
            self.log = None

    def _tree(self):
        proc = psutil.Process(self.proc.pid)
        return [proc] + proc.children(recursive=True)

    def cpu_seconds(self):
        """User + system CPU seconds of the hub and its worker processes so far."""
        return sum(p.cpu_times().user + p.cpu_times().system for p in self._tree())

    def sample(self):
        """Append ``(monotonic s, CPU s, RSS bytes)`` of the hub's process tree to :attr:`samples`."""
        try:
            procs = self._tree()
            cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
            rss = sum(p.memory_info().rss for p in procs)
            self.samples.append((time.monotonic(), cpu, rss))
        except psutil.Error:
            pass

    def raise_fsize(self):
        """Lift the file-size limit of the hub and its worker processes ("space returns")."""
        for proc in self._tree():
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def db(self):
        """A plain connection to the hub's ``monitor.db`` (30 s busy timeout)."""
        return sqlite3.connect(self.config.db_path, timeout=30)
