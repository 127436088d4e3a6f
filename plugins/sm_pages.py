"""The hub's own HTML pages (dashboard at ``/``), rendered from ``templates/``.

Pages carry no data: static JavaScript fetches the canned-query JSON and builds the DOM
with ``textContent`` only. Each page sends a Content-Security-Policy without
``'unsafe-inline'`` or ``'unsafe-eval'``.
"""

from urllib.parse import unquote

from datasette import hookimpl
from datasette.utils.asgi import Response

import time

from server_monitor.core.config import idle_hours
from server_monitor.jobs import notify
from server_monitor.serving import hub
from server_monitor.serving.queries import scope_params
from server_monitor.serving.web import page


def idle_settings(config, now=None):
    """What the dashboard's Idle holders panel says about its rule (data attributes of ``#idle``):
    ``hours`` (:func:`~server_monitor.core.config.idle_hours`, the nudges' threshold too),
    ``min_mib``, ``max_util`` (``features.idle_*``), ``nudges`` (bool), ``quiet`` (``[start, end]``
    hub local hours or None) and ``utc_offset`` (s east of UTC of the hub's local time now), so
    the page can say "nudges held for quiet hours until 07:00 (hub time)" while it stays open."""
    ncfg = notify.settings(config)
    quiet = ncfg.get("quiet_hours")
    quiet = [int(quiet[0]), int(quiet[1])] if quiet and len(quiet) == 2 and quiet[0] != quiet[1] else None
    return {"hours": idle_hours(config), "min_mib": config.get("features.idle_min_mib"),
            "max_util": config.get("features.idle_max_util"), "nudges": bool(ncfg.get("nudges")), "quiet": quiet,
            "utc_offset": time.localtime(now).tm_gmtoff}


def holder_zones(ctx, actor):
    """``{holder (lower case): IANA time zone}`` of the contacts with one (``auth.db``), so the
    Idle holders panel says "held until 07:00 Europe/Zurich" on each holder's own clock; empty
    for a viewer scoped to some servers or without holder names (the map names holders of every
    server)."""
    scope = scope_params(actor)
    return ctx.notify_store.zones() if scope["_scope_all"] and scope["_scope_processes"] else {}


def holder_nudge_failures(ctx, actor):
    """``{holder (lower case): epoch s}`` of the holders whose last nudge or digest failed on
    every contact target (``NotifyStore.failed_contacts``), so the Idle holders panel says
    "nudge failed" rather than "–"; empty for the viewers :func:`holder_zones` gives nothing."""
    scope = scope_params(actor)
    return ctx.notify_store.failed_contacts() if scope["_scope_all"] and scope["_scope_processes"] else {}


async def dashboard(request, datasette):
    ctx = hub.context(datasette)
    return await page(datasette, request, "dashboard.html", idle=idle_settings(ctx.config),
                      idle_zones=holder_zones(ctx, request.actor),
                      idle_failed=holder_nudge_failures(ctx, request.actor))


async def history(request, datasette):
    return await page(datasette, request, "history.html", server_id=int(request.url_vars["server_id"]))


async def free(request, datasette):
    return await page(datasette, request, "free.html")


async def accounting(request, datasette):
    return await page(datasette, request, "accounting.html")


# A holder name as agents report it: free text of at most 256 characters (contract: processes[].user).
USER_NAME_MAX = 256


async def user(request, datasette):
    """``/users/<name>`` (name percent-encoded, any character) or ``/users?name=<name>``.

    The second form serves names a path cannot carry (``.`` and ``..``, which browsers resolve as
    path segments, percent-encoded or not). 400 for an empty or over-long name. The name is
    handed to the template only, which escapes it; the page's script reads it from a data
    attribute and queries user_gpus / user_gpu_hours_daily / user_jobs with it.
    """
    raw = request.url_vars.get("name")
    try:
        name = unquote(raw, errors="strict") if raw is not None else request.args.get("name", "")
    except UnicodeDecodeError:
        return Response.text("400: the user name is not UTF-8 once percent-decoded", status=400)
    if not name or len(name) > USER_NAME_MAX:
        return Response.text("400: a user name of 1-256 characters is required", status=400)
    return await page(datasette, request, "user.html", user_name=name)


@hookimpl
def register_routes():
    return [
        (r"^/$", dashboard),
        (r"^/free$", free),
        (r"^/accounting$", accounting),
        (r"^/users$", user),
        (r"^/users/(?P<name>[^/]+)$", user),
        (r"^/servers/(?P<server_id>\d{1,18})/history$", history),
    ]
