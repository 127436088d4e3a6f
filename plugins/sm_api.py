"""The original product's JSON endpoints, on the session login (JSON errors only):

* ``GET /api/servers`` — every server in the viewer's scope with its GPUs (each with its
  processes) and disks; ``?day_start=`` (epoch s of the viewer's local midnight) sets the
  start of "today" for the GPUs' throttle figures (default: 00:00 UTC);
* ``GET /api/servers/<id>`` — one of them;
* ``GET /api/servers/<id>/history?hours=24`` — host and per-GPU history (the
  ``server_history`` / ``gpu_history`` canned queries: roll-up tier by range, ≤ 1000 rows);
* ``DELETE /api/servers/<id>`` — admin only: the server and all its data.

Anything else under ``/api/`` answers a JSON 404. ``POST /api/report`` is ingest, mounted
by ``sm_gate``.
"""

import json

from datasette import hookimpl
from datasette.utils.asgi import Response

from server_monitor.serving import hub
from server_monitor.serving.queries import DATABASE, run
from server_monitor.storage.store import delete_server

def error(status, message, **headers):
    return Response.json({"ok": False, "status": status, "error": message}, status=status,
                         headers=dict({"cache-control": "no-store"}, **headers))


def ok(body, status=200):
    return Response(json.dumps(body, default=str), status=status, content_type="application/json; charset=utf-8",
                    headers={"cache-control": "no-store"})


def day_start_arg(request):
    """``?day_start=`` (epoch s of the viewer's local midnight, for the GPUs' "today" throttle
    figures) as a string for the gpus query; "" when absent. Raises ValueError when not an integer."""
    value = request.args.get("day_start", "")
    if value == "":
        return ""
    return str(int(value))


async def fleet(datasette, actor, server_id=None, day_start=""):
    servers = await run(datasette, "servers", actor)
    if server_id is not None:
        servers = [s for s in servers if s["server_id"] == server_id]
    gpus = await run(datasette, "gpus", actor, day_start=day_start)
    procs = await run(datasette, "processes", actor)
    disks = await run(datasette, "disks", actor)
    by_gpu, by_server_gpu, by_server_disk = {}, {}, {}
    for p in procs:
        by_gpu.setdefault(p["gpu_id"], []).append(p)
    for g in gpus:
        g["processes"] = by_gpu.get(g["gpu_id"], [])
        by_server_gpu.setdefault(g["server_id"], []).append(g)
    for d in disks:
        by_server_disk.setdefault(d["server_id"], []).append(d)
    for s in servers:
        s["gpus"] = by_server_gpu.get(s["server_id"], [])
        s["disks"] = by_server_disk.get(s["server_id"], [])
    return servers


async def servers_list(request, datasette):
    if request.method != "GET":
        return error(405, "use GET", allow="GET")
    try:
        day_start = day_start_arg(request)
    except ValueError:
        return error(400, "day_start must be an integer (epoch seconds)")
    return ok(await fleet(datasette, request.actor, day_start=day_start))


async def server_one(request, datasette):
    server_id = int(request.url_vars["server_id"])
    if request.method == "GET":
        try:
            day_start = day_start_arg(request)
        except ValueError:
            return error(400, "day_start must be an integer (epoch seconds)")
        found = await fleet(datasette, request.actor, server_id, day_start)
        return ok(found[0]) if found else error(404, f"no server {server_id}")
    if request.method != "DELETE":
        return error(405, "use GET or DELETE", allow="GET, DELETE")
    if (request.actor or {}).get("role") != "admin":
        return error(403, "only an admin can delete a server")

    deleted = await datasette.get_database(DATABASE).execute_write_fn(
        lambda conn: delete_server(conn, server_id), block=True)
    if not deleted:
        return error(404, f"no server {server_id}")
    hub.context(datasette).accounts.forget_server(server_id)
    return ok({"ok": True, "deleted": server_id})


async def server_history(request, datasette):
    if request.method != "GET":
        return error(405, "use GET", allow="GET")
    server_id = int(request.url_vars["server_id"])
    hours = request.args.get("hours", "24")
    try:
        hours_value = float(hours)
    except ValueError:
        return error(400, "hours must be a number")
    if not 0 < hours_value <= 17520:
        return error(400, "hours must be between 0 and 17520")
    if not await fleet(datasette, request.actor, server_id):
        return error(404, f"no server {server_id}")
    host = await run(datasette, "server_history", request.actor, server_id=server_id, hours=hours_value)
    gpus = await run(datasette, "gpu_history", request.actor, server_id=server_id, hours=hours_value)
    return ok({"server_id": server_id, "hours": hours_value, "host": host, "gpus": gpus})


async def not_found(request, datasette):
    return error(404, f"no API endpoint {request.path}")


@hookimpl
def register_routes():
    return [
        (r"^/api/servers$", servers_list),
        (r"^/api/servers/(?P<server_id>\d{1,18})$", server_one),
        (r"^/api/servers/(?P<server_id>\d{1,18})/history$", server_history),
        # /api/fleet, /api/alerts/<id>/ack and /api/silences are served by plugins/sm_fleet.py.
        (r"^/api/(?!report$|fleet$|alerts/\d{1,18}/ack$|silences(/\d{1,18})?$).*$", not_found),
    ]
