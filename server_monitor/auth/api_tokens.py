"""Users' read-only API tokens for scripts (issue 26 item 4), kept hashed in ``auth.db``.

A token is ``smu_`` + 43 URL-safe characters (32 random bytes). It is shown once, when created;
``auth.db`` keeps only its SHA-256 (a random 256-bit secret needs no slow hash: nothing can be
guessed from the digest), the first 8 characters after the prefix (so a user can tell tokens
apart on ``/account``), a name, the owner, an optional expiry, the revocation time and the last
time it was used (written at most once a minute per token).

A token acts as its owner with the owner's role and scope **as they are at each request**
(``server_monitor.serving.hub`` resolves the owner like a session's user), but only for reads:
``plugins/sm_gate.py`` refuses every non-GET request, ``/admin``, ``/account`` and the
``/-/`` pages for a token, whatever the owner's role. These are not the agents' per-host tokens
(``server_monitor.auth.tokens``, prefix ``smh_``): those only write reports.
"""

import hashlib
import secrets
import sqlite3
import time

PREFIX = "smu_"
# How many live (unrevoked, unexpired) tokens one user may hold.
MAX_PER_USER = 50
# Longest expiry a user may pick (days); None (no expiry) is allowed too.
MAX_DAYS = 3650
# last_used_at is written at most this often (s) per token, not on every request.
LAST_USED_RESOLUTION_S = 60

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    username TEXT NOT NULL COLLATE NOCASE,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    revoked_by TEXT,
    last_used_at INTEGER,
    last_used_from TEXT
);
CREATE INDEX IF NOT EXISTS api_tokens_username ON api_tokens (username);
"""


class TokenError(ValueError):
    """A token request that cannot be done; ``str()`` is shown to the user."""


def token_hash(token):
    """Hex SHA-256 of a token (what ``api_tokens.token_hash`` stores)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(value):
    """True when ``value`` has this module's shape (``smu_`` + 43 URL-safe characters); other
    bearer values (the Prometheus token, an agent token) are not API tokens."""
    return isinstance(value, str) and value.startswith(PREFIX) and len(value) == len(PREFIX) + 43


def check_name(name):
    """The stripped token name; raises :class:`TokenError` unless 1-64 printable characters."""
    name = (name or "").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise TokenError("A token name is 1 to 64 printable characters (say what the script is for).")
    return name


class ApiTokens:
    """The ``api_tokens`` table over a connection getter (``Accounts.connection``: one per thread)."""

    def __init__(self, connection):
        self._conn = connection
        self._conn().executescript(SCHEMA)

    def create(self, username, source, name, days=None, now=None):
        """A new token for ``username`` (``source``: ``user`` or ``config`` for the config admin).

        ``days``: expiry in days (1..:data:`MAX_DAYS`) or None for none. Returns ``(id, token)``;
        the token exists only in this return value. Raises :class:`TokenError` for a bad name or
        expiry, or when the user already holds :data:`MAX_PER_USER` live tokens.
        """
        name = check_name(name)
        now = int(time.time() if now is None else now)
        if days is not None and not (isinstance(days, int) and 1 <= days <= MAX_DAYS):
            raise TokenError(f"The expiry is 1 to {MAX_DAYS} days, or none.")
        conn = self._conn()
        live = conn.execute("SELECT count(*) FROM api_tokens WHERE username = ? AND revoked_at IS NULL"
                            " AND (expires_at IS NULL OR expires_at > ?)", (username, now)).fetchone()[0]
        if live >= MAX_PER_USER:
            raise TokenError(f"You hold {MAX_PER_USER} live tokens already; revoke one first.")
        token = PREFIX + secrets.token_urlsafe(32)
        cur = conn.execute(
            "INSERT INTO api_tokens (token_hash, hint, username, source, name, created_at, expires_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (token_hash(token), token[len(PREFIX):len(PREFIX) + 8], username, source, name, now,
             now + days * 86400 if days else None))
        return cur.lastrowid, token

    def resolve(self, token, client=None, now=None):
        """``(row, None)`` for a live token (dict: ``id``, ``username``, ``source``, ``name``,
        ``expires_at``), else ``(None, reason)`` with reason ``"unknown"``, ``"revoked"`` or
        ``"expired"``. Records the use (``last_used_at``, ``last_used_from`` = ``client``) at most
        once per :data:`LAST_USED_RESOLUTION_S`; a busy ``auth.db`` only delays that record."""
        if not looks_like_token(token):
            return None, "unknown"
        now = int(time.time() if now is None else now)
        conn = self._conn()
        row = conn.execute("SELECT id, username, source, name, expires_at, revoked_at, last_used_at FROM api_tokens"
                           " WHERE token_hash = ?", (token_hash(token),)).fetchone()
        if row is None:
            return None, "unknown"
        if row["revoked_at"] is not None:
            return None, "revoked"
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return None, "expired"
        if now - (row["last_used_at"] or 0) >= LAST_USED_RESOLUTION_S:
            try:
                conn.execute("UPDATE api_tokens SET last_used_at = ?, last_used_from = ? WHERE id = ?",
                             (now, client, row["id"]))
            except sqlite3.OperationalError:
                pass
        return {k: row[k] for k in ("id", "username", "source", "name", "expires_at")}, None

    def list(self, username=None, limit=500):
        """Tokens newest first (dicts without the hash): ``id``, ``hint``, ``username``, ``source``,
        ``name``, ``created_at``, ``expires_at``, ``revoked_at``, ``revoked_by``, ``last_used_at``,
        ``last_used_from`` (epoch s / address); only ``username``'s when given."""
        where, values = ("WHERE username = ?", [username]) if username is not None else ("", [])
        rows = self._conn().execute(
            "SELECT id, hint, username, source, name, created_at, expires_at, revoked_at, revoked_by, last_used_at,"
            f" last_used_from FROM api_tokens {where} ORDER BY id DESC LIMIT ?", values + [int(limit)])
        return [dict(row) for row in rows]

    def revoke(self, token_id, by, username=None, now=None):
        """Revoke token ``token_id`` (``by``: who did it). With ``username`` only that user's token
        is touched (a user revoking on ``/account``); returns True when a live token was revoked."""
        now = int(time.time() if now is None else now)
        sql = "UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL"
        values = [now, by, int(token_id)]
        if username is not None:
            sql += " AND username = ?"
            values.append(username)
        return self._conn().execute(sql, values).rowcount == 1

    def revoke_all_of(self, username, by, now=None):
        """Revoke every live token of ``username`` (a deleted user); returns how many."""
        now = int(time.time() if now is None else now)
        return self._conn().execute("UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE username = ?"
                                    " AND revoked_at IS NULL", (now, by, username)).rowcount


class RequestBudget:
    """At most ``limit`` requests per ``window`` seconds per key (a token id), in this process.

    The hub's worker processes each hold one (``HubContext`` divides the configured limit by
    the worker count), so the whole hub allows about the configured rate; a fixed one-minute
    window per key, reset when it ends. Thread-safe enough for the event loop (one thread).
    """

    def __init__(self, limit, window=60.0):
        self.limit, self.window = max(1, int(limit)), float(window)
        self._windows = {}  # key -> [window start (monotonic), count]

    def take(self, key, now):
        """0 when the request may go on, else the seconds (int >= 1) until the window ends."""
        if len(self._windows) > 10000:  # forget finished windows of tokens no longer used
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window}
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return max(1, int(start + self.window - now + 0.999))
        self._windows[key] = [start, count + 1]
        return 0
