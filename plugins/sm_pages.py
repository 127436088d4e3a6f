"""The hub's own HTML pages (dashboard at ``/``), rendered from ``templates/``.

Pages carry no data: static JavaScript fetches the canned-query JSON and builds the DOM
with ``textContent`` only. Each page sends a Content-Security-Policy without
``'unsafe-inline'`` or ``'unsafe-eval'``.
"""

from datasette import hookimpl

from server_monitor.serving.web import page


async def dashboard(request, datasette):
    return await page(datasette, request, "dashboard.html")


async def history(request, datasette):
    return await page(datasette, request, "history.html", server_id=int(request.url_vars["server_id"]))


async def free(request, datasette):
    return await page(datasette, request, "free.html")


async def accounting(request, datasette):
    return await page(datasette, request, "accounting.html")


@hookimpl
def register_routes():
    return [
        (r"^/$", dashboard),
        (r"^/free$", free),
        (r"^/accounting$", accounting),
        (r"^/servers/(?P<server_id>\d{1,18})/history$", history),
    ]
