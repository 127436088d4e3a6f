"""One worker process at a time runs the hub's background jobs (maintenance, alerts).

With ``server.workers`` > 1 every worker process runs the same plugins, but roll-ups,
retention and alert delivery must run once. :class:`JobsLeader` takes an ``flock`` on
``<data.path>.jobs.lock``: the worker that holds it starts the jobs; every other worker keeps
a thread blocked on the same lock, so when the leader dies (and uvicorn starts a new
worker in its place) one of them takes over at once. The kernel drops the lock with its
process, so there is nothing stale to clean up.

The leader writes ``{"pid": ..., "dead": [thread names]}`` into the lock file whenever the set
of dead job threads changes, so ``/-/health`` answers the same in every worker (M3).
"""

import errno
import fcntl
import json
import os
import threading
import time


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
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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
