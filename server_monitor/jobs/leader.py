"""One process at a time runs the hub's background jobs (WAL checkpoints, maintenance, alerts).

Roll-ups, retention and alert delivery must run once per hub. :class:`JobsLeader` takes an
``flock`` on ``<data.path>.jobs.lock``; the process that holds it starts the jobs, every other
keeps a thread blocked on the same lock and takes over at once when the holder dies. The
kernel drops the lock with its process, so there is nothing stale to clean up.

With ``server.workers`` > 1 the ``serve`` process (uvicorn's supervisor, otherwise idle) leads
(:func:`run_jobs_here`), so the maintenance pass's Python work never holds a worker's GIL
while that worker stores reports (measured: ~300 ms ingest stalls once a minute when it ran in
a worker); the workers wait on the lock. With one worker that worker leads.

The leader writes ``{"pid": ..., "dead": [thread names]}`` into the lock file whenever the set
of dead job threads changes, so ``/-/health`` answers the same in every worker (see docs/security.md M3).
"""

import errno
import fcntl
import json
import os
import threading
import time

from ..serving.analyst import AnalystSQL
from ..serving.fleet_share import PublisherThread
from ..serving.hub import dead_jobs  # noqa: F401 - also this module's API (tests, run_jobs_here)
from ..storage.instance import open_lock_file
from ..storage.rollup import CheckpointThread, Maintenance, MaintenanceThread
from . import alerts
from . import notify
from . import nudge
from . import replication


def start_jobs(holder, config):
    """Start the job threads (each once): ``holder.fleet_thread`` (the fleet document publisher,
    ``server_monitor.serving.fleet_share``), ``holder.checkpoint_thread`` (the WAL, every second),
    ``holder.maintenance_thread`` (every ``data.maintenance_interval_s`` s; 0: off) and
    ``holder.alert_thread`` (every ``alerts.interval_s`` s when ``alerts.enabled``) and
    ``holder.nudge_thread`` (idle-GPU nudges and digests, every ``notifications.nudge_interval_s`` s)."""
    if getattr(holder, "fleet_thread", None) is None:
        holder.fleet_thread = PublisherThread(config.db_path, float(config.get("features.idle_max_util") or 5))
        holder.fleet_thread.start()
    if replication.enabled(config):
        if getattr(holder, "replication_thread", None) is None:
            # Litestream owns the WAL checkpoints: no CheckpointThread (docs/architecture.md "Replication").
            holder.replication_thread = replication.ReplicationThread(config)
            holder.replication_thread.start()
    elif getattr(holder, "checkpoint_thread", None) is None:
        holder.checkpoint_thread = CheckpointThread(config.db_path,
                                                    analyst_locks=AnalystSQL.from_config(config).lock_paths())
        holder.checkpoint_thread.start()

    interval = float(config.get("data.maintenance_interval_s", 60))
    if interval > 0 and getattr(holder, "maintenance_thread", None) is None:
        holder.maintenance_thread = MaintenanceThread(Maintenance.from_config(config), interval)
        holder.maintenance_thread.start()
    cfg = alerts.settings(config)
    notifier = None
    if cfg["enabled"] and getattr(holder, "alert_thread", None) is None:
        notifier = notify.Notifier.from_config(config, cfg)
        holder.alert_thread = alerts.AlertThread(alerts.AlertEngine(config.db_path, cfg, notifier))
        holder.alert_thread.start()
    if getattr(holder, "nudge_thread", None) is None:
        # Idle-GPU nudges and weekly digests (jobs/nudge.py): they run without alerts too.
        holder.nudge_thread = nudge.NudgeThread(nudge.Nudger(config, cfg, notifier or notify.Notifier.from_config(config, cfg)))
        holder.nudge_thread.start()


class _Holder:
    replication_thread = None
    fleet_thread = None
    checkpoint_thread = None
    maintenance_thread = None
    alert_thread = None
    nudge_thread = None


def run_jobs_here(config):
    """Lead the background jobs from this process (``serve`` with several workers); returns
    the :class:`JobsLeader`. Raises ``OSError`` when the lock file cannot be opened."""
    holder = _Holder()
    leader = JobsLeader(config.db_path, lambda: start_jobs(holder, config), lambda: dead_jobs(holder))
    leader.start()
    return leader


def lock_path(db_path):
    """The jobs lock of a database: ``<db_path>.jobs.lock``."""
    return db_path + ".jobs.lock"


class JobsLeader:
    """Start ``start_jobs()`` in the one process holding the jobs lock.

    ``start_jobs``: callable that starts the job threads (called at most once, in the
    leader). ``dead_jobs``: callable returning the names of job threads that died (list of
    str). ``watch_s``: how often the leader publishes that list (seconds).
    ``is_leader`` says whether this process runs the jobs.
    """

    def __init__(self, db_path, start_jobs, dead_jobs, watch_s=2.0):
        self.path = lock_path(db_path)
        self.start_jobs, self.dead_jobs, self.watch_s = start_jobs, dead_jobs, watch_s
        self.is_leader = False
        self._fd = None
        self._published = None

    def start(self):
        """Lead now when the lock is free, else wait for it in a daemon thread.

        Raises ``OSError`` when the lock file cannot be opened (missing or unwritable directory).
        """
        self._fd = open_lock_file(self.path)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            threading.Thread(target=self._standby, name="jobs-standby", daemon=True).start()
            return
        self._lead()

    def _standby(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks until the leader's process is gone
        self._lead()

    def _lead(self):
        self.is_leader = True
        self._publish([])
        self.start_jobs()
        threading.Thread(target=self._watch, name="jobs-watch", daemon=True).start()

    def _publish(self, dead):
        if dead == self._published:
            return
        data = json.dumps({"pid": os.getpid(), "dead": dead}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        self._published = dead

    def _watch(self):
        while True:
            time.sleep(self.watch_s)
            try:
                self._publish(self.dead_jobs())
            except Exception:  # noqa: BLE001 - publishing is best effort; the leader's own health still sees it
                pass

    def dead(self):
        """Names of dead job threads, as the leader sees them (list of str; ``[]`` when none or unknown)."""
        if self.is_leader:
            return self.dead_jobs()
        try:
            with open(self.path, "rb") as fp:
                state = json.loads(fp.read() or b"{}")
        except (OSError, ValueError):
            return []
        dead = state.get("dead") if isinstance(state, dict) else None
        return [str(name) for name in dead] if isinstance(dead, list) else []
