"""The admin panel at ``/admin``: invites, users, servers and GPUs, announcements, agent tokens.

Server-rendered (``templates/admin.html``, no data in scripts). Account changes go to
``auth.db`` through the routes below; server/GPU status and announcements go through the
admin-only write canned queries in ``canned_queries/admin_*.sql``. Every form carries
Datasette's CSRF token; every route answers 403 to anyone but an admin.

At fleet size (issue 24 item 3) every list is one page with a search: servers
(``admin_servers``), GPUs (``admin_gpus``), users and agent tokens, :data:`PAGE_SIZE` rows a
page, the search and page in the URL (``sq``/``sp``, ``gq``/``gp``, ``uq``/``up``,
``tq``/``tp``). A scope (invite, user) and a token's server are picked by search
(``/admin/scope-options``, ``static/admin.js``), never from a list of every server.
"""

import fnmatch
import time
from urllib.parse import urlencode

from datasette import hookimpl
from datasette.utils.asgi import Response
from datasette_auth_passwords.utils import hash_password

from server_monitor.core import config
from server_monitor.serving import hub
from server_monitor.auth import sso, tokens
from server_monitor.jobs.alerts import identity_text
from server_monitor.auth.accounts import ROLES, AccountError
from server_monitor.serving.queries import DATABASE, QUERIES, run
from server_monitor.storage import groups as host_groups
from server_monitor.storage.store import delete_server
from server_monitor.serving.web import SCOPE_NAMES, page, page_number, read_form, scope_summary, server_names
from server_monitor.serving.web import admin_denied as _forbidden
from server_monitor.serving.web import pager as web_pager


def _scope_kind(form):
    """The form's ``scope``: None (no field), ``all`` or ``some``. Raises :class:`AccountError`
    for any other value: a typo must not widen a user to every server (attack run, follow-up)."""
    kind = form.first("scope")
    if kind not in (None, "all", "some"):
        raise AccountError("scope must be all or some")
    return kind


def _servers_from_form(form, missing=None):
    """Scope from the form: None for all servers, else the chosen server ids (hidden ``servers``
    inputs of the scope picker). ``missing``: the answer when the form has no ``scope`` field.
    Raises :class:`AccountError` for a ``scope`` other than ``all``/``some``."""
    kind = _scope_kind(form)
    if kind is None:
        return missing
    if kind == "all":
        return None
    return [int(v) for v in form.getlist("servers") if v.isdigit()]


def _groups_from_form(form, missing=()):
    """Host groups of the scope: every ``groups`` value (the scope picker's group chips, one name
    each; a name list split by commas/spaces is read the same way); ``[]`` unless the scope is
    ``some``. ``missing``: the answer when the form has no ``scope`` field (``()``: leave the stored
    groups as they are). Raises :class:`host_groups.GroupError` for a bad name,
    :class:`AccountError` for a ``scope`` other than ``all``/``some``."""
    kind = _scope_kind(form)
    if kind is None:
        return missing
    if kind == "all":
        return []
    return host_groups.parse_list(" ".join(form.getlist("groups")))


def select_servers(servers, pattern="", names="", ids=()):
    """Server ids chosen for a bulk group change, from ``servers`` (rows of the ``servers`` query):
    those whose host name or display name matches the shell-style ``pattern`` (``node-0*``,
    ``gpu-[ab]*``; case-insensitive), those named in ``names`` (host or display names separated
    by spaces, commas or lines), and ``ids``. Returns ``(sorted ids, unknown names)``."""
    chosen, wanted = set(), {n.lower() for n in names.replace(",", " ").split()}
    known = set()
    pattern = (pattern or "").strip().lower()
    for s in servers:
        labels = {str(s["hostname"]).lower(), str(s["name"]).lower()}
        if pattern and any(fnmatch.fnmatchcase(label, pattern) for label in labels):
            chosen.add(s["server_id"])
        if labels & wanted:
            chosen.add(s["server_id"])
            known |= labels & wanted
        if s["server_id"] in ids:
            chosen.add(s["server_id"])
    return sorted(chosen), sorted(wanted - known)


# Rows per page of each /admin list.
PAGE_SIZE = 50
# Invites shown (newest first); older ones stay in auth.db.
INVITES_SHOWN = 50


def _page_number(request, key):
    return page_number(request.args, key)


def pager(request, key, number, total, size=PAGE_SIZE, anchor=""):
    """Paging of one /admin list (:func:`server_monitor.serving.web.pager` on ``/admin``)."""
    return web_pager(request.args, "/admin", key, number, total, size, anchor)


async def _page_of(datasette, name, actor, q, number):
    """Rows of the paged admin query ``name`` and the number of matches."""
    rows = await run(datasette, name, actor, q=q, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE)
    if rows:
        return rows, rows[0]["total"]
    first = await run(datasette, name, actor, q=q, limit=1, offset=0)  # past the end
    return [], first[0]["total"] if first else 0


async def render(request, datasette, status=200, **extra):
    ctx = hub.context(datasette)
    actor = request.actor
    args = request.args
    # Searches ignore spaces around the words typed (" dgx-a10 " finds dgx-a10).
    sq, gq, uq, tq = (args.get(k, "").strip()[:200] for k in ("sq", "gq", "uq", "tq"))
    sp, gp, up, tp = (_page_number(request, k) for k in ("sp", "gp", "up", "tp"))
    servers, servers_total = await _page_of(datasette, "admin_servers", actor, sq, sp)
    gpus, gpus_total = await _page_of(datasette, "admin_gpus", actor, gq, gp)
    lost_gpus = await run(datasette, "admin_lost_gpus", actor)
    announcements = await run(datasette, "announcements", actor)
    identity_events = await run(datasette, "host_identity_events", actor)
    users, users_total = ctx.accounts.users_page(uq, PAGE_SIZE, (up - 1) * PAGE_SIZE)
    invites = ctx.accounts.invites(limit=INVITES_SHOWN)
    agent_tokens, tokens_total = tokens.tokens_page(ctx.accounts.connection(), tq, PAGE_SIZE, (tp - 1) * PAGE_SIZE)
    api_tokens = ctx.accounts.api_tokens.list(limit=API_TOKENS_SHOWN)  # users' API tokens (issue 26 item 4)
    edit_user = ctx.accounts.user(args["edit"]) if args.get("edit") else None
    wanted = [i for item in users + invites for i in (item["servers"] or [])[:SCOPE_NAMES]]
    wanted += (edit_user or {}).get("servers") or []
    names = await server_names(datasette, wanted)
    # The edit form's chips: the user's host groups, then servers (kinds as SCOPE_SOURCES names them).
    edit_scope = [{"kind": "group", "id": g, "name": g} for g in (edit_user or {}).get("groups") or []]
    edit_scope += [{"kind": "server", "id": i, "name": names.get(i, f"#{i}")}
                   for i in (edit_user or {}).get("servers") or []]
    # Not "base_url": Datasette's own template variable of that name would win. server.public_url
    # when configured: the Host header can be forged (see docs/security.md I5).
    site_url = (ctx.config.get("server.public_url") or f"{request.scheme}://{request.host}").rstrip("/")
    return await page(
        datasette, request, "admin.html", status=status,
        servers=servers, servers_pager=pager(request, "sp", sp, servers_total, anchor="#servers"), sq=sq,
        gpus=gpus, gpus_pager=pager(request, "gp", gp, gpus_total, anchor="#gpus"), gq=gq,
        users=users, users_pager=pager(request, "up", up, users_total, anchor="#users"), uq=uq,
        agent_tokens=agent_tokens, tokens_pager=pager(request, "tp", tp, tokens_total, anchor="#tokens"), tq=tq,
        lost_gpus=lost_gpus, announcements=announcements, invites=invites, invites_shown=INVITES_SHOWN,
        edit_user=edit_user, edit_scope=edit_scope, scope_summary=lambda item: scope_summary(item["servers"], names, item.get("groups")),
        identity_events=identity_events, identity_text=identity_text, roles=ROLES, site_url=site_url,
        group_summary=await datasette.get_database(DATABASE).execute_fn(host_groups.summary),
        admin_username=ctx.admin_username, api_tokens=api_tokens, api_tokens_shown=API_TOKENS_SHOWN,
        now=int(time.time()), **extra,
    )


# Where the scope picker finds what it offers (``GET /admin/scope-options``): each source is
# ``async (datasette, actor, q, limit) -> (options, total)``, an option
# ``{"kind", "id", "name", "detail"}``, keyed by its kind. The picker posts a chosen option as a
# hidden input named by its kind (``static/admin.js`` SCOPE_FIELDS: kind "server" -> ``servers``,
# kind "group" -> ``groups``); the invite and user handlers read both fields.
async def _server_options(datasette, actor, q, limit):
    rows = await run(datasette, "admin_servers", actor, q=q, limit=limit, offset=0)
    options = [{"kind": "server", "id": r["server_id"], "name": r["name"],
                "detail": " · ".join(x for x in (r["hostname"] if r["hostname"] != r["name"] else "", r["status"],
                                               f"{r['gpu_count']} GPUs") if x)} for r in rows]
    return options, rows[0]["total"] if rows else 0


async def _group_options(datasette, actor, q, limit):
    """Host groups (issue 24 item 1) whose name holds ``q`` (any case), by name: a viewer scoped
    to a group sees the servers that are in it at each request, those that join later too.
    One read of ``server_groups`` through its index ``server_groups_grp``."""
    def read(conn):
        where = "WHERE instr(lower(grp), lower(?1)) > 0"
        total = conn.execute(f"SELECT count(DISTINCT grp) FROM server_groups {where}", [q]).fetchone()[0]
        rows = conn.execute(f"SELECT grp, count(DISTINCT server_id) FROM server_groups {where}"
                            " GROUP BY grp ORDER BY grp LIMIT ?2", [q, limit]).fetchall()
        return rows, total

    rows, total = await datasette.get_database(DATABASE).execute_fn(read)
    return [{"kind": "group", "id": g, "name": g,
             "detail": f"host group · {n} server{'s' if n != 1 else ''} now"} for g, n in rows], total


# Groups first: few, and each stands for many servers.
SCOPE_SOURCES = {"group": _group_options, "server": _server_options}
# Options per answer while typing; "all=1" (the picker's "Add all N matching") takes up to this many.
SCOPE_OPTIONS = 20
SCOPE_ALL_MAX = 10000


async def scope_options(request, datasette):
    """``GET /admin/scope-options?q=TEXT[&all=1][&kind=server|group]``: what the scope picker may
    add, as JSON ``{"options": [{"kind", "id", "name", "detail"}], "total": N}`` (``total``: every
    match; ``options``: the first :data:`SCOPE_OPTIONS`, or up to :data:`SCOPE_ALL_MAX` with
    ``all=1``; host groups first, then servers; ``kind``: one source only, 400 for an unknown
    kind). Admins only (403)."""
    denied = _forbidden(request, post=False)
    if denied:
        return denied
    q = (request.args.get("q") or "").strip()[:200]
    limit = SCOPE_ALL_MAX if request.args.get("all") == "1" else SCOPE_OPTIONS
    kind = request.args.get("kind")
    if kind is not None and kind not in SCOPE_SOURCES:
        return Response.json({"error": f"kind must be one of {', '.join(SCOPE_SOURCES)}"}, status=400)
    options, total = [], 0
    for name, source in SCOPE_SOURCES.items():
        if kind is not None and name != kind:
            continue
        found, count = await source(datasette, request.actor, q, limit)
        options += found
        total += count
    return Response.json({"options": options[:limit], "total": total}, headers={"cache-control": "no-store"})


async def admin_page(request, datasette):
    return _forbidden(request, post=False) or await render(request, datasette, group_done=_group_done(request.args))


async def create_invite(request, datasette):
    denied = _forbidden(request)
    if denied:
        return denied
    ctx = hub.context(datasette)
    form = await read_form(request)
    try:
        invite_id, code = ctx.accounts.create_invite(
            form.first("role", "viewer"), float(form.first("hours") or 72), int(form.first("max_uses") or 1),
            servers=_servers_from_form(form), see_processes=form.first("see_processes") == "on",
            created_by=request.actor["id"], groups=_groups_from_form(form, missing=[]))
    except (AccountError, host_groups.GroupError, ValueError) as exc:
        return await render(request, datasette, status=400, error=str(exc))
    # The link is shown in this response only; the database keeps just the code's hash.
    return await render(request, datasette, new_invite={"id": invite_id, "code": code})


async def revoke_invite(request, datasette):
    denied = _forbidden(request)
    if denied:
        return denied
    hub.context(datasette).accounts.revoke_invite(int(request.url_vars["id"]))
    return Response.redirect("/admin#invites")


async def update_user(request, datasette):
    denied = _forbidden(request)
    if denied:
        return denied
    ctx = hub.context(datasette)
    username = request.url_vars["username"]
    form = await read_form(request)
    action = form.first("action")
    try:
        if action == "delete":
            ctx.accounts.delete_user(username)
        elif action == "reset":
            if (ctx.accounts.user(username) or {}).get("password_hash") == sso.NO_PASSWORD:
                # No password to reset: giving one would open a way in around the lab's proxy.
                return await render(request, datasette, status=400,
                                    error=f"{username} signs in through the lab's sign-on proxy and has no password"
                                          " here: reset it there.")
            password = config.new_secret(12)
            password_hash = await ctx.password_work(hash_password, password)
            ctx.accounts.set_password(username, password_hash)
            # A reset is what an admin does for a compromised account: the intruder's API tokens
            # end with its sessions (attack run A6). A user changing its own password keeps them.
            tokens = ctx.accounts.api_tokens.revoke_all_of(username, request.actor["id"])
            return await render(request, datasette, reset={"username": username, "password": password,
                                                           "tokens": tokens})
        else:
            # A form without the scope fields leaves the scope as it is (never widens it to all).
            if ctx.accounts.update_user(username, role=form.first("role"), servers=_servers_from_form(form, missing=()),
                                        see_processes=(form.first("see_processes") == "on") if form.first("scope")
                                        else None, groups=_groups_from_form(form)):
                sso.pin(ctx.accounts, username)  # the admin's choice now wins over the proxy's groups (A7)
    except (AccountError, host_groups.GroupError) as exc:
        return await render(request, datasette, status=400, error=str(exc))
    except hub.PasswordBusy:
        return await render(request, datasette, status=503, error="The hub is busy checking passwords; try again.")
    return Response.redirect("/admin#users")


async def server_delete(request, datasette):
    denied = _forbidden(request)
    if denied:
        return denied
    server_id = int(request.url_vars["id"])
    if await datasette.get_database(DATABASE).execute_write_fn(lambda conn: delete_server(conn, server_id), block=True):
        hub.context(datasette).accounts.forget_server(server_id)
    return Response.redirect("/admin#servers")


GPU_STATUSES = ("active", "maintenance", "fault")


async def gpus_bulk(request, datasette):
    """``POST /admin/gpus``: one status and note for every checked GPU (``gpu_id`` repeated)."""
    denied = _forbidden(request)
    if denied:
        return denied
    form = await read_form(request)
    status = form.first("status")
    ids = [int(v) for v in form.getlist("gpu_id") if v.isdigit()]
    if status not in GPU_STATUSES:
        return await render(request, datasette, status=400, error=f"status must be one of {', '.join(GPU_STATUSES)}")
    if not ids:
        return await render(request, datasette, status=400, error="select at least one GPU")
    note = (form.first("status_note") or "")[:500]
    sql = QUERIES["admin_set_gpu"]["sql"]

    def write(conn):  # one transaction for all of them
        for gpu_id in ids:
            conn.execute(sql, {"status": status, "status_note": note, "gpu_id": str(gpu_id)})
        conn.commit()

    await datasette.get_database(DATABASE).execute_write_fn(write, block=True)
    return Response.redirect("/admin#gpus")


async def groups_bulk(request, datasette):
    """``POST /admin/groups``: add (``action=add``) or remove (``action=remove``) host group ``group``
    (source ``admin``) for many servers at once, chosen by name ``pattern`` (shell-style), by
    ``names`` (a list) and/or by ``server_id`` (repeated). Groups that agents or Slurm report are
    not touched (docs/api.md "Host groups")."""
    denied = _forbidden(request)
    if denied:
        return denied
    form = await read_form(request)
    action = form.first("action")
    if action not in ("add", "remove"):
        return await render(request, datasette, status=400, error="action must be add or remove")
    try:
        group = host_groups.check_name(form.first("group") or "")
    except host_groups.GroupError as exc:
        return await render(request, datasette, status=400, error=str(exc))
    servers = await run(datasette, "servers", request.actor)
    ids = {int(v) for v in form.getlist("server_id") if v.isdigit()}
    chosen, unknown = select_servers(servers, form.first("pattern") or "", form.first("names") or "", ids)
    if unknown:
        return await render(request, datasette, status=400,
                            error="No server is named " + ", ".join(unknown[:20]) + (" …" if len(unknown) > 20 else ""))
    if not chosen:
        return await render(request, datasette, status=400, error="No server matches: give a pattern, names or a selection.")

    def write(conn):  # one transaction for all of them
        with conn:
            return host_groups.set_admin(conn, chosen, group, add=action == "add")

    changed = await datasette.get_database(DATABASE).execute_write_fn(write, block=True)
    # Redirect after POST: a reload of the page shows the outcome again, never re-submits the form.
    return Response.redirect("/admin?" + urlencode({"gdone": action, "gname": group, "gn": changed, "gof": len(chosen)})
                             + "#groups")


def _group_done(args):
    """The outcome line of a bulk group change from ``/admin``'s one-shot arguments (``gdone``,
    ``gname``, ``gn``, ``gof``: set by :func:`groups_bulk`'s redirect), or None when they are
    absent or malformed (the group name is checked like a new one, the counts are integers)."""
    action, counts = args.get("gdone"), (args.get("gn", ""), args.get("gof", ""))
    if action not in ("add", "remove") or not all(c.isdigit() and len(c) <= 7 for c in counts):
        return None
    try:
        group = host_groups.check_name(args.get("gname") or "")
    except host_groups.GroupError:
        return None
    verb = "added to" if action == "add" else "removed from"
    return f"{int(counts[0])} of {int(counts[1])} matching servers {verb} group {group}."


async def agent_token(request, datasette):
    denied = _forbidden(request)
    if denied:
        return denied
    ctx = hub.context(datasette)
    form = await read_form(request)
    conn = ctx.accounts.connection()
    if form.first("action") == "revoke":
        tokens.revoke(conn, int(form.first("token_id") or 0))
        return Response.redirect("/admin#tokens")
    server_id = form.first("server_id") or ""
    row = None
    if server_id.isdigit():
        row = (await datasette.get_database(DATABASE).execute(
            "SELECT machine_id, coalesce(display_name, hostname) FROM servers WHERE id = ?", [int(server_id)])).first()
    if row is None:
        return await render(request, datasette, status=400, error="Choose a server for the token.")
    machine_id, name = row
    token_id, value = tokens.issue(conn, machine_id, name)
    return await render(request, datasette, new_token={"id": token_id, "token": value, "server": name})


# The newest users' API tokens listed on /admin.
API_TOKENS_SHOWN = 200


async def api_token_revoke(request, datasette):
    """``POST /admin/api-tokens/<id>/revoke``: an admin revokes any user's API token (issue 26 item 4)."""
    denied = _forbidden(request)
    if denied:
        return denied
    hub.context(datasette).accounts.api_tokens.revoke(int(request.url_vars["id"]), request.actor["id"])
    return Response.redirect("/admin#api-tokens")


@hookimpl
def register_routes():
    return [
        (r"^/admin$", admin_page),
        (r"^/admin/scope-options$", scope_options),
        (r"^/admin/invites$", create_invite),
        (r"^/admin/invites/(?P<id>\d+)/revoke$", revoke_invite),
        (r"^/admin/users/(?P<username>[A-Za-z0-9._@-]{1,64})$", update_user),
        (r"^/admin/servers/(?P<id>\d+)/delete$", server_delete),
        (r"^/admin/tokens$", agent_token),
        (r"^/admin/api-tokens/(?P<id>\d{1,18})/revoke$", api_token_revoke),
        (r"^/admin/gpus$", gpus_bulk),
        (r"^/admin/groups$", groups_bulk),
    ]
