"""Shared helpers for the hub's own HTML pages (plugins ``sm_pages``, ``sm_auth``, ``sm_admin``
and ``sm_rules``): the strict CSP page renderer, the admin-only guard and the form reader."""

import json
from urllib.parse import parse_qs, quote, urlencode

from datasette.utils.asgi import Response

from .. import __version__
from .queries import DATABASE

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


def user_path(name):
    """The path of ``name``'s per-user page (``plugins/sm_pages.py``): ``/users/<name>`` with the
    name percent-encoded (every character but unreserved ones), or ``/users?name=`` for ``.`` and
    ``..``, which browsers resolve as path segments. The same rule as ``userHref`` in
    ``static/common.js`` (the pages' links); used for the links in nudges and digests."""
    name = str(name)
    return "/users?" + urlencode({"name": name}) if name in (".", "..") else "/users/" + quote(name, safe="")


def user_url(name, base=None):
    """:func:`user_path` of ``name``, absolute under ``base`` (``alerts.dashboard_url`` or
    ``server.public_url``, with or without a trailing slash) when given, else the path alone."""
    return (str(base).rstrip("/") if base else "") + user_path(name)


# Query arguments that open a form or show an outcome once (``/admin``: a user's edit form, a
# target's or contact's edit form, a "send test" result, a bulk group change's outcome): paging
# links leave them out.
ONE_SHOT_ARGS = ("edit", "nedit", "cedit", "ntest", "nt", "gdone", "gname", "gn", "gof")


def pager(args, path, key, number, total, size, anchor=""):
    """Paging of one server-rendered list (``/admin``'s users, servers, GPUs, tokens, contacts):
    ``{"first", "last", "total", "prev", "next"}`` (1-based rows; ``prev``/``next``: URLs of
    ``path`` that keep the other lists' search and page from ``args`` (the request's query
    arguments; ``key`` and :data:`ONE_SHOT_ARGS` dropped), or None)."""
    def url(n):
        kept = {k: args.get(k) for k in args if k != key and k not in ONE_SHOT_ARGS}
        if n > 1:
            kept[key] = str(n)
        return path + ("?" + urlencode(kept) if kept else "") + anchor

    first = (number - 1) * size + 1
    return {"first": min(first, total), "last": min(number * size, total), "total": total,
            "prev": url(number - 1) if number > 1 else None, "next": url(number + 1) if number * size < total else None}


def page_number(args, key):
    """The 1-based page number in query argument ``key`` of ``args`` (1 when absent or not a number; at most 10**6)."""
    value = args.get(key) or "1"
    return max(1, min(10 ** 6, int(value))) if value.isdigit() else 1


# Servers named in a scope's one-line summary ("12 servers: a, b, c …"): /admin's user and
# invite lists and /account.
SCOPE_NAMES = 3


async def server_names(datasette, ids):
    """``{server id: shown name}`` for ``ids`` (one query)."""
    if not ids:
        return {}
    result = await datasette.get_database(DATABASE).execute(
        "SELECT id, coalesce(display_name, hostname) FROM servers WHERE id IN (SELECT value FROM json_each(?))",
        [json.dumps(sorted(set(ids)))])
    return {row[0]: row[1] for row in result.rows}


def scope_summary(servers, names, groups=()):
    """One line for a stored scope: ``all servers``, ``3 servers: a, b, c`` (at most
    :data:`SCOPE_NAMES` names, then ``…``), with ``groups …`` in front when the scope names host
    groups (``groups rack-1, team-a + 2 servers: a, b``)."""
    if servers is None:
        return "all servers"
    groups = list(groups or ())
    head = ""
    if groups:
        more = " …" if len(groups) > SCOPE_NAMES else ""
        head = f"group{'s' if len(groups) != 1 else ''} {', '.join(groups[:SCOPE_NAMES])}{more}"
        if not servers:
            return head
        head += " + "
    if not servers:
        return "no server"
    shown = [names.get(i, f"#{i}") for i in servers[:SCOPE_NAMES]]
    more = " …" if len(servers) > SCOPE_NAMES else ""
    return f"{head}{len(servers)} server{'s' if len(servers) != 1 else ''}: {', '.join(shown)}{more}"
