"""Analysts' ad-hoc SQL on its own bounded path (see docs/security.md L6, issue 13).

Datasette runs every query of a database on one shared pool of SQL threads
(``num_sql_threads``). Six analysts each running a heavy ``?sql=`` query filled that pool, and
every viewer's dashboard query waited behind them (9 s measured). :class:`AnalystSQL` bounds
ad-hoc SQL: a database page with ``?sql=`` (``/monitor?sql=``, ``/monitor.json?sql=``, ...) and every
table or row page (``/monitor/host_samples?_where=...``, filters, facets, ``_search``, ``_sort``),
whatever the spelling of the path: it is routed as Datasette routes it (its ``raw_path``, the
database name tilde-decoded, so ``/~6Donitor.json?sql=`` is the monitor database; security
review N5). Canned queries are not ad-hoc. That path:

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

* SQLite values on its connections are at most :data:`ANALYST_MAX_LENGTH` bytes
  (``SQLITE_LIMIT_LENGTH``, :func:`limit_connection`): ``printf('%.*c', 1e9, 'x')`` and
  ``randomblob(5e8)`` fail at once with "string or blob too big" instead of running 24 s or
  allocating 500 MB past the time limit (N5); ``printf()``/``format()`` (on every Datasette
  connection) refuse a width or precision above :data:`PRINTF_MAX_WIDTH`, as SQLite's printf
  ran 24 s for ``%.*c`` with 1e9 before it noticed the length limit.

Canned queries (the dashboard's, also when an analyst runs them) are not affected.
"""

import asyncio
import contextvars
import errno
import fcntl
import json
import os
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlencode

from ..storage.instance import open_lock_file

# Datasette's views that run SQL written by the request (its own class names, see ``route``).
DATA_VIEWS = {"DatabaseView": "database", "TableView": "table", "RowView": "row"}
# Longest string or blob an analyst's query may make (SQLITE_LIMIT_LENGTH on the analysts' threads).
ANALYST_MAX_LENGTH = 16 * 1024 * 1024
ANALYST_THREAD_PREFIX = "analyst-sql"
# Largest width or precision printf()/format() accept on Datasette's connections (N5).
PRINTF_MAX_WIDTH = 100_000
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
        self.analyst = ThreadPoolExecutor(max_workers=max(1, analyst_workers), thread_name_prefix=ANALYST_THREAD_PREFIX,
                                          initializer=_lower_priority, initargs=(nice,))

    def submit(self, fn, /, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)`` on the analysts' threads when called for an analyst request."""
        if _IN_ANALYST_REQUEST.get():
            return self.analyst.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, **kwargs):
        self.analyst.shutdown(wait=wait, **kwargs)
        super().shutdown(wait=wait, **kwargs)


# printf()/format() conversions: flags, width, precision (digits or *), length, type (SQLite's printf).
_PRINTF_SPEC = re.compile(r"%[-+ #0!,]*(\*|\d+)?(?:\.(\*|\d+))?l{0,2}([a-zA-Z%])")
_printf_local = threading.local()


def _as_int(value):
    """A printf ``*`` argument as SQLite reads it (``sqlite3_value_int64``), roughly."""
    if isinstance(value, (int, float)):
        return int(value) if abs(value) < 1e18 else 10 ** 18
    if isinstance(value, str):
        match = re.match(r"\s*[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", value)
        if match:
            number = float(match.group(0))
            return int(number) if abs(number) < 1e18 else 10 ** 18
    return 0


def bounded_printf(*values):
    """SQLite's ``printf()`` / ``format()`` with width and precision at most
    :data:`PRINTF_MAX_WIDTH` (N5): ``printf('%.*c', 1000000000, 'x')`` ran 24 s inside one SQLite
    step, where neither the query time limit nor ``SQLITE_LIMIT_LENGTH`` stops it. Raises
    ``ValueError`` (the query fails with that message) for a larger one; else the answer of
    SQLite's own printf (run on a private in-memory connection of this thread)."""
    if not values:
        return None
    fmt, args = values[0], values[1:]
    if isinstance(fmt, str):
        position = 0
        for match in _PRINTF_SPEC.finditer(fmt):
            for part in match.group(1, 2):
                if part == "*":
                    size = _as_int(args[position]) if position < len(args) else 0
                    position += 1
                else:
                    size = int(part) if part and len(part) < 12 else (0 if not part else 10 ** 12)
                if abs(size) > PRINTF_MAX_WIDTH:
                    raise ValueError(f"printf(): width or precision {size} is above {PRINTF_MAX_WIDTH}")
            if match.group(3) != "%":
                position += 1
    conn = getattr(_printf_local, "conn", None)
    if conn is None:
        conn = _printf_local.conn = sqlite3.connect(":memory:", check_same_thread=False)
    placeholders = ", ".join("?" * len(values))
    return conn.execute(f"SELECT printf({placeholders})", values).fetchone()[0]


# Every connection Datasette opened in this process (its SQL threads keep theirs for life), so
# that a shutdown can interrupt their queries (I-10). Bounded: closed ones are dropped.
_OPEN_CONNECTIONS = []
_OPEN_LOCK = threading.Lock()


def _is_open(conn):
    try:
        conn.total_changes  # noqa: B018 - raises ProgrammingError once closed
        return True
    except sqlite3.ProgrammingError:
        return False


def track_connection(conn):
    """Remember ``conn`` (a Datasette connection) for :func:`interrupt_all`."""
    with _OPEN_LOCK:
        if len(_OPEN_CONNECTIONS) >= 256:
            _OPEN_CONNECTIONS[:] = [c for c in _OPEN_CONNECTIONS if _is_open(c)]
        _OPEN_CONNECTIONS.append(conn)


def interrupt_all():
    """``interrupt()`` every open Datasette connection of this process (SQLite's
    ``sqlite3_interrupt``, safe from any thread): their running statements stop at the next
    VM step with "interrupted". Called at shutdown (``server_monitor.serving.asgi``, I-10) after
    uvicorn cancelled the requests. Returns how many were interrupted."""
    with _OPEN_LOCK:
        connections = list(_OPEN_CONNECTIONS)
    done = 0
    for conn in connections:
        try:
            conn.interrupt()
            done += 1
        except sqlite3.ProgrammingError:  # closed meanwhile
            pass
    return done


def limit_connection(conn):
    """Bounds for a connection Datasette opens (``plugins/sm_sql.py``, N5): ``printf()`` and
    ``format()`` become :func:`bounded_printf` on every connection; on an analysts' SQL thread
    (:class:`RoutingExecutor`) ``SQLITE_LIMIT_LENGTH`` is lowered to :data:`ANALYST_MAX_LENGTH`
    as well (Python 3.11+, ``Connection.setlimit``; older Pythons keep SQLite's 1 GB). The
    connection is remembered for :func:`interrupt_all` (I-10)."""
    track_connection(conn)
    for name in ("printf", "format"):
        conn.create_function(name, -1, bounded_printf, deterministic=True)
    if threading.current_thread().name.startswith(ANALYST_THREAD_PREFIX) and hasattr(conn, "setlimit"):
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, ANALYST_MAX_LENGTH)


def route(scope, routes, base_url="/"):
    """How Datasette routes ``scope``: ``(kind, database, table)`` with kind ``"database"``,
    ``"table"`` or ``"row"`` (names tilde-decoded as Datasette does), or None for any other page.

    ``routes``: Datasette's compiled routes (``datasette._routes()``); like Datasette's router it
    matches the request's ``raw_path`` (not the percent-decoded ``path``) after ``base_url``.
    """
    # Deferred: datasette.utils costs 0.1 s to import, and the fleet publisher subprocess imports
    # this module (through serving/asgi.py) without ever routing a request.
    from datasette.utils import resolve_routes, tilde_decode

    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "")
    path = path.partition("?")[0]
    if base_url != "/" and path.startswith(base_url):
        path = "/" + path[len(base_url):]
    match, view = resolve_routes(routes, path)
    kind = DATA_VIEWS.get(getattr(getattr(view, "view_class", None), "__name__", ""))
    if kind is None:
        return None
    groups = match.groupdict()
    table = groups.get("table")
    return kind, tilde_decode(groups["database"]), tilde_decode(table) if table else None


def has_sql_param(scope):
    """True when the query string carries ``sql=``."""
    return any(key == "sql" for key, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                                    keep_blank_values=True))


async def is_adhoc_sql(scope, datasette, actor=None):
    """True for a request that runs SQL the request wrote (N5, L6): a database page with
    ``sql=``, or a table or row page (``_where``, filters, facets, ``_search``, ``_sort`` all
    shape its SQL) that is not a canned query. Any database, any spelling of its name."""
    routes = getattr(datasette, "_sm_routes", None)
    if routes is None:
        routes = datasette._sm_routes = datasette._routes()
    where = route(scope, routes, datasette.setting("base_url") or "/")
    if where is None:
        return False
    kind, database, table = where
    if kind == "database":
        return has_sql_param(scope)
    if kind == "table":
        try:
            canned = await datasette.get_canned_query(database, table, actor)
        except Exception:  # an unknown database: Datasette answers 404 itself; bound it anyway
            canned = None
        return canned is None
    return True


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
