"""The hub's own HTML pages (dashboard at ``/``), rendered from ``templates/``.

Pages carry no data: static JavaScript fetches the canned-query JSON and builds the DOM
with ``textContent`` only. Each page sends a Content-Security-Policy without
``'unsafe-inline'`` or ``'unsafe-eval'``.
"""

from urllib.parse import unquote

from datasette import hookimpl
from datasette.utils.asgi import Response

from server_monitor.serving.web import page


async def dashboard(request, datasette):
    return await page(datasette, request, "dashboard.html")


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
