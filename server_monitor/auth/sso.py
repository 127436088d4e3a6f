"""Single sign-on through a forward-auth proxy (issue 26 item 5): oauth2-proxy, Authelia, Authentik.

The proxy authenticates the browser against the lab's identity provider and passes the user
and the user's groups to the hub in request headers (``sso.user_header``, default
``X-Forwarded-User``; ``sso.groups_header``, default ``X-Forwarded-Groups``, split at
``sso.groups_separator``). Those headers are believed **only** when the TCP peer of the request
(the socket address, never a header) is in ``sso.proxies``: a client that reaches the hub any
other way and sends the same headers is ignored (and logged once). Off unless ``sso.enabled``.

Groups map to a role (``sso.roles``: proxy group -> viewer/analyst/admin; the highest wins,
else ``sso.default_role``) and, for viewers, to host groups (``sso.host_groups``: proxy group ->
host groups, server_monitor/storage/groups.py); a viewer with no mapped host group sees all
servers (``sso.default_scope: all``) or none (``none``). Users are created on their first
request with that role and scope and ``created_by = "sso"``; such users' role and scope follow
the proxy's groups on every request until an admin edits them on /admin (:func:`pin`). A user
that exists already (created by invite) keeps the role and scope an admin gave it: the proxy
only proves who it is.
"""

from ..core import peers
from .accounts import ROLES, AccountError, check_username

# Password hash of users created by SSO: no password ever matches it (they log in through the proxy).
NO_PASSWORD = "!sso"
CREATED_BY = "sso"
# An SSO user whose role or scope an admin set on /admin: the admin's choice wins over the proxy's
# groups from then on, as for an invited user (attack run A7: a demotion was undone on the next request).
PINNED_BY_ADMIN = "sso (role set by admin)"
_RANK = {role: n for n, role in enumerate(ROLES)}  # viewer < analyst < admin


class SSOError(AccountError):
    """The proxy sent a user the hub cannot take; ``str()`` is shown (403)."""


def _nets(config):
    sso = config.data["sso"]
    nets = sso.get("_nets")
    if nets is None:
        nets = sso["_nets"] = peers.networks(sso.get("proxies"))
    return nets


def peer_is_proxy(scope, config):
    """True when the socket peer of ASGI ``scope`` is one of ``sso.proxies`` (IPv4-mapped IPv6 as IPv4)."""
    return peers.peer_in(scope, _nets(config))


def _header(scope, name):
    name = name.lower().encode("latin-1")
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def sends_identity(scope, config):
    """True when ``scope`` carries the configured user header (from anyone: for the warning)."""
    return bool(config.get("sso.enabled")) and bool((_header(scope, config.get("sso.user_header")) or "").strip())


def identity(scope, config):
    """``(username, [proxy groups])`` from a request of the trusted proxy, else None (SSO off, the
    peer is not in ``sso.proxies``, or no user header). Raises :class:`SSOError` for a user name
    the hub cannot take (1-64 of ``[A-Za-z0-9._@-]``) and for more than one user header line."""
    if not config.get("sso.enabled") or not peer_is_proxy(scope, config):
        return None
    wanted_user = config.get("sso.user_header").lower().encode("latin-1")
    lines = [value for key, value in scope.get("headers") or () if key == wanted_user]
    if len(lines) > 1:
        # A proxy sets the header once. Two lines mean one came from the client (a proxy that
        # appends instead of replacing): never pick one of them (attack run A3).
        raise SSOError("The sign-on proxy sent more than one user header; it must replace the client's"
                       " (docs/operations.md, Single sign-on).")
    user = lines[0].decode("latin-1").strip() if lines else ""
    if not user:
        return None
    try:
        check_username(user)
    except AccountError:
        raise SSOError("The sign-on proxy sent a user name this hub cannot take (1 to 64 letters, digits,"
                       " '.', '_', '-' or '@').")
    # Every line of the groups header (oauth2-proxy sends one line per group, Authelia one line
    # joined by ",", Authentik one joined by "|"), each split at the separator.
    wanted = (config.get("sso.groups_header") or "").lower().encode("latin-1")
    separator = config.get("sso.groups_separator") or ","
    groups = sorted({g.strip() for key, value in scope.get("headers") or () if wanted and key == wanted
                     for g in value.decode("latin-1").split(separator) if g.strip()})
    return user, groups[:256]


def mapped(config, groups):
    """What the proxy groups give: ``(role, servers, host_groups, see_processes)`` as
    :meth:`server_monitor.auth.accounts.Accounts.create_user` takes them (``servers`` None = all
    servers; ``[]`` with host groups = those groups' servers only)."""
    role = config.get("sso.default_role") or "viewer"
    for group in groups:
        candidate = (config.get("sso.roles") or {}).get(group)
        if candidate in _RANK and _RANK[candidate] > _RANK[role]:
            role = candidate
    if role != "viewer":
        return role, None, None, True
    host_groups = set()
    for group in groups:
        names = (config.get("sso.host_groups") or {}).get(group) or []
        host_groups.update([names] if isinstance(names, str) else names)
    see = bool(config.get("sso.see_processes"))
    if host_groups:
        return role, [], sorted(host_groups), see
    return role, (None if config.get("sso.default_scope") == "all" else []), None, see


def sync_user(accounts, config, username, groups):
    """The ``auth.db`` user for an SSO login (dict as ``Accounts.user``): created on first login
    with the mapped role and scope; an SSO-created user's role and scope updated when the
    proxy's groups changed. Raises :class:`SSOError` when the name is the config admin's."""
    if username.lower() == str(config.get("auth.username") or "").lower():
        raise SSOError("The sign-on proxy sent the config admin's name; the config admin logs in with its password"
                       " (give it another name in auth.username).")
    role, servers, host_groups, see = mapped(config, groups)
    user = accounts.user(username)
    if user is None:
        try:
            accounts.create_user(username, NO_PASSWORD, role, servers=servers, see_processes=see,
                                 created_by=CREATED_BY, groups=host_groups)
        except AccountError:  # created by a parallel first request
            pass
        return accounts.user(username)
    if user.get("created_by") == CREATED_BY:
        want = (role, servers if role == "viewer" else None, sorted(host_groups or []) if role == "viewer" else [],
                see if role == "viewer" else True)
        have = (user["role"], user["servers"], sorted(user.get("groups") or []), bool(user["see_processes"]))
        if want != have:
            accounts.update_user(user["username"], role=role, servers=want[1], see_processes=want[3],
                                 groups=host_groups)
            user = accounts.user(username)
    return user


def pin(accounts, username):
    """Stop following the proxy's groups for SSO user ``username`` (an admin has just set its role
    or scope on /admin); True when it was an SSO-created user still following them."""
    return accounts.connection().execute("UPDATE users SET created_by = ? WHERE username = ? AND created_by = ?",
                                         (PINNED_BY_ADMIN, username, CREATED_BY)).rowcount == 1
