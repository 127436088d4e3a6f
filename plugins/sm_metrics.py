"""``GET /metrics``: Prometheus text format of the fleet (see ``server_monitor/serving/metrics.py``).

Allowed with ``Authorization: Bearer <prometheus.token>`` (config.yaml; compared in
constant time) or an admin session. Anything else: 401/403 JSON.
"""

import hmac

from datasette import hookimpl
from datasette.utils.asgi import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server_monitor.serving import hub
from server_monitor.serving.metrics import DISKS_SQL, GPUS_SQL, MIG_SQL, SERVERS_SQL, exposition


METRICS_REFUSED = "metrics need the prometheus token (Authorization: Bearer ...) or an admin session"


def _token_ok(request, configured):
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return bool(configured) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), str(configured).encode("utf-8"))


async def metrics(request, datasette):
    ctx = hub.context(datasette)
    if not (_token_ok(request, ctx.config.get("prometheus.token")) or (request.actor or {}).get("role") == "admin"):
        status = 403 if request.actor else 401
        return Response.json({"ok": False, "status": status, "error": METRICS_REFUSED},
                             status=status, headers={"www-authenticate": 'Bearer realm="server-monitor"'})
    db = datasette.get_database("monitor")
    rows = []
    for sql in (SERVERS_SQL, GPUS_SQL, DISKS_SQL, MIG_SQL):
        rows.append([dict(r) for r in (await db.execute(sql)).rows])
    return Response(exposition(*rows), content_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})


@hookimpl
def register_routes():
    return [(r"^/metrics$", metrics)]
