"""Shared helpers for the hub's own HTML pages (plugins ``sm_pages``, ``sm_auth``, ``sm_admin``
and ``sm_rules``): the strict CSP page renderer, the admin-only guard and the form reader."""

from urllib.parse import parse_qs

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


def admin_denied(request, post=True):
    """None when ``request`` is an admin's (and, with ``post``, a POST); else the answer to give:
    403 (an HTML page) to anyone but an admin, 405 to an admin's GET of a write route."""
    if (request.actor or {}).get("role") != "admin":
        return Response.html("<!DOCTYPE html><title>Forbidden</title><link rel=stylesheet href=/static/dashboard.css>"
                             "<main><h1>Forbidden</h1><p>This page is for admins. <a href=/>Back to the dashboard</a>"
                             "</p></main>", status=403)
    if post and request.method != "POST":
        return Response.text("Method not allowed: use the forms on /admin", status=405, headers={"allow": "POST"})
    return None


class Form(dict):
    """Form fields with repeated names kept (checkbox lists): ``{name: [value, ...]}``."""

    def getlist(self, key):
        """Every value of ``key`` (``[]`` when absent)."""
        return self.get(key, [])

    def first(self, key, default=None):
        """The first value of ``key``, or ``default``."""
        values = self.get(key)
        return values[0] if values else default


async def read_form(request):
    """The request's ``application/x-www-form-urlencoded`` body as a :class:`Form` (blank values kept;
    bytes that are not UTF-8 become U+FFFD)."""
    body = (await request.post_body()).decode("utf-8", "replace")
    return Form(parse_qs(body, keep_blank_values=True))
