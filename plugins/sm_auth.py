"""Login, logout, actors and permissions.

* ``/login``: one form for the config admin (password hash from ``config.yaml``);
  rate limited per client address and per username; the PBKDF2 check runs in a thread
  and costs the same for unknown users.
* ``/logout``: ends the server-side session.
* The actor comes from the session resolved by ``sm_gate``; Datasette's own
  ``ds_actor`` cookie, HTTP Basic path and ``/-/password-tool`` are not used.
* Permissions by role: ``admin`` everything; ``analyst`` also SQL on ``monitor``;
  ``viewer`` the dashboard and canned queries only.
"""

import asyncio
from urllib.parse import urlsplit

from datasette import hookimpl
from datasette.utils.asgi import Response
from datasette_auth_passwords.utils import hash_password, verify_password

from server_monitor import hub
from server_monitor.config import admin_password_hash
from server_monitor.web import page

# Same cost as a real check, so unknown usernames cannot be told apart by timing.
_DUMMY_HASH = hash_password("not-a-real-password")


def safe_next(value):
    """``value`` if it is a local path (``/...`` but not ``//host``), else ``/``."""
    if not value or not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value:
        return "/"
    return value


def client_address(request, ctx):
    """The client's address: the trusted proxy header when configured, else the socket peer."""
    header = ctx.config.get("auth.trusted_proxy_header")
    if header:
        value = request.headers.get(header.lower(), "")
        if value:
            return value.split(",")[0].strip()
    client = request.scope.get("client") or ("unknown", 0)
    return client[0]


def _verify(ctx, username, password):
    if username == ctx.admin_username:
        return verify_password(password, admin_password_hash(ctx.config))
    verify_password(password, _DUMMY_HASH)
    return False


async def _render_login(datasette, request, error=None, status=200, next_url="/", username="", headers=None):
    return await page(datasette, request, "sm_login.html", status=status, headers=headers,
                      error=error, next=next_url, username=username)


async def login(request, datasette):
    ctx = hub.context(datasette)
    if request.method == "GET":
        if request.actor:
            return Response.redirect(safe_next(request.args.get("next")))
        return await _render_login(datasette, request, next_url=safe_next(request.args.get("next")))
    form = await request.post_vars()
    username = (form.get("username") or "").strip()[:128]
    password = form.get("password") or ""
    next_url = safe_next(form.get("next"))
    keys = ["ip:" + client_address(request, ctx), "user:" + username.lower()]
    token, wait = ctx.limiter.reserve(keys)
    if token is None:
        return await _render_login(
            datasette, request, status=429, next_url=next_url, username=username,
            error=f"Too many failed attempts. Try again in {wait} seconds.",
            headers={"retry-after": str(wait)},
        )
    ok = await asyncio.get_running_loop().run_in_executor(None, _verify, ctx, username, password[:1024])
    if not ok:
        return await _render_login(
            datasette, request, status=401, next_url=next_url, username=username,
            error="Invalid username or password.",
        )
    ctx.limiter.succeeded(token)
    session_id = ctx.accounts.create_session(
        username, "config", ctx.session_hours, client=client_address(request, ctx)
    )
    response = Response.redirect(next_url)
    response.set_cookie(
        hub.SESSION_COOKIE,
        datasette.sign({"sid": session_id}, hub.SESSION_NAMESPACE),
        max_age=int(ctx.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=request.scheme == "https",
    )
    return response


async def logout(request, datasette):
    if request.method == "POST":
        ctx = hub.context(datasette)
        ctx.accounts.end_session(request.scope.get("sm.session_id"))
        response = Response.redirect("/login")
        response.set_cookie(hub.SESSION_COOKIE, "", max_age=0, httponly=True, samesite="lax")
        return response
    return await page(datasette, request, "sm_logout.html")


async def not_found(request, datasette):
    return Response.text("Not found", status=404)


async def old_login(request, datasette):
    return Response.redirect("/login")


@hookimpl
def register_routes():
    return [
        (r"^/login$", login),
        (r"^/logout$", logout),
        (r"^/-/logout$", logout),
        (r"^/-/login$", old_login),
        (r"^/-/password-tool$", not_found),
    ]


@hookimpl
def actor_from_request(datasette, request):
    return request.scope.get("sm.actor")


_ANALYST_ACTIONS = {"view-database", "view-table", "execute-sql", "view-database-download"}


@hookimpl
def permission_allowed(datasette, actor, action, resource):
    """Role-based rules; returning False denies even what Datasette allows by default."""
    if not actor:
        return False
    role = actor.get("role")
    if role == "admin":
        return True
    if action in ("view-instance", "view-query"):
        return True
    if role == "analyst" and action in _ANALYST_ACTIONS:
        db = resource[0] if isinstance(resource, tuple) else resource
        return db == "monitor"
    return False


@hookimpl
def menu_links(datasette, actor):
    links = [{"href": "/", "label": "Dashboard"}]
    if actor:
        links.append({"href": "/logout", "label": "Log out"})
    return links
