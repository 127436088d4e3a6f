"""Accounts and sessions, kept in their own SQLite file (``auth.db``), never served.

Sessions are server-side: the browser holds a random session id inside a cookie signed
by Datasette; the database stores only its SHA-256. Each request looks the session up
again, so logout, expiry, deletion and role changes take effect on the next request.
The config admin (``auth.username``) has sessions but no row in ``users``: its
password lives only in ``config.yaml``.
"""

import hashlib
import secrets
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    client TEXT
);
CREATE INDEX IF NOT EXISTS sessions_username ON sessions (username);
"""


def _hash(session_id):
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class Accounts:
    """Session store over ``path``; thread-safe (a connection per thread)."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(SCHEMA)

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def create_session(self, username, source, hours, client=None):
        """Start a session; returns the raw session id (to be signed into the cookie)."""
        session_id = secrets.token_urlsafe(32)
        now = int(time.time())
        self._conn().execute(
            "INSERT INTO sessions (id_hash, username, source, created_at, expires_at, client)"
            " VALUES (?,?,?,?,?,?)",
            (_hash(session_id), username, source, now, now + int(hours * 3600), client),
        )
        return session_id

    def session(self, session_id):
        """The live session row for ``session_id`` (dict) or None if unknown/expired."""
        if not isinstance(session_id, str) or not session_id:
            return None
        row = self._conn().execute(
            "SELECT username, source, created_at, expires_at FROM sessions WHERE id_hash = ?",
            (_hash(session_id),),
        ).fetchone()
        if row is None or row["expires_at"] <= time.time():
            return None
        return dict(row)

    def end_session(self, session_id):
        """Delete one session (logout)."""
        if isinstance(session_id, str):
            self._conn().execute("DELETE FROM sessions WHERE id_hash = ?", (_hash(session_id),))

    def end_sessions_of(self, username):
        """Delete every session of ``username``; returns how many."""
        return self._conn().execute("DELETE FROM sessions WHERE username = ?", (username,)).rowcount

    def purge_expired(self):
        """Delete expired sessions; returns how many."""
        return self._conn().execute("DELETE FROM sessions WHERE expires_at <= ?", (int(time.time()),)).rowcount


class LoginLimiter:
    """Login budget: at most ``limit`` failed attempts per ``window`` seconds per key.

    Keys are ``"ip:<address>"`` and ``"user:<name>"``. :meth:`reserve` counts an attempt
    as failed *before* the password is checked (so concurrent attempts cannot overrun
    the budget) and :meth:`succeeded` takes it back when the password was right.
    """

    def __init__(self, limit=5, window=300):
        self.limit, self.window = limit, window
        self._attempts = {}
        self._lock = threading.Lock()

    def _recent(self, key, now):
        times = [t for t in self._attempts.get(key, ()) if now - t < self.window]
        if times:
            self._attempts[key] = times
        else:
            self._attempts.pop(key, None)
        return times

    def reserve(self, keys, now=None):
        """Claim one attempt for every key. Returns ``(token, retry_after_seconds)``:
        a token (pass it to :meth:`succeeded`) and 0, or None and the wait in seconds."""
        now = time.time() if now is None else now
        with self._lock:
            waits = []
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.limit:
                    waits.append(int(times[-self.limit] + self.window - now) + 1)
            if waits:
                return None, max(waits)
            for key in keys:
                self._attempts.setdefault(key, []).append(now)
            return (now, tuple(keys)), 0

    def succeeded(self, token):
        """Forget the attempt claimed by ``token`` (the password was right)."""
        now, keys = token
        with self._lock:
            for key in keys:
                times = self._attempts.get(key)
                if times and now in times:
                    times.remove(now)
