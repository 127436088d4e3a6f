"""The hub's front door (one ASGI wrapper around Datasette).

1. ``/api/report`` goes to the WSGI ingest app (``ingest.py``) on the same port, run in
   one worker thread (``server_monitor.serving.wsgi_bridge``) so writes never block the event loop;
   ``/-/health`` answers here too, without a session.
2. Every other request is private: a user's read-only API token (``Authorization: Bearer smu_``),
   the trusted sign-on proxy's user header (``sso.*``, only from ``sso.proxies``) or the session
   cookie is resolved to an actor here (:func:`resolve_actor`), and
   anonymous requests for anything but login/register, static assets and token paths
   (``/metrics``) get a redirect to ``/login`` (HTML) or a 401 JSON error (API and
   ``.json`` paths). Datasette's ``/-/`` introspection pages are for admins only.
3. Every response gets security headers; pages that set their own stricter
   Content-Security-Policy keep it.
"""

import base64
import hashlib
import json
import os
from html import escape
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, quote, urlsplit

import logging
import threading
import time

from datasette import hookimpl
from datasette.utils.asgi import Response
from datasette.views.base import DatasetteError

import ingest
from server_monitor.auth import api_tokens, sso
from server_monitor.serving import analyst, fleet_share, hub
from server_monitor.serving.queries import ADMIN_QUERIES, DATABASE, canned_param_problem
from server_monitor.storage import dbguard
from server_monitor.serving.web import STRICT_CSP
from server_monitor.serving.wsgi_bridge import IngestBridge
from server_monitor.serving.wsgi_bridge import header as _header

INGEST_PATH = "/api/report"
HEALTH_PATH = "/-/health"
PUBLIC_PATHS = {"/login", "/register", "/-/register", "/favicon.ico"}
# Paths that check a bearer token themselves (Prometheus scrapes /metrics, its shards and servers
# and its service discovery /metrics/targets without a session; plugins/sm_metrics.py).


def is_token_path(path):
    """True for ``/metrics`` and everything under ``/metrics/``."""
    return path == "/metrics" or path.startswith("/metrics/")


log = logging.getLogger("server_monitor.auth")

# What an API token (issue 26 item 4) never reaches, whatever its owner's role: admin pages, the
# account page, Datasette's /-/ pages, login/logout/register and the admin (write) canned queries
# (also refused by name in plugins/sm_auth.py permission_allowed, however the path spells the database).
TOKEN_REFUSED_PREFIXES = ("/admin", "/account", "/-/", "/logout", "/login", "/register", "/monitor/admin_",
                          "/_internal")


def token_refusal(scope):
    """Why a request made with an API token is refused (403), or None: tokens only read."""
    if scope["method"] not in ("GET", "HEAD"):
        return "API tokens are read-only: writes need a browser session"
    if scope.get("path", "").startswith(TOKEN_REFUSED_PREFIXES):
        return "API tokens do not open admin, account or /-/ pages"
    return None


_sso_warned = []


def resolve_actor(scope, datasette, ctx, https):
    """``(actor, session_id, csrf_id, refusal)`` for a request (issue 26 items 4 and 5).

    In this order: an ``Authorization: Bearer smu_...`` API token (cookies are then ignored;
    refusal ``(status, message)`` for a dead token, a write, an admin page or a spent rate);
    the user named by the trusted sign-on proxy (``sso.*``: only from a peer in ``sso.proxies``);
    the session cookie. ``csrf_id`` is what the CSRF token is bound to: the session id, or
    ``"sso:" + user`` for a proxy login (no session: the proxy vouches for every request).
    """
    authorization = _header(scope, b"authorization")
    bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if bearer.startswith(api_tokens.PREFIX):
        client = (scope.get("client") or ("unknown",))[0]
        forwarded = ctx.config.get("auth.trusted_proxy_header")
        if forwarded and hub.from_trusted_proxy(scope, ctx.config):  # the address the proxy saw (docs/security.md L4)
            client = _header(scope, forwarded.lower().encode("latin-1")).split(",")[-1].strip() or client
        actor, reason = ctx.actor_for_token(bearer, client[:64])
        if actor is None:
            return None, None, None, (401, f"API token {reason}")
        refusal = token_refusal(scope)
        if refusal:
            return None, None, None, (403, refusal)
        now = time.monotonic()
        # Per token, then per owner (all its tokens together), so more tokens are not more requests.
        wait = ctx.token_budget.take(actor["token_id"], now) or \
            ctx.token_owner_budget.take((actor.get("source"), actor["id"].lower()), now)
        if wait:
            return None, None, None, (429, f"too many requests with this API token; retry in {wait} s", wait)
        return actor, None, None, None
    if ctx.config.get("sso.enabled"):
        try:
            actor = ctx.actor_for_sso(scope)
        except sso.SSOError as exc:
            return None, None, None, (403, str(exc))
        if actor is not None:
            return actor, None, "sso:" + actor["id"], None
        if sso.sends_identity(scope, ctx.config) and not _sso_warned:
            _sso_warned.append(1)  # once per process: a client going around the proxy, or a missing sso.proxies entry
            log.warning("%s sent %s but is not in sso.proxies; ignored (docs/operations.md, Single sign-on)",
                        (scope.get("client") or ("?",))[0], ctx.config.get("sso.user_header"))
    session_id = session_id_from_scope(scope, datasette, hub.session_cookie_name(https))
    actor = ctx.actor_for_session(session_id) if session_id else None
    return actor, (session_id if actor else None), (session_id if actor else None), None


METRICS_401 = "metrics need the prometheus token (Authorization: Bearer ...) or an admin session"
# Datasette's introspection pages (/-/metadata, /-/plugins, /-/actor, ...) are admin-only;
# these /-/ paths are for everyone logged in (or public, by the rules above).
DASH_PATHS_FOR_ALL = ("/-/logout", "/-/login", "/-/register", "/-/static/", "/-/static-plugins/")
PUBLIC_PREFIXES = ("/static/", "/-/static/", "/-/static-plugins/")
def _script_hash(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


# Datasette's own pages (tables, queries, the SQL editor, /-/ pages) get a script-src too (see docs/security.md I1):
# scripts only from this origin; the one inline script left in Datasette 0.65's templates
# (table.html's "DATASETTE_ALLOW_FACET = true|false;") is allowed by its two hashes. The other
# inline scripts were moved to static files (templates/_close_open_menus.html,
# templates/_codemirror_foot.html). Inline styles stay allowed: Datasette's templates use them.
BASELINE_CSP = (
    "default-src 'self'; script-src 'self' " + _script_hash("DATASETTE_ALLOW_FACET = true;") + " "
    + _script_hash("DATASETTE_ALLOW_FACET = false;") + "; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def wants_json(scope):
    """True for API-style requests, which get JSON errors instead of redirects."""
    path = scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    if (path.startswith("/api/") or is_token_path(path) or path.endswith((".json", ".csv"))
            or "_format=" in query):
        return True
    accept = _header(scope, b"accept")
    return "application/json" in accept and "text/html" not in accept


def session_id_from_scope(scope, datasette, name=hub.SESSION_COOKIE):
    """The raw session id from the signed session cookie ``name``, or None."""
    raw = _header(scope, b"cookie")
    if name not in raw:
        return None
    cookie = SimpleCookie()
    try:
        cookie.load(raw)
    except Exception:  # malformed cookie header: treat as anonymous
        return None
    morsel = cookie.get(name)
    if morsel is None:
        return None
    try:
        data = datasette.unsign(morsel.value, hub.SESSION_NAMESPACE)
    except Exception:  # bad signature
        return None
    return data.get("sid") if isinstance(data, dict) else None


def _strip_cookie(scope, name):
    """Drop cookie ``name`` from the request (Datasette's own ``ds_actor`` is not honoured)."""
    headers = []
    for key, value in scope.get("headers") or ():
        if key == b"cookie" and name.encode() in value:
            parts = [p for p in value.split(b";") if not p.strip().startswith(name.encode() + b"=")]
            value = b";".join(parts).strip()
            if not value:
                continue
        headers.append((key, value))
    return dict(scope, headers=headers)


async def send_json(send, status, body, extra=()):
    payload = json.dumps(body).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json; charset=utf-8"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store")] + list(extra) + SECURITY_HEADERS,
    })
    await send({"type": "http.response.body", "body": payload})


async def send_text(send, status, text):
    payload = text.encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store")] + SECURITY_HEADERS,
    })
    await send({"type": "http.response.body", "body": payload})


# Paths that never read monitor.db: they keep working while the file is replaced (see docs/reliability.md H2), so a
# user can still log in or out and the pages' banner can ask /-/health what happened.
NO_METRICS_PATHS = {"/login", "/logout", "/-/logout", "/-/login", "/register", "/-/register", "/account",
                    "/favicon.ico"}


def database_refusal(path, ctx):
    """The dbguard problem text when ``path`` would serve data from a monitor.db that was deleted
    or replaced under the running hub (see docs/reliability.md H2), else None. Static files and the account
    pages (auth.db only) are always served."""
    if path in NO_METRICS_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    return dbguard.check(ctx.config.db_path)


async def send_database_replaced(send, scope, problem):
    """503 with ``Retry-After`` for a data page while monitor.db is replaced: JSON
    ``{"ok": false, "status": 503, "error": ..., "database_replaced": true}`` for API-style
    requests, else a short HTML page saying the same (see docs/reliability.md H2)."""
    extra = [(b"retry-after", b"30")]
    if wants_json(scope):
        return await send_json(send, 503, {"ok": False, "status": 503, "error": problem, "database_replaced": True},
                               extra)
    payload = ("<!DOCTYPE html><html lang=en><meta charset=utf-8><title>Database replaced · Server Monitor</title>"
               "<link rel=stylesheet href=/static/dashboard.css><main><h1>The metrics database was replaced or deleted"
               "</h1><p role=alert>" + escape(problem) + "</p><p>Restart the hub (after restoring the file if it"
               " was a mistake). Until then no page shows data, so nothing here is stale.</p></main>").encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store"), (b"content-security-policy", STRICT_CSP.encode())]
                   + extra + SECURITY_HEADERS,
    })
    await send({"type": "http.response.body", "body": payload})


async def redirect(send, location):
    await send({
        "type": "http.response.start",
        "status": 302,
        "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                    (b"cache-control", b"no-store")] + SECURITY_HEADERS,
    })
    await send({"type": "http.response.body", "body": b""})


async def health(datasette, send):
    """``GET /-/health``: 200 ``{"ok": true}`` when the metrics database answers a query and
    every background thread (maintenance, alerts) is alive; else 503 with ``error`` (the
    exception's class), ``dead_threads`` (names) or ``database_replaced: true`` (monitor.db was
    deleted or replaced under the running hub; ``error`` says what to do). A healthy answer also has
    ``notifications``: ``{"failures": N, "last_failure_at", "last_failure_target"}``, delivery
    failures of the last hour (None when auth.db cannot be read). No data, no secrets. ``run_id`` echoes
    ``$SERVER_MONITOR_RUN_ID`` (a random id ``scripts/run.sh`` gives its hub, so that it can tell
    its own hub from another one answering on the port)."""
    run_id = {"run_id": os.environ["SERVER_MONITOR_RUN_ID"]} if os.environ.get("SERVER_MONITOR_RUN_ID") else {}
    replaced = dbguard.check(hub.context(datasette).config.db_path)
    if replaced:  # see docs/reliability.md H2: monitor.db deleted or replaced under the running hub
        return await send_json(send, 503, {"ok": False, "error": replaced, "database_replaced": True,
                                           **run_id})
    try:
        await datasette.get_database("monitor").execute("SELECT count(*) FROM sqlite_master")
    except Exception as exc:  # any failure to read is "unhealthy", whatever its kind
        return await send_json(send, 503, {"ok": False, "error": type(exc).__name__, **run_id})
    dead = hub.context(datasette).background_problems()
    if dead:
        return await send_json(send, 503, {"ok": False, "error": "background thread stopped",
                                           "dead_threads": dead, **run_id})
    # Delivery failures of the last hour (count, newest target and time; the error texts are on
    # /admin): they do not make the hub unhealthy, but a monitor of the monitor sees them.
    try:
        failures = hub.context(datasette).notify_store.failure_summary(time.time() - 3600)
    except Exception:  # noqa: BLE001 - auth.db unreadable: the health answer goes on without it
        failures = None
    return await send_json(send, 200, {"ok": True, "notifications": failures, **run_id})


SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


def _origin_of(url):
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


def cross_origin_refusal(scope, ctx, https):
    """Why a state-changing request must be refused as cross-origin, or None (see docs/security.md M1).

    ``Sec-Fetch-Site`` (sent by browsers on https and localhost) must be ``same-origin`` or
    ``none``: ``same-site`` is the cookie-tossing case (another port or a sibling subdomain).
    Without it, an ``Origin`` header must be the hub's own origin (the request's scheme and
    ``Host``, or ``server.public_url``). Requests with neither header (scripts, curl) pass:
    the session-bound CSRF token still protects them.
    """
    site = _header(scope, b"sec-fetch-site").strip().lower()
    if site:
        return None if site in ("same-origin", "none") else f"cross-site request (Sec-Fetch-Site: {site})"
    origin = _header(scope, b"origin").strip().lower().rstrip("/")
    if not origin:
        return None
    allowed = {("https://" if https else "http://") + _header(scope, b"host").strip().lower()}
    public = _origin_of(ctx.config.get("server.public_url"))
    if public:
        allowed.add(public)
    return None if origin in allowed else "request from another origin"


def bind_csrf_to_session(scope, datasette, session_id):
    """Replace any ``ds_csrftoken`` cookie the browser sent by the session-bound token (see docs/security.md M1).

    Datasette's CSRF check (asgi-csrf, inside the gate) then renders and expects that token,
    so a token planted by a same-site page (cookie tossing) or taken from an anonymous page is
    refused for any request that carries a session.
    """
    token = hub.csrf_token_for_session(datasette, session_id)
    parts = []
    headers = []
    for key, value in scope.get("headers") or ():
        if key == b"cookie":
            parts += [p.strip() for p in value.split(b";")
                      if p.strip() and not p.strip().startswith(hub.CSRF_COOKIE.encode() + b"=")]
        else:
            headers.append((key, value))
    parts.append(f"{hub.CSRF_COOKIE}={token}".encode("latin-1"))
    headers.append((b"cookie", b"; ".join(parts)))
    return dict(scope, headers=headers)


def is_public(path):
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


_ingest_lock = threading.Lock()


def ingest_app(ctx):
    """The hub's ingest WSGI app (``ingest.make_application``), built once per hub context.

    Building it migrates ``monitor.db`` and starts watching the file's identity (see docs/reliability.md H2), so the
    ``startup`` hook below builds it before the first request.
    """
    if ctx.ingest is None:
        with _ingest_lock:
            if ctx.ingest is None:
                ctx.ingest = ingest.make_application(ctx.config)
    return ctx.ingest


@hookimpl
def startup(datasette):
    ingest_app(hub.context(datasette))


@hookimpl
def asgi_wrapper(datasette):
    bridge = IngestBridge(SECURITY_HEADERS)

    def wrap(app):
        async def gate(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            ctx = hub.context(datasette)
            path = scope.get("path", "")
            if path == INGEST_PATH or path.startswith(INGEST_PATH + "/"):
                # Ingest answers the near misses itself (a clear 404 naming the right path).
                return await bridge(ingest_app(ctx), scope, receive, send)
            if path == HEALTH_PATH:
                return await health(datasette, send)
            scope = _strip_cookie(scope, "ds_actor")
            https = hub.scope_is_https(scope, ctx.config)
            actor, session_id, csrf_id, refused = resolve_actor(scope, datasette, ctx, https)
            if refused:
                extra = [(b"www-authenticate", b'Bearer realm="server-monitor", error="invalid_token"')] \
                    if refused[0] == 401 else [(b"retry-after", str(refused[2]).encode())] if refused[0] == 429 else []
                return await send_json(send, refused[0], {"ok": False, "status": refused[0], "error": refused[1]},
                                       extra)
            scope = dict(scope, **{"sm.actor": actor, "sm.session_id": session_id})
            if scope["method"] not in SAFE_METHODS:
                refusal = cross_origin_refusal(scope, ctx, https)
                if refusal:
                    return await send_json(send, 403, {"ok": False, "status": 403,
                                                       "error": f"forbidden: {refusal}"})
                kind = _header(scope, b"content-type").split(";")[0].strip().lower()
                if kind == "multipart/form-data":
                    # No hub form uses it; asgi-csrf's multipart parser fails on current
                    # python-multipart (500 before, see docs/security.md I2).
                    return await send_json(send, 415, {"ok": False, "status": 415, "error":
                                                       "forms are posted as application/x-www-form-urlencoded"})
            if csrf_id is not None:
                scope = bind_csrf_to_session(scope, datasette, csrf_id)
            if path.startswith("/api/") and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                # API writes take JSON or no body: a cross-site form cannot send either without
                # a CORS preflight, which this hub never grants (Datasette's form CSRF check is
                # skipped for /api/ by skip_csrf below).
                kind = _header(scope, b"content-type").split(";")[0].strip().lower()
                if kind not in ("", "application/json"):
                    return await send_json(send, 415, {"ok": False, "status": 415,
                                                       "error": "API writes take application/json or no body"})
            bearer = _header(scope, b"authorization").lower().startswith("bearer ")
            if actor is None and not is_public(path) and not (is_token_path(path) and bearer):
                if is_token_path(path):  # /metrics: say what a scraper needs, not "login required"
                    return await send_json(
                        send, 401, {"ok": False, "status": 401, "error": METRICS_401},
                        [(b"www-authenticate", b'Bearer realm="server-monitor"')],
                    )
                if wants_json(scope):
                    return await send_json(
                        send, 401, {"ok": False, "status": 401, "error": "login required"},
                        [(b"www-authenticate", b'Cookie realm="server-monitor"')],
                    )
                target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                return await redirect(send, "/login?next=" + quote(target, safe=""))

            problem = database_refusal(path, ctx)
            if problem is not None:  # see docs/reliability.md H2: never serve the deleted file's data as if it were current
                return await send_database_replaced(send, scope, problem)

            if (actor is not None and path.startswith("/-/") and actor.get("role") != "admin"
                    and not path.startswith(DASH_PATHS_FOR_ALL)):
                if wants_json(scope):
                    return await send_json(send, 403, {"ok": False, "status": 403, "error": "admins only"})
                return await send_text(send, 403, "Forbidden: admins only")

            if scope["method"] not in SAFE_METHODS and post_refusal(path):
                return await send_json(send, 405, {"ok": False, "status": 405, "error": post_refusal(path)},
                                       [(b"allow", b"GET, HEAD")])

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers") or [])
                    if https:  # Datasette's CSRF cookie gets Secure behind https too (see docs/security.md I9)
                        headers = [(k, v + b"; Secure") if k == b"set-cookie" and v.startswith(b"ds_csrftoken=")
                                   and b"Secure" not in v else (k, v) for k, v in headers]
                    names = {k.lower() for k, _ in headers}
                    headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                    if b"content-security-policy" not in names:
                        headers.append((b"content-security-policy", BASELINE_CSP.encode()))
                    if b"cache-control" not in names and not path.startswith(PUBLIC_PREFIXES):
                        headers.append((b"cache-control", b"no-store"))
                    message = dict(message, headers=headers)
                await send(message)

            # Ad-hoc SQL (?sql=, and table pages: _where, filters, facets) on its own bounded path
            # (L6), however the path spells the database (N5). Viewers may not run it (Datasette
            # answers their 403 at once): they never take an analyst slot.
            if actor is not None and actor.get("role") != "viewer" and \
                    await analyst.is_adhoc_sql(scope, datasette, actor):
                return await ctx.analyst_sql(app, scope, receive, send_with_headers)
            if scope["method"] in SAFE_METHODS and path.startswith("/" + DATABASE + "/"):
                # A canned query's id or span that is not a number: 400 naming it (not 200, no rows).
                bad = canned_param_problem(path, parse_qs(scope.get("query_string", b"").decode("utf-8", "replace")))
                if bad:
                    return await send_json(send, 400, {"ok": False, "status": 400, "error": bad})
            if actor is None or scope["method"] in SAFE_METHODS:
                return await app(scope, receive, send_with_headers)
            try:  # a person's write (an admin's form, an acknowledgement): the next ?fresh=1 fleet document shows it
                return await app(scope, receive, send_with_headers)
            finally:
                fleet_share.note_write(ctx.config.db_path)

        return gate

    return wrap


@hookimpl
def skip_csrf(datasette, scope):
    """API paths answer JSON and refuse form bodies themselves (see the gate above)."""
    return scope.get("path", "").startswith("/api/")


# Datasette errors caused by the request, not the server, that Datasette 0.65 answers with 500 (see docs/security.md I3).
_BAD_INPUT_ERRORS = ("Cannot sort table by", "Cannot use _sort and _sort_desc")


@hookimpl
def handle_exception(datasette, request, exception):
    """Bad ``?_sort=`` and similar request mistakes: 400 instead of Datasette's 500 (see docs/security.md I3).

    Sets the status on the exception and returns None, so Datasette's own handler still renders
    the page or JSON error (with the message escaped) as usual.
    """
    if isinstance(exception, DatasetteError) and exception.status == 500 and \
            str(exception.message).startswith(_BAD_INPUT_ERRORS):
        exception.status = 400
    return None


def post_refusal(path):
    """Why a state-changing request to a Datasette data path cannot be served, or None (see docs/security.md I3).

    Only the admin write canned queries (``/monitor/admin_*``) take POST; Datasette 0.65 answers
    a POST to a read-only query or a table page with a 500.
    """
    prefix = "/" + DATABASE
    if path != prefix and not path.startswith((prefix + "/", prefix + ".", "/_internal")):
        return None
    name = path[len(prefix) + 1:]
    name = name[:-5] if name.endswith(".json") else name
    if path.startswith(prefix + "/") and name in ADMIN_QUERIES:
        return None
    return "this page only answers GET; writes go through the admin forms"


@hookimpl
def forbidden(datasette, request, message):
    """Datasette's 403 as JSON for API-style requests (scripts never get an HTML page)."""
    if wants_json(request.scope):
        return Response.json({"ok": False, "status": 403, "error": f"forbidden: {message}"}, status=403)
    return None
