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
each paying for it. A small fleet's exposition is always fresh.
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
from server_monitor.serving.metrics import CONTENT_TYPE, build_gzip, builder_init

METRICS_REFUSED = "metrics need the prometheus token (Authorization: Bearer ...) or an admin session"
# A built exposition is served again for this long (s): shorter than any sane scrape interval.
REUSE_S = 5.0
# ... when its build cost at least this much (s).
REUSE_MIN_COST_S = 0.05
MAX_SHARDS = 1024



class _Cache:
    """Per Datasette instance: scope key -> (reusable until (monotonic), gzip bytes) and the
    per-scope locks that make concurrent scrapes of one scope wait for one build."""

    def __init__(self):
        self.built, self.locks = {}, {}


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


async def _body(datasette, key, scope, hostname_label):
    """The gzip bytes of the exposition for one scope (``scope``: the positional arguments of
    ``build_gzip`` after the database), reused for :data:`REUSE_S` seconds when it was costly to build."""
    global _pool
    cache = _cache(datasette)
    async with cache.locks.setdefault(key, asyncio.Lock()):
        cached = cache.built.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        started = time.monotonic()
        db_path = datasette.get_database("monitor").path
        loop = asyncio.get_running_loop()
        try:
            packed, _ = await loop.run_in_executor(_builder(), build_gzip, db_path, *scope, hostname_label)
        except concurrent.futures.process.BrokenProcessPool:  # the builder died (OOM, killed): a new one
            with _pool_lock:
                _pool = None
            packed, _ = await loop.run_in_executor(_builder(), build_gzip, db_path, *scope, hostname_label)
        cost = time.monotonic() - started
        if cost >= REUSE_MIN_COST_S:
            cache.built[key] = (time.monotonic() + REUSE_S, packed)
        else:
            cache.built.pop(key, None)
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
