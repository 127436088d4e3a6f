"""The admin panel at ``/admin``: invites, users, servers and GPUs, announcements, agent tokens.

Server-rendered (``templates/admin.html``, no data in scripts). Account changes go to
``auth.db`` through the routes below; server/GPU status and announcements go through the
admin-only write canned queries in ``canned_queries/admin_*.sql``. Every form carries
Datasette's CSRF token; every route answers 403 to anyone but an admin.
"""

import fnmatch
import secrets
from urllib.parse import parse_qs

from datasette import hookimpl
from datasette.utils.asgi import Response
from datasette_auth_passwords.utils import hash_password

from server_monitor.serving import hub
from server_monitor.auth import tokens
from server_monitor.jobs.alerts import identity_text
from server_monitor.auth.accounts import ROLES, AccountError
from server_monitor.serving.queries import DATABASE, QUERIES, run
from server_monitor.storage import groups as host_groups
from server_monitor.storage.store import delete_server
from server_monitor.serving.web import page


def _forbidden(request, post=True):
    if (request.actor or {}).get("role") != "admin":
        return Response.html("<!DOCTYPE html><title>Forbidden</title><link rel=stylesheet href=/static/dashboard.css>"
                             "<main><h1>Forbidden</h1><p>This page is for admins. <a href=/>Back to the dashboard</a>"
                             "</p></main>", status=403)
    if post and request.method != "POST":
        return Response.text("Method not allowed: use the forms on /admin", status=405, headers={"allow": "POST"})
    return None


class Form(dict):
    """Form fields with repeated names kept (checkbox lists)."""

    def getlist(self, key):
        return self.get(key, [])

    def first(self, key, default=None):
        values = self.get(key)
        return values[0] if values else default


async def read_form(request):
    body = (await request.post_body()).decode("utf-8", "replace")
    return Form(parse_qs(body, keep_blank_values=True))


def _servers_from_form(form):
    """Scope from the form: None for all servers, else the checked server ids."""
    if form.first("scope") != "some":
        return None
    return [int(v) for v in form.getlist("servers") if v.isdigit()]


def _groups_from_form(form):
    """Host groups of the scope (text field ``groups``, names split by commas/spaces); ``[]`` unless
    the scope is ``some``. Raises :class:`host_groups.GroupError` for a bad name."""
    if form.first("scope") != "some":
        return []
    return host_groups.parse_list(form.first("groups") or "")


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


async def render(request, datasette, status=200, **extra):
    ctx = hub.context(datasette)
    actor = request.actor
    servers = await run(datasette, "servers", actor)
    gpus = await run(datasette, "gpus", actor)
    names = {row["server_id"]: row["name"] for row in servers}
    lost_gpus = [dict(g, server=names.get(g["server_id"], "?")) for g in await run(datasette, "fleet_gpus", actor, servers="")
                 if not g["present"]]
    announcements = await run(datasette, "announcements", actor)
    identity_events = await run(datasette, "host_identity_events", actor)
    agent_tokens = tokens.list_tokens(ctx.accounts.connection())
    # Not "base_url": Datasette's own template variable of that name would win. server.public_url
    # when configured: the Host header can be forged (see docs/security.md I5).
    site_url = (ctx.config.get("server.public_url") or f"{request.scheme}://{request.host}").rstrip("/")
    return await page(
        datasette, request, "admin.html", status=status,
        servers=servers, gpus=gpus, lost_gpus=lost_gpus, announcements=announcements, users=ctx.accounts.users(),
        invites=ctx.accounts.invites(), agent_tokens=agent_tokens, identity_events=identity_events,
        identity_text=identity_text, roles=ROLES, site_url=site_url,
        group_summary=await datasette.get_database(DATABASE).execute_fn(host_groups.summary),
        admin_username=ctx.admin_username, **extra,
    )


async def admin_page(request, datasette):
    return _forbidden(request, post=False) or await render(request, datasette)


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
            created_by=request.actor["id"], groups=_groups_from_form(form))
    except (AccountError, ValueError) as exc:
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
            password = secrets.token_urlsafe(12)
            password_hash = await ctx.password_work(hash_password, password)
            ctx.accounts.set_password(username, password_hash)
            return await render(request, datasette, reset={"username": username, "password": password})
        else:
            ctx.accounts.update_user(username, role=form.first("role"), servers=_servers_from_form(form),
                                     see_processes=form.first("see_processes") == "on", groups=_groups_from_form(form))
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
    verb = "added to" if action == "add" else "removed from"
    return await render(request, datasette, group_done=f"{changed} of {len(chosen)} matching servers {verb} group {group}.")


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
    servers = {str(s["server_id"]): s for s in await run(datasette, "servers", request.actor)}
    server = servers.get(form.first("server_id") or "")
    if server is None:
        return await render(request, datasette, status=400, error="Choose a server for the token.")
    db = datasette.get_database(DATABASE)
    machine_id = (await db.execute("SELECT machine_id FROM servers WHERE id = ?", [server["server_id"]])).first()[0]
    token_id, value = tokens.issue(conn, machine_id, server["name"])
    return await render(request, datasette, new_token={"id": token_id, "token": value, "server": server["name"]})


@hookimpl
def register_routes():
    return [
        (r"^/admin$", admin_page),
        (r"^/admin/invites$", create_invite),
        (r"^/admin/invites/(?P<id>\d+)/revoke$", revoke_invite),
        (r"^/admin/users/(?P<username>[A-Za-z0-9._@-]{1,64})$", update_user),
        (r"^/admin/servers/(?P<id>\d+)/delete$", server_delete),
        (r"^/admin/tokens$", agent_token),
        (r"^/admin/gpus$", gpus_bulk),
        (r"^/admin/groups$", groups_bulk),
    ]
