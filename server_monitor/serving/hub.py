"""Per-Datasette-instance hub state shared by the plugins in ``plugins/``.

``context(datasette)`` builds it once (config from ``$SERVER_MONITOR_CONFIG``, the
accounts store, the login limiter, the ingest WSGI app) and caches it on the instance.
"""

import asyncio
import hmac
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

from itsdangerous.url_safe import URLSafeSerializer

from ..core import config as config_mod
from ..core import peers
from .analyst import AnalystSQL
from ..auth import sso as sso_mod
from ..auth.accounts import Accounts, LoginLimiter
from ..auth.api_tokens import RequestBudget
from ..auth.contacts import NotifyStore
from ..storage import groups as groups_mod

SESSION_COOKIE = "sm_session"
# Behind https the session cookie is __Host- prefixed: Secure, Path=/, no Domain, so a sibling
# subdomain or plain-http page cannot plant or overwrite it (see docs/security.md M1).
SECURE_SESSION_COOKIE = "__Host-sm_session"
SESSION_NAMESPACE = "sm-session"
CSRF_COOKIE = "ds_csrftoken"  # Datasette's (asgi-csrf) cookie name


def _scope_header(scope, name):
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


def from_trusted_proxy(scope, config):
    """True when ``auth.trusted_proxy_header`` is set and the socket peer of ``scope`` is one of
    ``auth.trusted_proxies`` (addresses or networks; default loopback). Only then are the
    proxy's headers believed: a client reaching the hub directly could otherwise pick its
    own address for every request and get a fresh login budget each time (I-6)."""
    if not config.get("auth.trusted_proxy_header"):
        return False
    nets = config.data["auth"].get("_trusted_nets")
    if nets is None:
        nets = config.data["auth"]["_trusted_nets"] = peers.networks(config.get("auth.trusted_proxies"))
    return peers.peer_in(scope, nets)


def scope_is_https(scope, config):
    """True when the browser talks https to the hub: directly, or to a trusted proxy
    (``auth.trusted_proxy_header`` set, the peer in ``auth.trusted_proxies``) that says so in
    ``X-Forwarded-Proto``."""
    if scope.get("scheme") == "https":
        return True
    if from_trusted_proxy(scope, config):
        return _scope_header(scope, b"x-forwarded-proto").strip().lower() == "https"
    return False


def session_cookie_name(https):
    """``__Host-sm_session`` over https, ``sm_session`` over plain http."""
    return SECURE_SESSION_COOKIE if https else SESSION_COOKIE


def csrf_token_for_session(datasette, session_id):
    """The CSRF token bound to a session (see docs/security.md M1): ``HMAC-SHA256(secret, "csrf:" + session id)``,
    signed the way asgi-csrf signs its cookie so Datasette's check accepts it.

    Deterministic for a session, unknown to anyone without both the secret and the session id,
    so a token taken from another (anonymous) page or planted in a cookie never matches.
    """
    digest = hmac.new(datasette._secret.encode("utf-8"), b"csrf:" + session_id.encode("utf-8"), "sha256").hexdigest()
    return URLSafeSerializer(datasette._secret).dumps(digest, "csrftoken")

_lock = threading.Lock()
# At most this many password hashes/checks queued or running at once (see docs/security.md M2).
PASSWORD_QUEUE = 32


class PasswordBusy(Exception):
    """Too many password checks are waiting; try again in a few seconds."""


class HubContext:
    """What the plugins need: ``config``, ``accounts``, ``limiter``, the password pool, the analysts' SQL gate.

    The ingest WSGI app is not built here (``server_monitor`` never imports the top-level
    ``ingest.py``): ``plugins/sm_gate.py`` builds it at startup and keeps it as ``ctx.ingest``.
    """

    ingest = None
    jobs = None  # server_monitor.jobs.leader.JobsLeader, set by plugins/sm_jobs.py at startup
    fleet_thread = None
    checkpoint_thread = None
    maintenance_thread = None
    alert_thread = None
    nudge_thread = None
    replication_thread = None

    def __init__(self, config):
        self.config = config
        self.accounts = Accounts(config.auth_db_path)
        # Notification targets, contacts, delivery failures (auth.db; server_monitor/auth/contacts.py).
        self.notify_store = NotifyStore(config.auth_db_path)
        # Shared by every worker process through auth.db (one budget, not one per worker).
        self.limiter = LoginLimiter(config.auth_db_path, limit=5, window=300, name="login")
        # Registrations: failures (bad invite, taken name) per client address and per invite (see docs/security.md M2).
        self.register_limiter = LoginLimiter(config.auth_db_path, limit=10, window=300, name="register")
        # Right passwords cost a PBKDF2 run too: budgeted per user and (3x) per address (N10).
        per_minute = int(config.get("auth.logins_per_minute", 20))
        self.success_limiter = LoginLimiter(config.auth_db_path, limit=per_minute, window=60, name="login-ok",
                                            limits={"ip": 3 * per_minute})
        self.max_sessions = int(config.get("auth.max_sessions_per_user", 20))
        # PBKDF2 (480,000 rounds, ~0.5 s of one core) runs on these few threads only, so a
        # burst of password checks queues instead of taking every core (see docs/security.md M2).
        # Split between worker processes, so all of them together still leave half the cores.
        workers = config_mod.worker_count(config)
        self.password_workers = max(1, (os.cpu_count() or 2) // 2 // workers)
        self._password_pool = ThreadPoolExecutor(self.password_workers, thread_name_prefix="pbkdf2")
        self._password_queue = threading.BoundedSemaphore(PASSWORD_QUEUE)
        # Analysts' ad-hoc SQL: bounded concurrency, queue and time limit (see docs/security.md L6).
        self.analyst_sql = AnalystSQL.from_config(config)
        self.admin_username = config.get("auth.username")
        self.admin_fingerprint = admin_fingerprint(config)
        self.session_hours = float(config.get("auth.session_hours", 12))
        self._monitor_local = threading.local()  # read-only monitor.db connection per thread (group scopes)
        # API token requests per minute per token, split between the worker processes (issue 26 item 4).
        per_token = int(config.get("auth.api_token_requests_per_minute", 120))
        self.token_budget = RequestBudget(-(-per_token // workers))
        # ... and per owner, all of its tokens together (attack run A2: 50 tokens were 50 budgets).
        per_user = config.get("auth.api_token_user_requests_per_minute") or 3 * per_token
        self.token_owner_budget = RequestBudget(-(-int(per_user) // workers))

    def group_members(self, groups):
        """Sorted ids of the servers now in any of ``groups`` (monitor.db ``server_groups``, any
        source): one indexed read on a read-only connection of this thread. ``[]`` when monitor.db
        cannot be read (a viewer then sees only the servers listed by id, never more)."""
        if not groups:
            return []
        conn = getattr(self._monitor_local, "conn", None)
        try:
            if conn is None:
                conn = sqlite3.connect(f"file:{self.config.db_path}?mode=ro", uri=True, timeout=5.0,
                                       check_same_thread=False)
                self._monitor_local.conn = conn
            return groups_mod.members(conn, groups)
        except sqlite3.Error:
            self._monitor_local.conn = None
            return []

    async def password_work(self, fn, *args):
        """Run ``fn(*args)`` (a PBKDF2 hash or check) on the bounded password pool; returns its result.

        Raises :class:`PasswordBusy` when :data:`PASSWORD_QUEUE` jobs are already queued or
        running (the caller answers 429/503 instead of piling up work).
        """
        if not self._password_queue.acquire(blocking=False):
            raise PasswordBusy()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._password_pool, fn, *args)
        finally:
            self._password_queue.release()

    def dead_jobs(self):
        """Names of this process's background threads that were started but have died (see docs/security.md M3)."""
        return dead_jobs(self)

    def background_problems(self):
        """Names of the hub's dead background threads, in whichever worker process runs them."""
        return self.jobs.dead() if self.jobs is not None else self.dead_jobs()

    def actor_for_session(self, session_id):
        """Actor dict for a live session id, or None.

        The config admin: ``{"id": <auth.username>, "role": "admin"}``. A user:
        ``{"id", "role", "processes": bool}`` plus ``"servers": [ids]`` for a viewer limited
        to some servers (analysts and admins always see all): the user's own ids plus the
        servers now in the user's host groups (``"groups": [names]`` then too). Session, user
        and group members are looked up on every request, so logout, deletion, role or scope
        changes and a server joining or leaving a group apply at once.
        """
        session = self.accounts.session(session_id)
        if session is None:
            return None
        if session["source"] == "config":
            # Sessions made with an older admin credential end when it changes (see docs/security.md L1).
            if session["username"] == self.admin_username and session.get("fingerprint") == self.admin_fingerprint:
                return self.actor_for_user(session["username"], "config")
            return None
        return self.actor_for_user(session["username"], "user")

    def actor_for_user(self, username, source, user=None):
        """The actor of ``username`` now (see :meth:`actor_for_session`), or None for a user that
        no longer exists. ``source``: ``config`` (the config admin) or ``user`` (``auth.db``);
        ``user``: the row when the caller has just read it."""
        if source == "config":
            if username != self.admin_username:
                return None
            return {"id": self.admin_username, "role": "admin", "processes": True, "source": "config"}
        user = user or self.accounts.user(username)
        if user is None:
            return None
        actor = {"id": user["username"], "role": user["role"], "processes": bool(user["see_processes"]),
                 "source": "user"}
        if user["role"] == "viewer" and user["servers"] is not None:
            actor["servers"] = user["servers"]
            if user.get("groups"):
                actor["groups"] = list(user["groups"])
                actor["servers"] = sorted(set(user["servers"]) | set(self.group_members(user["groups"])))
        return actor

    def actor_for_token(self, token, client=None):
        """``(actor, None)`` for a live API token (issue 26 item 4): its owner's actor now, plus
        ``"token": "smu"`` and ``"token_id"`` (Datasette 1.0 marks its ``dstok_`` actors the same
        way), so the gate and the permission hook can refuse what tokens never do. Else
        ``(None, reason)``: ``unknown``, ``revoked``, ``expired`` or ``owner gone``."""
        row, reason = self.accounts.api_tokens.resolve(token, client=client)
        if row is None:
            return None, reason
        if row["source"] == "config" and row["username"] != self.admin_username:
            return None, "owner gone"
        actor = self.actor_for_user(row["username"], row["source"])
        if actor is None:
            return None, "owner gone"
        return dict(actor, token="smu", token_id=row["id"]), None

    def actor_for_sso(self, scope):
        """The actor of the user the trusted sign-on proxy names in ``scope``'s headers (issue 26
        item 5), created or updated from its groups (``server_monitor.auth.sso``), marked
        ``"login": "sso"``; None when SSO is off, the peer is not the proxy or no user header came.
        Raises :class:`server_monitor.auth.sso.SSOError` (403)."""
        found = sso_mod.identity(scope, self.config)
        if found is None:
            return None
        user = sso_mod.sync_user(self.accounts, self.config, *found)
        actor = self.actor_for_user(user["username"], "user", user) if user else None
        return dict(actor, login="sso") if actor else None


def dead_jobs(holder):
    """Names of ``holder``'s job threads that were started but have died (list of str, see docs/security.md M3).

    An alert pass that failed but will be retried is not a death (its text is in
    ``alert_thread.last_error``). A thread with a ``down()`` method (the replication supervisor,
    ``jobs/replication.py``) also counts as dead while that says its child is not running."""
    dead = []
    for thread in (getattr(holder, "checkpoint_thread", None), getattr(holder, "maintenance_thread", None),
                   getattr(holder, "alert_thread", None), getattr(holder, "fleet_thread", None),
                   getattr(holder, "nudge_thread", None),
                   getattr(holder, "replication_thread", None)):
        if thread is not None and not thread.stopped.is_set() and (
                not thread.is_alive() or getattr(thread, "down", lambda: False)()):
            dead.append(thread.name)
    return dead


def admin_fingerprint(config):
    """Keyed hash (HMAC-SHA256 with ``server.secret_key``) of the admin credential in force:
    ``auth.password_hash``, else ``auth.password``. Stored with config-admin sessions (see docs/security.md L1);
    keyed so that ``auth.db`` holds nothing that helps guess a plain ``auth.password``."""
    credential = config.get("auth.password_hash") or "plain:" + str(config.get("auth.password") or "")
    key = str(config.get("server.secret_key") or "").encode("utf-8")
    return hmac.new(key, b"admin-credential:" + credential.encode("utf-8"), "sha256").hexdigest()


def context(datasette):
    """The :class:`HubContext` for ``datasette`` (created on first use)."""
    ctx = getattr(datasette, "_server_monitor", None)
    if ctx is None:
        with _lock:
            ctx = getattr(datasette, "_server_monitor", None)
            if ctx is None:
                ctx = HubContext(config_mod.load(os.environ.get(config_mod.ENV_VAR, "config.yaml")))
                datasette._server_monitor = ctx
    return ctx
