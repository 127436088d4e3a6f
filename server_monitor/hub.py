"""Per-Datasette-instance hub state shared by the plugins in ``plugins/``.

``context(datasette)`` builds it once (config from ``$SERVER_MONITOR_CONFIG``, the
accounts store, the login limiter, the ingest WSGI app) and caches it on the instance.
"""

import os
import threading

from . import config as config_mod
from .accounts import Accounts, LoginLimiter

SESSION_COOKIE = "sm_session"
SESSION_NAMESPACE = "sm-session"

_lock = threading.Lock()


class HubContext:
    """What the plugins need: ``config``, ``accounts``, ``limiter``, ``ingest`` (WSGI app)."""

    def __init__(self, config):
        import ingest  # top-level module, importable from the repo root / installed project

        self.config = config
        self.accounts = Accounts(config.auth_db_path)
        self.limiter = LoginLimiter(limit=5, window=300)
        self.ingest = ingest.make_application(config)
        self.admin_username = config.get("auth.username")
        self.session_hours = float(config.get("auth.session_hours", 12))

    def actor_for_session(self, session_id):
        """Actor dict for a live session id, or None.

        The config admin: ``{"id": <auth.username>, "role": "admin"}``. A user:
        ``{"id", "role", "processes": bool}`` plus ``"servers": [ids]`` for a viewer limited
        to some servers (analysts and admins always see all). Session and user are looked
        up on every request, so logout, deletion and role or scope changes apply at once.
        """
        session = self.accounts.session(session_id)
        if session is None:
            return None
        if session["source"] == "config":
            if session["username"] == self.admin_username:
                return {"id": self.admin_username, "role": "admin", "processes": True, "source": "config"}
            return None
        user = self.accounts.user(session["username"])
        if user is None:
            return None
        actor = {"id": user["username"], "role": user["role"], "processes": bool(user["see_processes"]),
                 "source": "user"}
        if user["role"] == "viewer" and user["servers"] is not None:
            actor["servers"] = user["servers"]
        return actor


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
