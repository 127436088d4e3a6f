"""Analysts' ad-hoc SQL on its own bounded path (security review L6, issue 13).

Datasette runs every query of a database on one shared pool of SQL threads
(``num_sql_threads``). Six analysts each running a heavy ``?sql=`` query filled that pool, and
every viewer's dashboard query waited behind them (9 s measured). :class:`AnalystSQL` bounds
ad-hoc SQL (``/monitor?sql=``, ``/monitor.json?sql=``, ``/monitor.csv?sql=``):

* at most ``concurrency`` such queries run at once in this process (``sql.analyst_concurrency``,
  default 1); the hub starts Datasette with ``num_sql_threads`` = 3 + that, so the viewers'
  canned queries always keep three SQL threads of their own;
* at most ``queue`` more wait (``sql.analyst_queue``, default 8), each for at most ``wait_s``
  seconds; beyond that the answer is 429 (queue full) or 503 (waited too long), never a
  held-up viewer;
* each runs under a shorter time limit (``sql.analyst_time_limit_ms``, default 2000 ms, passed
  to Datasette as ``_timelimit``; a larger ``_timelimit`` from the request is lowered to it).

Canned queries (the dashboard's, also when an analyst runs them) are not affected.
"""

import asyncio
import json
from urllib.parse import parse_qsl, urlencode

ADHOC_PATHS = ("/monitor", "/monitor.json", "/monitor.csv")


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

    def __init__(self, time_limit_ms=2000, concurrency=1, queue=8, wait_s=30.0):
        self.time_limit_ms = int(time_limit_ms)
        self.concurrency = max(1, int(concurrency))
        self.queue = max(0, int(queue))
        self.wait_s = float(wait_s)
        self.running = 0
        self.waiting = 0
        self._slots = None

    @classmethod
    def from_config(cls, config):
        """From ``sql.analyst_time_limit_ms``, ``sql.analyst_concurrency``, ``sql.analyst_queue``."""
        return cls(time_limit_ms=config.get("sql.analyst_time_limit_ms", 2000),
                   concurrency=config.get("sql.analyst_concurrency", 1),
                   queue=config.get("sql.analyst_queue", 8))

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
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken at once, without yielding
        elif self.waiting >= self.queue:
            return await _refuse(send, 429, "too many analyst SQL queries waiting; try again shortly")
        else:
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.wait_s)
            except asyncio.TimeoutError:
                return await _refuse(send, 503, "analyst SQL queries are busy; try again shortly")
            finally:
                self.waiting -= 1
        self.running += 1
        try:
            return await app(self.limited_scope(scope), receive, send)
        finally:
            self.running -= 1
            self._slots.release()


async def _refuse(send, status, message):
    body = json.dumps({"ok": False, "status": status, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"), (b"retry-after", b"5"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
