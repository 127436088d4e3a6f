"""``GET /metrics``: Prometheus text format of the fleet (see ``server_monitor/serving/metrics.py``), and
``GET /metrics/targets``: Prometheus HTTP service discovery (``http_sd_configs``) of its shards or
servers, so one or many Prometheus / vmagent split the fleet with ``hashmod`` relabeling.

* ``/metrics`` — the whole fleet; ``/metrics?shard=I&of=N`` — the servers whose id % N == I;
  ``/metrics/servers/<id>`` — one server (no ``Hostname``/``server_id`` labels on its samples: its
  target carries them).
* ``/metrics/targets`` (``?shards=N``, default ``prometheus.shards``; ``?per=server`` for one
  target per server) — ``[{"targets": ["host:port"], "labels": {...}}]`` as ``http_sd_configs``
  wants, ``__metrics_path__`` / ``__param_*`` set per target.

Allowed with ``Authorization: Bearer <prometheus.token>`` (config.yaml; compared in constant time)
or an admin session. Anything else: 401/403 JSON. A bad ``shard``/``of``: 400.

The exposition is built in a process of its own (``serving/metrics.py build_gzip``, one per hub
worker, started on the first scrape, niced): formatting 280,000 samples is seconds of Python that
would otherwise hold the worker's GIL while its ingest thread stores the agents' reports. It is
gzip-compressed (decompressed here for a scraper that does not accept gzip), and, when it took at least :data:`REUSE_MIN_COST_S`
to build (a large fleet), kept for :data:`REUSE_S` seconds per scope: scrapes that pile up (a
Prometheus that timed out and retried, several Prometheus on one shard) share one build instead of
each paying for it — in every worker: the build and the scrape times are shared through
``<data.path>.metrics/`` (``serving/metrics.py SharedBuilds``), because a scraper's connection is
closed after 5 s idle and its next scrape may come to another worker. A small fleet's exposition
is always fresh.

**Built ahead of a regular scraper** (issue 24: 4 shards of 10,000 servers, every
``scrape_duration_seconds`` ≤ 2 s): a 2,500-server shard is 675,000 samples, 1.4 s of CPU to build
and 3-4 s of wall time on a busy two-core hub. When a scope cost at least :data:`AHEAD_MIN_COST_S`
and its last :data:`AHEAD_SCRAPES` scrapes came at a steady interval (Prometheus' scrape_interval,
within :data:`AHEAD_JITTER`), the worker starts its next build so that it is done
:data:`AHEAD_MARGIN` × its cost before the next scrape is due, and that scrape is answered from it
(the samples then are at most that much older than at the scrape; the agents' own reports are up
to an interval old anyway). The CPU is the same, one build per scrape, off the scrape's clock. A
build ahead is started only by a scrape that came, so a scraper that stops costs at most one more.
"""

import asyncio
import atexit
import concurrent.futures
import gzip
import hmac
import json
import multiprocessing
import signal
import threading
import time
from urllib.parse import urlsplit

from datasette import hookimpl
from datasette.utils.asgi import Response

from server_monitor.serving import hub
from server_monitor.serving.metrics import CONTENT_TYPE, SharedBuilds, build_gzip, builder_init

METRICS_REFUSED = "metrics need the prometheus token (Authorization: Bearer ...) or an admin session"
# A built exposition is served again for this long (s): shorter than any sane scrape interval.
REUSE_S = 5.0
# ... when its build cost at least this much (s).
REUSE_MIN_COST_S = 0.05
MAX_SHARDS = 1024
AHEAD_MIN_COST_S = 0.3  # a scope this costly is built ahead of a steady scraper
AHEAD_SCRAPES = 3  # ... after this many scrapes at a steady interval
AHEAD_JITTER = 0.2  # ... steady: each interval within this share of the last one
AHEAD_MARGIN = 2.0  # ... done this many build costs before the next scrape is due
AHEAD_MAX_INTERVAL_S = 300.0  # scrapes further apart are not predicted



class _Cache:
    """Per Datasette instance: scope key -> (reusable until (epoch s), gzip bytes), the per-scope
    locks that make concurrent scrapes of one scope wait for one build, and the builds ahead
    under way (what all workers share is in :class:`~server_monitor.serving.metrics.SharedBuilds`)."""

    def __init__(self):
        self.built, self.locks, self.ahead = {}, {}, {}


_pool = None
_pool_lock = threading.Lock()


def _stop_builder():
    """At exit of this hub process: shut the builder down, so its queues' semaphores are
    released (the demo's stop printed "resource_tracker: There appear to be 5 leaked semaphore
    objects", the pool's call and result queues)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # exiting anyway: let the clean-up finish
        pool.shutdown(wait=True, cancel_futures=True)


def _builder():
    """This process's exposition builder (one process, spawned on first use, see the module docstring)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=builder_init)
        return _pool


atexit.register(_stop_builder)


def _cache(datasette):
    cache = getattr(datasette, "_sm_metrics_cache", None)
    if cache is None:
        cache = datasette._sm_metrics_cache = _Cache()
    return cache


def _token_ok(request, configured):
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return bool(configured) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), str(configured).encode("utf-8"))


def _refused(request, ctx):
    """None when the request may read metrics, else the 401/403 response."""
    if _token_ok(request, ctx.config.get("prometheus.token")) or (request.actor or {}).get("role") == "admin":
        return None
    status = 403 if request.actor else 401
    return Response.json({"ok": False, "status": status, "error": METRICS_REFUSED},
                         status=status, headers={"www-authenticate": 'Bearer realm="server-monitor"'})


def _bad(message):
    return Response.json({"ok": False, "status": 400, "error": message}, status=400)


def _int_arg(request, name, low, high):
    """``?name=`` as an int in ``low..high``; None when absent. Raises ValueError with the reason."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name} must be an integer {low}..{high}")
    return int(raw)


async def _build(datasette, scope, hostname_label):
    """``(gzip bytes, seconds it took)`` of one build in the builder process."""
    global _pool
    started = time.monotonic()
    db_path = datasette.get_database("monitor").path
    loop = asyncio.get_running_loop()
    try:
        packed, _ = await loop.run_in_executor(_builder(), build_gzip, db_path, *scope, hostname_label)
    except concurrent.futures.process.BrokenProcessPool:  # the builder died (OOM, killed): a new one
        with _pool_lock:
            _pool = None
        packed, _ = await loop.run_in_executor(_builder(), build_gzip, db_path, *scope, hostname_label)
    return packed, time.monotonic() - started


def next_scrape(times, now):
    """When the next scrape of a scope is due (epoch s), from ``times`` (its last scrapes,
    oldest first, the newest ``now``), or None unless the last :data:`AHEAD_SCRAPES` came at a
    steady interval (each within :data:`AHEAD_JITTER` of the last, at most
    :data:`AHEAD_MAX_INTERVAL_S`): Prometheus scrapes a target every ``scrape_interval``."""
    if len(times) < AHEAD_SCRAPES:
        return None
    gaps = [b - a for a, b in zip(times[-AHEAD_SCRAPES:], times[-AHEAD_SCRAPES + 1:])]
    last = gaps[-1]
    if not REUSE_S < last <= AHEAD_MAX_INTERVAL_S or any(abs(g - last) > AHEAD_JITTER * last for g in gaps):
        return None
    return now + last


def _shared(datasette):
    """This hub's :class:`~server_monitor.serving.metrics.SharedBuilds` (every worker sees them)."""
    found = getattr(datasette, "_sm_metrics_shared", None)
    if found is None:
        found = datasette._sm_metrics_shared = SharedBuilds(datasette.get_database("monitor").path)
    return found


def _plan_ahead(datasette, key, scope, hostname_label, times, cost):
    """After a scrape of ``key`` (``times``: its last scrapes, epoch s, this one last) whose build
    cost ``cost`` s: start its next build ahead of the next scrape when that is predictable
    (:func:`next_scrape`). The build is shared: the next scrape may come to another worker."""
    cache, shared, name = _cache(datasette), _shared(datasette), _name(key)
    due = next_scrape(times, times[-1])
    if due is None or cost < AHEAD_MIN_COST_S or key in cache.ahead:
        return
    start_at = due - AHEAD_MARGIN * cost

    async def ahead():
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            async with cache.locks.setdefault(key, asyncio.Lock()):
                packed, took = await _build(datasette, scope, hostname_label)
                # Served to the scrape due at ``due`` (and one that is a little late), not after.
                until = max(due, time.time()) + REUSE_S
                cache.built[key] = (until, packed)
                shared.put(name, packed, until)
                shared.built(name, took)
        finally:
            cache.ahead.pop(key, None)

    cache.ahead[key] = asyncio.get_running_loop().create_task(ahead())


def _name(key):
    """File name stem of a scope key: ``shard-0-4``, ``server-17``."""
    return "-".join(str(part) for part in key)


async def _body(datasette, key, scope, hostname_label):
    """The gzip bytes of the exposition for one scope (``scope``: the positional arguments of
    ``build_gzip`` after the database), reused for :data:`REUSE_S` seconds when it was costly to
    build (by any worker), built ahead of a steady scraper (see the module docstring).

    One server's scope (``/metrics/servers/<id>``, ~270 samples, ~1 ms to build) is always
    built fresh, with none of that bookkeeping: at 10,000 per-server targets every 30 s the
    shared scrape record alone was two file writes and two reads per scrape (1,300 file
    operations a second) and 10,000 files in ``<data.path>.metrics/``, for a build cheaper
    than reading them back."""
    if key[0] == "server":
        packed, _ = await _build(datasette, scope, hostname_label)
        return packed
    cache, shared, name = _cache(datasette), _shared(datasette), _name(key)
    times, cost = shared.scraped(name, AHEAD_SCRAPES)
    async with cache.locks.setdefault(key, asyncio.Lock()):
        cached = cache.built.get(key)
        packed = cached[1] if cached is not None and time.time() < cached[0] else shared.get(name)
        if packed is None:
            packed, cost = await _build(datasette, scope, hostname_label)
            shared.built(name, cost)
            if cost >= REUSE_MIN_COST_S:
                until = time.time() + REUSE_S
                cache.built[key] = (until, packed)
                shared.put(name, packed, until)
            else:
                cache.built.pop(key, None)
    _plan_ahead(datasette, key, scope, hostname_label, times, cost)
    return packed


async def _serve(request, datasette, key, scope, hostname_label=True):
    packed = await _body(datasette, key, scope, hostname_label)
    headers = {"cache-control": "no-store", "vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["content-encoding"] = "gzip"
        return Response(packed, content_type=CONTENT_TYPE, headers=headers)
    # Scrapers send Accept-Encoding: gzip; only others (curl, a browser tab) pay for inflating it.
    text = await asyncio.get_running_loop().run_in_executor(None, gzip.decompress, packed)
    return Response(text, content_type=CONTENT_TYPE, headers=headers)


async def metrics(request, datasette):
    refused = _refused(request, hub.context(datasette))
    if refused:
        return refused
    try:
        of = _int_arg(request, "of", 1, MAX_SHARDS)
        shard = _int_arg(request, "shard", 0, MAX_SHARDS - 1)
    except ValueError as exc:
        return _bad(str(exc))
    if (of is None) != (shard is None) or (of is not None and shard >= of):
        return _bad("give both shard and of, with 0 <= shard < of")
    return await _serve(request, datasette, ("shard", shard, of), (shard, of, None))


async def server_metrics(request, datasette):
    refused = _refused(request, hub.context(datasette))
    if refused:
        return refused
    server_id = int(request.url_vars["server_id"])
    return await _serve(request, datasette, ("server", server_id), (None, None, server_id), hostname_label=False)


def _target(request, ctx):
    """``host:port`` Prometheus should scrape: ``server.public_url``'s, else the request's Host."""
    public = ctx.config.get("server.public_url")
    if public:
        parts = urlsplit(public)
        return parts.netloc, parts.scheme
    return request.headers.get("host") or f"{request.host}", request.scheme


async def targets(request, datasette):
    ctx = hub.context(datasette)
    refused = _refused(request, ctx)
    if refused:
        return refused
    try:
        shards = _int_arg(request, "shards", 1, MAX_SHARDS) or int(ctx.config.get("prometheus.shards") or 1)
    except ValueError as exc:
        return _bad(str(exc))
    address, scheme = _target(request, ctx)
    common = {"__scheme__": scheme}
    if request.args.get("per") == "server":
        # __meta_server_monitor_groups: the server's host groups as ",a,b," (the convention of
        # Consul's __meta_consul_tags), for keep/drop relabeling by group; dropped after relabeling.
        rows = (await datasette.get_database("monitor").execute(
            "SELECT s.id, s.hostname, (SELECT ',' || group_concat(DISTINCT sg.grp) || ','"
            " FROM server_groups sg WHERE sg.server_id = s.id) AS groups FROM servers s ORDER BY s.id")).rows
        groups = [{"targets": [address], "labels": {**common, "__metrics_path__": f"/metrics/servers/{r['id']}",
                                                    "Hostname": r["hostname"], "server_id": str(r["id"]),
                                                    "__meta_server_monitor_groups": r["groups"] or ""}}
                  for r in rows]
    elif request.args.get("per") not in (None, "shard"):
        return _bad("per must be shard or server")
    elif shards == 1:
        groups = [{"targets": [address], "labels": {**common, "__metrics_path__": "/metrics"}}]
    else:
        groups = [{"targets": [address], "labels": {**common, "__metrics_path__": "/metrics", "__param_shard": str(i),
                                                    "__param_of": str(shards), "shard": str(i)}}
                  for i in range(shards)]
    return Response(json.dumps(groups), content_type="application/json", headers={"cache-control": "no-store"})


@hookimpl
def register_routes():
    return [(r"^/metrics$", metrics), (r"^/metrics/servers/(?P<server_id>[0-9]{1,12})$", server_metrics),
            (r"^/metrics/targets$", targets)]
