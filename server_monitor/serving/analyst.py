"""Analysts' ad-hoc SQL on its own bounded path (see docs/security.md L6, issue 13).

Datasette runs every query of a database on one shared pool of SQL threads
(``num_sql_threads``). Six analysts each running a heavy ``?sql=`` query filled that pool, and
every viewer's dashboard query waited behind them (9 s measured). :class:`AnalystSQL` bounds
ad-hoc SQL (``/monitor?sql=``, ``/monitor.json?sql=``, ``/monitor.csv?sql=``):

* at most ``concurrency`` such queries run at once in the whole hub (``sql.analyst_concurrency``,
  default 1): with several worker processes the slots are ``flock``s on
  ``<data.path>.analyst.<n>.lock``, so two workers never run two heavy queries on two cores;
  their SQL never occupies the viewers' SQL threads (see the last point);
* at most ``queue`` more wait in each worker (``sql.analyst_queue``, default 8), each for at most
  ``wait_s`` seconds; beyond that the answer is 429 (queue full) or 503 (waited too long),
  never a held-up viewer;
* each runs under a shorter time limit (``sql.analyst_time_limit_ms``, default 2000 ms, passed
  to Datasette as ``_timelimit``; a larger ``_timelimit`` from the request is lowered to it).

* its SQL runs on threads of its own at a lower CPU priority (``nice`` +:data:`ANALYST_NICE`,
  :class:`RoutingExecutor`): on a small hub a heavy query still uses an idle core fully, but
  ingest and the viewers' queries get the CPU first when they need it.

Canned queries (the dashboard's, also when an analyst runs them) are not affected.
"""

import asyncio
import contextvars
import errno
import fcntl
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlencode

from ..storage.instance import open_lock_file


ADHOC_PATHS = ("/monitor", "/monitor.json", "/monitor.csv")
# Niceness added to the threads running analysts' SQL (Linux: per thread; 10 gives them about a
# tenth of a core's time while other threads want the CPU, all of an idle one).
ANALYST_NICE = 10
_IN_ANALYST_REQUEST = contextvars.ContextVar("sm_analyst_request", default=False)


def _lower_priority(nice):
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):  # not Linux, or not allowed: run at normal priority
        pass


class RoutingExecutor(ThreadPoolExecutor):
    """Datasette's SQL thread pool (``datasette.executor``), with analysts' work sent elsewhere.

    Work submitted while an analyst's ad-hoc query is being answered (the request runs
    inside :class:`AnalystSQL`, which marks its task with a context variable) goes to
    ``analyst_workers`` threads of its own whose niceness is raised by ``nice``; everything
    else (viewers' canned queries, pages) to the ``max_workers`` ordinary threads.
    """

    def __init__(self, max_workers, analyst_workers=1, nice=ANALYST_NICE):
        super().__init__(max_workers=max_workers, thread_name_prefix="sql")
        self.analyst = ThreadPoolExecutor(max_workers=max(1, analyst_workers), thread_name_prefix="analyst-sql",
                                          initializer=_lower_priority, initargs=(nice,))

    def submit(self, fn, /, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)`` on the analysts' threads when called for an analyst request."""
        if _IN_ANALYST_REQUEST.get():
            return self.analyst.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, **kwargs):
        self.analyst.shutdown(wait=wait, **kwargs)
        super().shutdown(wait=wait, **kwargs)


def is_adhoc_sql(scope):
    """True for a request running ad-hoc SQL on the ``monitor`` database."""
    if scope.get("path") not in ADHOC_PATHS:
        return False
    return any(key == "sql" for key, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1")))


class AnalystSQL:
    """The bounded path: wrap a request with :meth:`__call__` (an ASGI app and its arguments).

    ``time_limit_ms``: per-query limit (ms); ``concurrency``: queries running at once;
    ``queue``: requests allowed to wait; ``wait_s``: longest wait (s). ``running`` and
    ``waiting`` are the current counts (read by tests and ``/-/health``-style checks).
    """

    def __init__(self, time_limit_ms=2000, concurrency=1, queue=8, wait_s=30.0, lock_prefix=None):
        self.time_limit_ms = int(time_limit_ms)
        self.concurrency = max(1, int(concurrency))
        self.queue = max(0, int(queue))
        self.wait_s = float(wait_s)
        self.lock_prefix = lock_prefix
        self.running = 0
        self.waiting = 0
        self._held = set()
        self._fds = {}

    @classmethod
    def from_config(cls, config):
        """From ``sql.analyst_time_limit_ms``, ``sql.analyst_concurrency``, ``sql.analyst_queue``; the slots
        are lock files next to ``data.path``, shared by every worker process and held by the
        WAL checkpoint thread while it restarts the WAL (``rollup.CheckpointThread``)."""
        return cls(time_limit_ms=config.get("sql.analyst_time_limit_ms", 2000),
                   concurrency=config.get("sql.analyst_concurrency", 1),
                   queue=config.get("sql.analyst_queue", 8),
                   lock_prefix=config.db_path + ".analyst")

    def lock_paths(self):
        """The slots' lock files (list of paths; empty without ``lock_prefix``)."""
        if self.lock_prefix is None:
            return []
        return [f"{self.lock_prefix}.{slot}.lock" for slot in range(self.concurrency)]

    def _take_slot(self):
        """A free slot number (now held), or None. Raises ``OSError`` when a lock file cannot be opened."""
        for slot in range(self.concurrency):
            if slot in self._held:
                continue
            if self.lock_prefix is not None:
                fd = self._fds.get(slot)
                if fd is None:
                    fd = self._fds[slot] = open_lock_file(f"{self.lock_prefix}.{slot}.lock")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        continue
                    raise
            self._held.add(slot)
            return slot
        return None

    def _release(self, slot):
        self._held.discard(slot)
        if self.lock_prefix is not None:
            fcntl.flock(self._fds[slot], fcntl.LOCK_UN)

    def limited_scope(self, scope):
        """``scope`` with ``_timelimit`` set to at most :attr:`time_limit_ms`."""
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        asked = [v for k, v in pairs if k == "_timelimit"]
        limit = self.time_limit_ms
        if asked and asked[-1].isdigit():
            limit = min(limit, max(1, int(asked[-1])))
        pairs = [(k, v) for k, v in pairs if k != "_timelimit"] + [("_timelimit", str(limit))]
        return dict(scope, query_string=urlencode(pairs).encode("latin-1"))

    async def __call__(self, app, scope, receive, send):
        slot = self._take_slot()
        if slot is None:
            if self.waiting >= self.queue:
                return await _refuse(send, 429, "too many analyst SQL queries waiting; try again shortly")
            self.waiting += 1
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.wait_s
                while slot is None:
                    if loop.time() >= deadline:
                        return await _refuse(send, 503, "analyst SQL queries are busy; try again shortly")
                    await asyncio.sleep(0.02)  # a slot may free in another worker: no wake-up to wait for
                    slot = self._take_slot()
            finally:
                self.waiting -= 1
        self.running += 1
        marker = _IN_ANALYST_REQUEST.set(True)  # its SQL goes to the analysts' threads (RoutingExecutor)
        try:
            return await app(self.limited_scope(scope), receive, send)
        finally:
            _IN_ANALYST_REQUEST.reset(marker)
            self.running -= 1
            self._release(slot)


async def _refuse(send, status, message):
    body = json.dumps({"ok": False, "status": status, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"), (b"retry-after", b"5"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
