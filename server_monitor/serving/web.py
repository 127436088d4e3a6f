"""Shared helpers for the hub's own HTML pages (plugins ``sm_pages`` and ``sm_auth``)."""

from datasette.utils.asgi import Response

from .. import __version__

# No 'unsafe-inline', no 'unsafe-eval': page code lives in static files and builds the
# DOM with textContent, so agent-supplied strings can never run.
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)


async def page(datasette, request, template, status=200, headers=None, **context):
    """Render ``template`` (with ``actor`` and ``version`` in its context) as HTML.

    Returns a Datasette ``Response`` carrying :data:`STRICT_CSP` plus ``headers``.
    """
    context.update(actor=request.actor, version=__version__)
    html = await datasette.render_template(template, context, request=request)
    all_headers = {"content-security-policy": STRICT_CSP}
    all_headers.update(headers or {})
    return Response.html(html, status=status, headers=all_headers)
