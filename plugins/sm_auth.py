"""Login, logout, registration by invite, own password, actors and permissions.

* ``/login``: one form for the config admin (password hash from ``config.yaml``) and
  invited users (hashes in ``auth.db``); rate limited per client address and per
  username; the PBKDF2 check runs in a thread and costs the same for unknown users.
* ``/logout``: ends the server-side session.
* ``/register?code=...``: creates an account from an invite (the code is consumed
  atomically).
* ``/account``: change your own password (ends your other sessions); create, list and revoke
  your read-only API tokens (issue 26 item 4; a new token is shown in that one response only).
* The actor comes from the session resolved by ``sm_gate``; Datasette's own
  ``ds_actor`` cookie, HTTP Basic path and ``/-/password-tool`` are not used.
* Permissions by role: ``admin`` everything; ``analyst`` also SQL on ``monitor``;
  ``viewer`` the dashboard and canned queries only.
"""

import asyncio
import hashlib
import logging
import re
import time
from urllib.parse import urlsplit

from datasette import hookimpl
from datasette.utils.asgi import Response
from datasette_auth_passwords.utils import hash_password, verify_password

from server_monitor.serving import hub
from server_monitor.auth.accounts import AccountError, check_password, check_username
from server_monitor.auth.api_tokens import TokenError
from server_monitor.core.config import admin_password_hash
from server_monitor.serving.queries import ADMIN_QUERIES
from server_monitor.serving.web import SCOPE_NAMES, page, scope_summary, server_names

log = logging.getLogger("server_monitor.auth")

BUSY_MESSAGE = "The hub is busy checking other passwords. Try again in a few seconds."

# Same cost as a real check, so unknown usernames cannot be told apart by timing: a hash with
# hash_password's default rounds (tests/test_access.py checks they still match), written out
# rather than computed at import, which cost every worker and every Datasette instance 0.35 s.
_DUMMY_HASH = "pbkdf2_sha256$480000$d8f123ea846cea270e54e926facec7a0$Xh82mCIK52+ImH4thcNiPNa9WIkfZ+WPExb+AQ0t+2s="


def safe_next(value):
    """``value`` if it is a local path (``/...`` but not ``//host``), else ``/``."""
    if not value or not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value:
        return "/"
    return value


def client_address(request, ctx):
    """The client's address: the trusted proxy header when configured, else the socket peer.

    From the header the rightmost address is taken: the one your proxy added. Addresses to its
    left come from the client and can be forged (see docs/security.md L4). The header is read
    only from a socket peer in ``auth.trusted_proxies`` (I-6).
    """
    header = ctx.config.get("auth.trusted_proxy_header")
    client = request.scope.get("client") or ("unknown", 0)
    if header:
        value = request.headers.get(header.lower(), "")
        if hub.from_trusted_proxy(request.scope, ctx.config):
            if value and value.split(",")[-1].strip():
                return value.split(",")[-1].strip()
        elif value and not _untrusted_warned:
            _untrusted_warned.append(client[0])  # once per process: a misconfigured proxy, or a client going around it
            log.warning("%s sent %s but is not in auth.trusted_proxies; using its own address (docs/operations.md)",
                        client[0], header)
    return client[0]


_untrusted_warned = []


def _verify(ctx, username, password):
    """``"config"`` or ``"user"`` for a right password, else None (same cost either way)."""
    if username == ctx.admin_username:
        return "config" if verify_password(password, admin_password_hash(ctx.config)) else None
    user = ctx.accounts.user(username) if username else None
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return "user" if verify_password(password, user["password_hash"]) else None


def _start_session(datasette, request, ctx, username, source, next_url):
    ctx.accounts.purge_expired()  # logins are rare; expired rows never pile up
    session_id = ctx.accounts.create_session(username, source, ctx.session_hours, client=client_address(request, ctx),
                                             fingerprint=ctx.admin_fingerprint if source == "config" else None,
                                             max_live=ctx.max_sessions)
    response = Response.redirect(next_url)
    https = is_https(request, ctx)
    response.set_cookie(
        hub.session_cookie_name(https),
        datasette.sign({"sid": session_id}, hub.SESSION_NAMESPACE),
        max_age=int(ctx.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=https,
    )
    return response


def is_https(request, ctx):
    """True when the browser talks https to us (directly, or to a trusted proxy that says so)."""
    return hub.scope_is_https(request.scope, ctx.config)


async def _render_login(datasette, request, error=None, status=200, next_url="/", username="", headers=None):
    return await page(datasette, request, "sm_login.html", status=status, headers=headers,
                      error=error, next=next_url, username=username)


async def login(request, datasette):
    ctx = hub.context(datasette)
    if request.method == "GET":
        if request.actor:
            return Response.redirect(safe_next(request.args.get("next")))
        return await _render_login(datasette, request, next_url=safe_next(request.args.get("next")))
    if "ds_csrftoken" not in request.cookies:
        # Datasette's CSRF check skips cookieless posts; a login form always has the cookie.
        return await _render_login(datasette, request, status=403, error="Cookies are needed to log in. Reload and retry.")
    form = await request.post_vars()
    username = (form.get("username") or "").strip()[:128]
    password = form.get("password") or ""
    next_url = safe_next(form.get("next"))
    keys = ["ip:" + client_address(request, ctx), "user:" + username.lower()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        # Two budgets, both checked before the PBKDF2 run: failures (5 per 5 min per address
        # and per user) and successes (auth.logins_per_minute per user, 6x per address, N10).
        token, wait, busy = ctx.limiter.reserve(keys)
        error = "Too many failed attempts."
        if token is not None:
            ok_token, wait, busy = ctx.success_limiter.reserve(keys)
            if ok_token is not None:
                break
            ctx.limiter.succeeded(token)  # not checked: costs no budget
            error = "Too many logins for this account or address."
        if not busy or loop.time() > deadline:
            wait = wait or 5
            return await _render_login(
                datasette, request, status=429, next_url=next_url, username=username,
                error=f"{error} Try again in {wait} seconds.",
                headers={"retry-after": str(wait)},
            )
        await asyncio.sleep(0.05)  # other attempts with these keys are being checked
    try:
        source = await ctx.password_work(_verify, ctx, username, password[:1024])
    except hub.PasswordBusy:
        ctx.limiter.succeeded(token)  # not checked: costs no budget
        ctx.success_limiter.succeeded(ok_token)
        return await _render_login(datasette, request, status=503, next_url=next_url, username=username,
                                   error=BUSY_MESSAGE, headers={"retry-after": "5"})
    except BaseException:
        ctx.limiter.failed(token)
        ctx.success_limiter.succeeded(ok_token)
        raise
    if source is None:
        ctx.limiter.failed(token)
        ctx.success_limiter.succeeded(ok_token)  # a wrong password is the other budget's
        return await _render_login(
            datasette, request, status=401, next_url=next_url, username=username,
            error="Invalid username or password.",
        )
    ctx.limiter.succeeded(token)
    ctx.success_limiter.failed(ok_token)  # one right password: counted against the success budget
    if source == "user":
        username = ctx.accounts.user(username)["username"]  # canonical case
    return _start_session(datasette, request, ctx, username, source, next_url)


async def register(request, datasette):
    """``/register?code=``: the form (GET, 404 for a dead invite) and the account creation (POST).

    The invite, the username and the password policy are checked before any PBKDF2 work (see docs/security.md M2);
    failures (bad invite, taken name) are limited per client address and per invite (429).
    """
    ctx = hub.context(datasette)
    code = request.args.get("code") or ""
    if request.method == "GET":
        if not ctx.accounts.invite_valid(code):
            return await page(datasette, request, "sm_register.html", status=404, code="",
                              error="This invite link is not valid (used up, expired or revoked).")
        return await page(datasette, request, "sm_register.html", code=code, error=None)
    if "ds_csrftoken" not in request.cookies:
        return await page(datasette, request, "sm_register.html", status=403, code=code,
                          error="Cookies are needed to register. Reload and retry.")
    form = await request.post_vars()
    code = form.get("code") or ""
    username = (form.get("username") or "").strip()
    password = form.get("password") or ""
    # A live invite is limited on its own failures (taken names); only posts without one count
    # against the address, so others' bogus posts from the same address or NAT never block a
    # real invite (I-1). The lookup is one indexed read, no password work.
    if ctx.accounts.invite_valid(code):
        keys = ["invite:" + hashlib.sha256(code.encode()).hexdigest()[:32]]
    else:
        keys = ["ip:" + client_address(request, ctx)]
    token, wait, _ = ctx.register_limiter.reserve(keys)
    if token is None:
        wait = wait or 5
        return await page(datasette, request, "sm_register.html", status=429, code=code, username=username,
                          error=f"Too many failed attempts. Try again in {wait} seconds.",
                          headers={"retry-after": str(wait)})
    error, status, failed = None, 400, False
    try:
        if not ctx.accounts.invite_valid(code):
            failed = True
            raise AccountError("This invite link is not valid any more.")
        if password != (form.get("password2") or ""):
            raise AccountError("The two passwords differ.")
        check_username(username)
        if username.lower() == ctx.admin_username.lower() or ctx.accounts.user(username) is not None:
            failed = True  # only an invite holder gets this far (see docs/security.md I7)
            raise AccountError(f"The username {username!r} is taken.")
        check_password(password, username)
        password_hash = await ctx.password_work(hash_password, password)
        failed = True  # a race for the name or the last use of the invite
        await asyncio.get_running_loop().run_in_executor(None, ctx.accounts.register, code, username, password_hash)
        failed = False
    except AccountError as exc:
        error = str(exc)
    except hub.PasswordBusy:
        error, status = BUSY_MESSAGE, 503
    finally:
        (ctx.register_limiter.failed if failed else ctx.register_limiter.succeeded)(token)
    if error:
        return await page(datasette, request, "sm_register.html", status=status, code=code, error=error,
                          username=username, headers={"retry-after": "5"} if status == 503 else None)
    return _start_session(datasette, request, ctx, username, "user", "/")


def fmt_utc(epoch):
    """``2026-12-07 05:31 UTC`` for an epoch (s), ``""`` for None."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch)) if epoch else ""


# Expiry choices of the token form (days; "" = never).
TOKEN_EXPIRY_DAYS = ("7", "30", "90", "365", "")


async def _account_page(datasette, request, status=200, headers=None, **extra):
    """``/account`` with the actor's API tokens (newest first, times as UTC text)."""
    ctx = hub.context(datasette)
    actor = request.actor
    tokens = ctx.accounts.api_tokens.list(actor["id"])
    now = int(time.time())
    for item in tokens:
        item["state"] = ("revoked" if item["revoked_at"] else "expired" if item["expires_at"] and item["expires_at"] <= now
                         else "live")
        for key in ("created_at", "expires_at", "last_used_at", "revoked_at"):
            item[key + "_text"] = fmt_utc(item[key])
    extra.setdefault("message", None)
    extra.setdefault("error", None)
    # The scope as stored (host groups + servers by name, admin's scope_summary), not the
    # hundreds of server ids a group expands to; how many servers it covers now.
    scope = None
    if actor.get("servers") is not None:
        stored = ctx.accounts.user(actor["id"]) or {}
        chosen = stored.get("servers") if stored else actor["servers"]
        names = await server_names(datasette, (chosen or [])[:SCOPE_NAMES])
        scope = scope_summary(chosen or [], names, stored.get("groups"))
        scope = ("host " + scope if stored.get("groups") else scope) + (
            f" ({len(actor['servers'])} server{'s' if len(actor['servers']) != 1 else ''} now)"
            if stored.get("groups") else "")
    # The hub's address for the "Try it" line: server.public_url, else the request's own.
    hub_url = (ctx.config.get("server.public_url") or f"{request.scheme}://{request.host}").rstrip("/")
    return await page(datasette, request, "sm_account.html", status=status, headers=headers, scope=scope,
                      hub_url=hub_url,
                      is_user=actor.get("source") == "user" and actor.get("login") != "sso",
                      sso_login=actor.get("login") == "sso", api_tokens=tokens,
                      expiry_choices=TOKEN_EXPIRY_DAYS, **extra)


async def _token_action(request, datasette, form):
    """The ``create_token`` / ``revoke_token`` posts of ``/account`` (issue 26 item 4)."""
    ctx = hub.context(datasette)
    actor = request.actor
    if form.get("action") == "revoke_token":
        raw = form.get("token_id") or ""
        # ASCII digits within SQLite's integers only: "²".isdigit() is True and int() refuses it,
        # and a 20-digit id overflowed SQLite (500s before, attack run A5).
        done = re.fullmatch(r"[0-9]{1,18}", raw) is not None and \
            ctx.accounts.api_tokens.revoke(int(raw), actor["id"], username=actor["id"])
        if not done:  # not a live token of this user (another user's id included): nothing changes
            return await _account_page(datasette, request, status=403, error="That is not a live token of yours.")
        return await _account_page(datasette, request, message=f"Token #{raw} revoked; scripts using it get 401 now.")
    days = form.get("days") or ""
    if days not in TOKEN_EXPIRY_DAYS:
        return await _account_page(datasette, request, status=400, error="Pick an expiry from the list.")
    try:
        token_id, token = ctx.accounts.api_tokens.create(actor["id"], "config" if actor.get("source") == "config" else "user",
                                                         form.get("name"), int(days) if days else None)
    except TokenError as exc:
        return await _account_page(datasette, request, status=400, error=str(exc))
    # The token is in this response only; auth.db keeps its SHA-256.
    return await _account_page(datasette, request, new_token={"id": token_id, "token": token})


async def account(request, datasette):
    ctx = hub.context(datasette)
    actor = request.actor
    if actor is None:
        return Response.redirect("/login?next=/account")
    is_user = actor.get("source") == "user" and actor.get("login") != "sso"
    message = error = None
    if request.method == "POST":
        form = await request.post_vars()
        if form.get("action") in ("create_token", "revoke_token"):
            return await _token_action(request, datasette, form)
        if actor.get("login") == "sso":
            error = "You sign in through the lab's sign-on; your password is kept there."
        elif not is_user:
            error = "The admin's password lives in config.yaml (auth.password_hash)."
        elif form.get("new_password") != form.get("new_password2"):
            error = "The two new passwords differ."
        else:
            user = ctx.accounts.user(actor["id"])
            # The current-password check shares the login budget of this username (see docs/security.md L5).
            token, wait, busy = ctx.limiter.reserve(["user:" + actor["id"].lower()])
            if token is None:
                wait = wait or 5
                return await _account_page(datasette, request, status=429,
                                           error=f"Too many failed attempts. Try again in {wait} seconds.",
                                           headers={"retry-after": str(wait)})
            try:
                ok = await ctx.password_work(verify_password, (form.get("password") or "")[:1024],
                                             user["password_hash"])
                if not ok:
                    ctx.limiter.failed(token)
                    token = None
                    raise AccountError("The current password is wrong.")
                check_password(form.get("new_password") or "", actor["id"])
                new_hash = await ctx.password_work(hash_password, form["new_password"])
                ctx.accounts.set_password(actor["id"], new_hash)  # ends every session, this one too
                return _start_session(datasette, request, ctx, actor["id"], "user", "/account?changed=1")
            except AccountError as exc:
                error = str(exc)
            except hub.PasswordBusy:
                error = BUSY_MESSAGE
            finally:
                if token is not None:
                    ctx.limiter.succeeded(token)
    if request.args.get("changed"):
        message = "Password changed. Your other sessions were logged out."
    return await _account_page(datasette, request, message=message, error=error)


async def logout(request, datasette):
    if request.method == "POST":
        ctx = hub.context(datasette)
        ctx.accounts.end_session(request.scope.get("sm.session_id"))
        # A sign-on user logs out at the proxy (sso.logout_url), or the proxy logs it in again.
        sso_logout = (request.actor or {}).get("login") == "sso" and ctx.config.get("sso.logout_url")
        response = Response.redirect(sso_logout or "/login")
        https = is_https(request, ctx)
        response.set_cookie(hub.session_cookie_name(https), "", max_age=0, httponly=True, samesite="lax",
                            secure=https)
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
        (r"^/register$", register),
        (r"^/-/register$", register),
        (r"^/account$", account),
        (r"^/-/logout$", logout),
        (r"^/-/login$", old_login),
        (r"^/-/password-tool$", not_found),
    ]


@hookimpl
def actor_from_request(datasette, request):
    return request.scope.get("sm.actor")


_ANALYST_ACTIONS = {"view-database", "view-table", "execute-sql"}


@hookimpl
def permission_allowed(datasette, actor, action, resource):
    """Role-based rules; returning False denies even what Datasette allows by default."""
    if not actor:
        return False
    role = actor.get("role")
    if actor.get("token") and action == "view-query" and isinstance(resource, tuple) and resource[1] in ADMIN_QUERIES:
        return False  # API tokens never reach the admin (write) canned queries, an admin's token neither
    if actor.get("token") and (resource[0] if isinstance(resource, tuple) else resource) == "_internal":
        # Nor Datasette's _internal catalogue, however the path spells it (/~5Finternal: attack run A1).
        return False
    if role == "admin":
        return True
    if action == "view-instance":
        return True
    if action == "view-query":
        # The admin_* (write) canned queries are for admins only.
        return isinstance(resource, tuple) and resource[1] not in ADMIN_QUERIES
    if role == "analyst" and action in _ANALYST_ACTIONS:
        db = resource[0] if isinstance(resource, tuple) else resource
        return db == "monitor"
    return False


@hookimpl
def menu_links(datasette, actor):
    links = [{"href": "/", "label": "Dashboard"}]
    if actor:
        if actor.get("role") == "admin":
            links.append({"href": "/admin", "label": "Admin"})
        links.append({"href": "/account", "label": "Account"})
        links.append({"href": "/logout", "label": "Log out"})
    return links
