"""The fleet grid's data and the alert controls, on the session login (JSON errors only):

* ``GET /api/fleet`` — the compact fleet document of ``server_monitor.serving.fleet`` for the
  viewer's scope; gzip when the client accepts it, ``ETag`` and ``304`` on ``If-None-Match``;
* ``POST /api/alerts/<id>/ack`` ``{"note": "..."}`` — admin: acknowledge a firing alert;
* ``POST /api/silences`` ``{"server_id": 3 | null, "rule": "gpu_temperature" | null,
  "minutes": 60, "note": "..."}`` — admin: no notifications for that server and/or rule;
* ``DELETE /api/silences/<id>`` — admin: end a silence.

The writes run the admin canned queries ``admin_ack_alert``, ``admin_silence`` and
``admin_end_silence`` (also usable from Datasette at ``/monitor/<name>``).
"""

import json

from datasette import hookimpl
from datasette.utils.asgi import Response

from monitor_agent import textrule
from server_monitor.serving import fleet, fleet_share, hub
from server_monitor.serving.queries import DATABASE, QUERIES, run

RULES = ("host_offline", "gpu_failure", "collection_stale", "gpu_lost", "gpu_ecc", "gpu_temperature", "gpu_throttle",
         "gpu_pcie_degraded", "disk_full", "host_identity",
         "gpu_memory", "gpu_idle_held")  # the last two: kinds of the rules made on /admin/rules only


def error(status, message, **headers):
    return Response.json({"ok": False, "status": status, "error": message}, status=status,
                         headers=dict({"cache-control": "no-store"}, **headers))


def cache(datasette):
    """The :class:`server_monitor.serving.fleet.FleetCache` of this hub (created on first use)."""
    found = getattr(datasette, "_sm_fleet_cache", None)
    if found is None:
        db_path = hub.context(datasette).config.db_path
        found = datasette._sm_fleet_cache = fleet.FleetCache(db_path, shelf=fleet_share.Shelf(db_path))
    return found


async def fleet_json(request, datasette):
    if request.method != "GET":
        return error(405, "use GET", allow="GET")
    actor = request.actor
    idle = float(hub.context(datasette).config.get("features.idle_max_util") or 5)
    db = datasette.get_database(DATABASE)

    store = cache(datasette)

    async def build(previous, version):
        return await db.execute_fn(lambda conn: store.build(conn, actor, idle, previous, version))

    # ?fresh=1: the dashboard after an admin's change wants it in the answer (no reused document).
    entry = await store.get(fleet.scope_key(actor), build, fresh=request.args.get("fresh") == "1")
    headers = {"etag": entry.etag, "cache-control": "private, no-cache", "vary": "accept-encoding, cookie"}
    match = request.headers.get("if-none-match", "")
    if match and (match.strip() == "*" or entry.etag in [m.strip() for m in match.split(",")]):
        return Response("", status=304, headers=headers)
    body = entry.body
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = entry.gzip
        headers["content-encoding"] = "gzip"
    return Response(body, status=200, headers=headers, content_type="application/json; charset=utf-8")


async def _json_body(request):
    raw = await request.post_body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _admin_refusal(request):
    if request.method != "POST" and request.method != "DELETE":
        return error(405, "use POST", allow="POST")
    if (request.actor or {}).get("role") != "admin":
        return error(403, "only an admin can acknowledge or silence alerts")
    return None


def _note(body):
    """The ``note`` of a JSON body: text of at most 500 characters without control, bidi or
    invisible characters and valid Unicode (a lone surrogate such as ``"\ud800"`` was a 500,
    security review I-7); raises ValueError saying which."""
    note = body.get("note")
    if note is None:
        return ""
    if not isinstance(note, str) or len(note) > 500:
        raise ValueError("note must be text of at most 500 characters")
    unsafe = textrule.first_unsafe(note)  # the agent-text rule (lone surrogates included)
    if unsafe:
        raise ValueError(f"note contains the character {textrule.describe(unsafe)}, which is not allowed")
    return note


async def _write(datasette, name, request, **params):
    values = {"_actor_id": request.actor["id"]}
    values.update(params)
    db = datasette.get_database(DATABASE)
    return await db.execute_write(QUERIES[name]["sql"], values, block=True)


async def ack(request, datasette):
    refusal = _admin_refusal(request)
    if refusal or request.method != "POST":
        return refusal or error(405, "use POST", allow="POST")
    alert_id = int(request.url_vars["alert_id"])
    body = await _json_body(request)
    if body is None:
        return error(400, "send a JSON object, e.g. {\"note\": \"on it\"}")
    try:
        note = _note(body)
    except ValueError as exc:
        return error(400, str(exc))
    result = await _write(datasette, "admin_ack_alert", request, alert_id=alert_id, note=note)
    if not result.rowcount:
        return error(404, f"no firing alert {alert_id}")
    return Response.json({"ok": True, "alert_id": alert_id, "acked_by": request.actor["id"]},
                         headers={"cache-control": "no-store"})


async def silences(request, datasette):
    refusal = _admin_refusal(request)
    if refusal or request.method != "POST":
        return refusal or error(405, "use POST", allow="POST")
    body = await _json_body(request)
    if body is None:
        return error(400, "send a JSON object: {\"server_id\", \"rule\", \"minutes\", \"note\"}")
    server_id, rule, minutes = body.get("server_id"), body.get("rule"), body.get("minutes")
    if server_id is not None and (not isinstance(server_id, int) or isinstance(server_id, bool)):
        return error(400, "server_id must be a server id (integer) or null")
    if rule is not None and rule not in RULES:
        return error(400, f"rule must be one of {', '.join(RULES)} or null")
    if server_id is None and rule is None:
        return error(400, "give server_id, rule or both")
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 43200:
        return error(400, "minutes must be an integer from 1 to 43200 (30 days)")
    try:
        note = _note(body)
    except ValueError as exc:
        return error(400, str(exc))
    if server_id is not None and not [s for s in await run(datasette, "fleet_servers", request.actor)
                                      if s["id"] == server_id]:
        return error(404, f"no server {server_id}")
    result = await _write(datasette, "admin_silence", request, server_id="" if server_id is None else str(server_id),
                          rule=rule or "", minutes=minutes, note=note)
    return Response.json({"ok": True, "silence_id": result.lastrowid}, status=201,
                         headers={"cache-control": "no-store"})


async def end_silence(request, datasette):
    refusal = _admin_refusal(request)
    if refusal or request.method != "DELETE":
        return refusal or error(405, "use DELETE", allow="DELETE")
    silence_id = int(request.url_vars["silence_id"])
    result = await _write(datasette, "admin_end_silence", request, silence_id=silence_id)
    if not result.rowcount:
        return error(404, f"no silence {silence_id} in force")
    return Response.json({"ok": True, "ended": silence_id}, headers={"cache-control": "no-store"})


@hookimpl
def register_routes():
    return [
        (r"^/api/fleet$", fleet_json),
        (r"^/api/alerts/(?P<alert_id>\d{1,18})/ack$", ack),
        (r"^/api/silences$", silences),
        (r"^/api/silences/(?P<silence_id>\d{1,18})$", end_silence),
    ]
