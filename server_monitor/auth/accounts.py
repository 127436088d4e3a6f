"""Accounts, invites and sessions, kept in their own SQLite file (``auth.db``), never served.

Sessions are server-side: the browser holds a random session id inside a cookie signed
by Datasette; the database stores only its SHA-256. Each request looks the session and
the user up again, so logout, expiry, deletion and role or scope changes take effect on
the next request. The config admin (``auth.username``) has sessions but no row in
``users``: its password lives only in ``config.yaml``.

Users have a PBKDF2 password hash (datasette-auth-passwords' format), a role
(``viewer``, ``analyst``, ``admin``) and a scope (``servers``: NULL for all servers, or a
JSON list of server ids; ``see_processes``). Invite codes are stored as SHA-256 and
consumed atomically, so a code can never be used more often than allowed.
"""

import hashlib
import json
import secrets
import sqlite3
import threading
import time

from . import api_tokens, tokens

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
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    servers TEXT,
    see_processes INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    created_by TEXT
);
CREATE TABLE IF NOT EXISTS invites (
    id INTEGER PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    servers TEXT,
    see_processes INTEGER NOT NULL DEFAULT 1,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT,
    revoked_at INTEGER
);
"""

ROLES = ("viewer", "analyst", "admin")
USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
MIN_PASSWORD = 10


class AccountError(ValueError):
    """A request about accounts that cannot be done; ``str()`` is shown to the user."""


def check_username(username):
    """Raise :class:`AccountError` unless ``username`` is 1-64 of ``[A-Za-z0-9._@-]``."""
    if not username or len(username) > 64 or not set(username) <= USERNAME_CHARS:
        raise AccountError("Usernames are 1 to 64 letters, digits, '.', '_', '-' or '@'.")


# Passwords of 10+ characters that lead every breached-password list (see docs/security.md I4); compared
# case-insensitively. Source: the top of the public "10k most common" lists (SecLists).
COMMON_PASSWORDS = frozenset("""
1234567890 0123456789 0987654321 1234567891 12345678910 123456789a 123456789q a123456789 q1w2e3r4t5
1q2w3e4r5t 1qaz2wsx3edc qwertyuiop qwerty1234 qwerty12345 1234qwerty asdfghjkl; asdfghjkl1 zxcvbnm123
password12 password123 password1234 password12345 passw0rd123 p@ssw0rd123 iloveyou12 iloveyou123
letmein123 welcome123 welcome1234 changeme123 administrator admin12345 admin123456 abcdefghij
abcd123456 abc1234567 football123 baseball123 monkey1234 dragon1234 sunshine12 princess12 trustno123
starwars123 superman123 1111111111 0000000000 1234512345 9876543210 1029384756 qazwsxedcrfv
""".split())


def check_password(password, username=None):
    """Raise :class:`AccountError` unless ``password`` meets the policy (see docs/security.md I4).

    10-1024 characters, at least 4 different characters, not the username (or the
    username with a few characters around it), not in :data:`COMMON_PASSWORDS`.
    """
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"Passwords need at least {MIN_PASSWORD} characters.")
    if len(password) > 1024:
        raise AccountError("Passwords are at most 1024 characters.")
    if len(set(password)) < 4:
        raise AccountError("This password is too easy to guess: use at least 4 different characters.")
    lowered = password.lower()
    # The username once or repeated ("admin2admin2", I-3), with fewer than 6 other characters.
    if username and len(username) >= 3 and username.lower() in lowered \
            and len(lowered.replace(username.lower(), "")) < 6:
        raise AccountError("The password must not be (or be close to) the username.")
    if lowered in COMMON_PASSWORDS:
        raise AccountError("This password is on every list of common passwords; choose another.")


def role_scope(role, servers, see_processes):
    """Scope that applies to ``role``: only viewers can be limited; others see everything."""
    if role == "viewer":
        return servers, see_processes
    return None, True


def groups_json(groups):
    """``None`` (no group scope) or the sorted group names as stored in ``users.groups``.

    A viewer's scope is ``servers`` (ids) **plus** every server in one of ``groups`` at the time of
    each request (``server_monitor.serving.hub`` resolves them in monitor.db), so a server that
    joins a group later comes into scope with no edit. ``servers IS NULL`` still means all
    servers; a group-only scope is ``servers = []`` with ``groups`` set."""
    if not groups:
        return None
    return json.dumps(sorted({str(g) for g in groups}))


def _decoded(row):
    item = dict(row)
    item["servers"] = json.loads(item["servers"]) if item["servers"] is not None else None
    item["groups"] = json.loads(item["groups"]) if item.get("groups") else []
    return item


def scope_json(servers):
    """``None`` (all servers) or a list of ints as stored in ``users.servers``."""
    if servers is None:
        return None
    return json.dumps(sorted({int(s) for s in servers}))


# Session use is written back at most this often (seconds) per session, not on every request.
LAST_SEEN_RESOLUTION_S = 60


def _hash(session_id):
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def thread_connection(local, path):
    """The connection to ``auth.db`` at ``path`` kept on ``local`` (a ``threading.local``), opened
    on first use: autocommit, WAL, busy timeout 5 s, rows as ``sqlite3.Row``."""
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.row_factory = sqlite3.Row
        local.conn = conn
    return conn


class Accounts:
    """Session store over ``path``; thread-safe (a connection per thread)."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(SCHEMA)
        conn.executescript(tokens.SCHEMA)  # per-host agent tokens live in auth.db too
        # Look and add in one write transaction: the hub's worker processes all open auth.db at
        # start, and two that both saw a column missing both added it ("duplicate column name").
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
            if "fingerprint" not in columns:
                # Config-admin sessions remember which admin credential they were made with (see docs/security.md L1).
                conn.execute("ALTER TABLE sessions ADD COLUMN fingerprint TEXT")
            if "last_seen_at" not in columns:
                # When the session was last used (to the minute), for `server-monitor sessions list`.
                conn.execute("ALTER TABLE sessions ADD COLUMN last_seen_at INTEGER")
            for table in ("users", "invites"):
                # A viewer's scope by host group (issue 24 item 1): JSON list of group names, NULL = none.
                if "groups" not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN groups TEXT")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # Users' read-only API tokens (issue 26 item 4), in auth.db beside the sessions.
        self.api_tokens = api_tokens.ApiTokens(self._conn)

    def _conn(self):
        return thread_connection(self._local, self.path)

    def connection(self):
        """This thread's connection to ``auth.db`` (for :mod:`server_monitor.auth.tokens`)."""
        return self._conn()

    def create_session(self, username, source, hours, client=None, fingerprint=None, max_live=None):
        """Start a session; returns the raw session id (to be signed into the cookie).

        ``fingerprint``: for the config admin, a keyed hash of the admin credential in force
        (``HubContext.admin_fingerprint``); the session dies when that credential changes.
        ``max_live``: at most this many sessions of ``username`` stay; the oldest are ended (N10).
        """
        session_id = secrets.token_urlsafe(32)
        now = int(time.time())
        conn = self._conn()
        conn.execute(
            "INSERT INTO sessions (id_hash, username, source, created_at, expires_at, client, fingerprint)"
            " VALUES (?,?,?,?,?,?,?)",
            (_hash(session_id), username, source, now, now + int(hours * 3600), client, fingerprint),
        )
        if max_live:
            conn.execute("DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions WHERE username = ?"
                         " ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)", (username, int(max_live)))
        return session_id

    def session(self, session_id):
        """The live session row for ``session_id`` (dict) or None if unknown/expired."""
        if not isinstance(session_id, str) or not session_id:
            return None
        conn = self._conn()
        id_hash = _hash(session_id)
        row = conn.execute(
            "SELECT username, source, created_at, expires_at, fingerprint, last_seen_at FROM sessions WHERE id_hash = ?",
            (id_hash,),
        ).fetchone()
        now = int(time.time())
        if row is None or row["expires_at"] <= now:
            return None
        if now - (row["last_seen_at"] or 0) >= LAST_SEEN_RESOLUTION_S:  # at most one write a minute per session
            try:
                conn.execute("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?", (now, id_hash))
            except sqlite3.OperationalError:  # auth.db busy: "last seen" may lag, the request goes on
                pass
        return dict(row)

    def live_sessions(self):
        """Live (unexpired) sessions, newest first, for ``server-monitor sessions list``:
        dicts ``username``, ``source`` (``config`` admin or ``user``), ``created_at``,
        ``last_seen_at`` (epoch s, to :data:`LAST_SEEN_RESOLUTION_S`; None before the first use),
        ``expires_at``, ``client`` (address at login), ``ref`` (8 hex digits of the stored hash of
        the id: tells sessions apart, useless as a credential). Never the id itself."""
        rows = self._conn().execute(
            "SELECT substr(id_hash, 1, 8) AS ref, username, source, created_at, last_seen_at, expires_at, client"
            " FROM sessions WHERE expires_at > ? ORDER BY created_at DESC", (int(time.time()),))
        return [dict(row) for row in rows]

    def end_all_sessions(self):
        """Delete every session (everyone must log in again); returns how many."""
        return self._conn().execute("DELETE FROM sessions").rowcount

    def end_session(self, session_id):
        """Delete one session (logout)."""
        if isinstance(session_id, str):
            self._conn().execute("DELETE FROM sessions WHERE id_hash = ?", (_hash(session_id),))

    def end_sessions_of(self, username):
        """Delete every session of ``username``; returns how many."""
        return self._conn().execute("DELETE FROM sessions WHERE username = ?", (username,)).rowcount

    # -- users ------------------------------------------------------------------------
    def user(self, username):
        """The user row (dict, with ``servers`` decoded) or None."""
        row = self._conn().execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        return _decoded(row)

    def users(self):
        """Every user (dicts without password hashes), by username."""
        out = []
        for row in self._conn().execute("SELECT * FROM users ORDER BY username"):
            user = _decoded(row)
            user.pop("password_hash")
            out.append(user)
        return out

    def users_page(self, q="", limit=50, offset=0):
        """One page of users for /admin (issue 24 item 3): ``(users, total)``.

        ``q``: a case-insensitive part of the username or of ``created_by`` ("" for every user);
        ``limit`` (1..500) users by username from ``offset``; ``total`` counts every match.
        Users are dicts as :meth:`users` returns them, plus ``has_password`` (False for a user
        the sign-on proxy created, who has none: nothing to reset).
        """
        limit, offset = min(500, max(1, int(limit))), max(0, int(offset))
        where, values = "", []
        if q:
            where = " WHERE instr(lower(username || ' ' || coalesce(created_by, '')), lower(?)) > 0"
            values = [q]
        conn = self._conn()
        total = conn.execute(f"SELECT count(*) FROM users{where}", values).fetchone()[0]
        out = []
        for row in conn.execute(f"SELECT * FROM users{where} ORDER BY username LIMIT ? OFFSET ?", values + [limit, offset]):
            user = _decoded(row)
            # "!…" marks an account without a password (sso.NO_PASSWORD: created by the sign-on proxy).
            user["has_password"] = not (user.pop("password_hash") or "!").startswith("!")
            out.append(user)
        return out, total

    def create_user(self, username, password_hash, role, servers=None, see_processes=True, created_by=None,
                    groups=None):
        """Insert a user; raises :class:`AccountError` when the name is taken or invalid.
        ``groups``: host groups in the viewer's scope besides ``servers`` (see :func:`groups_json`)."""
        check_username(username)
        if role not in ROLES:
            raise AccountError(f"Unknown role {role!r}.")
        servers, see_processes = role_scope(role, servers, see_processes)
        if servers is None:
            groups = None
        try:
            cur = self._conn().execute(
                "INSERT INTO users (username, password_hash, role, servers, see_processes, created_at, created_by,"
                " groups) VALUES (?,?,?,?,?,?,?,?)",
                (username, password_hash, role, scope_json(servers), int(bool(see_processes)), int(time.time()),
                 created_by, groups_json(groups)),
            )
        except sqlite3.IntegrityError:
            raise AccountError(f"The username {username!r} is taken.")
        return cur.lastrowid

    def update_user(self, username, role=None, servers=(), see_processes=None, groups=()):
        """Change role and/or scope (``servers=None`` means all, and clears ``groups``; ``groups``: host
        groups in scope besides ``servers``). Effective on the next request."""
        sets, values = [], []
        if role is not None:
            if role not in ROLES:
                raise AccountError(f"Unknown role {role!r}.")
            sets.append("role = ?")
            values.append(role)
            if role != "viewer":  # analysts and admins see everything
                servers, see_processes = None, True
        if servers != ():
            sets.append("servers = ?")
            values.append(scope_json(servers))
            if servers is None:
                groups = None
        if groups != ():
            sets.append("groups = ?")
            values.append(groups_json(groups))
        if see_processes is not None:
            sets.append("see_processes = ?")
            values.append(int(bool(see_processes)))
        if not sets:
            return False
        cur = self._conn().execute(f"UPDATE users SET {', '.join(sets)} WHERE username = ?", values + [username])
        return cur.rowcount == 1

    def set_password(self, username, password_hash):
        """Replace a user's password hash and end all of that user's sessions."""
        cur = self._conn().execute("UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username))
        self.end_sessions_of(username)
        return cur.rowcount == 1

    def delete_user(self, username):
        """Delete a user, end all of that user's sessions and revoke its API tokens (a user made
        later under the same name never inherits them)."""
        cur = self._conn().execute("DELETE FROM users WHERE username = ?", (username,))
        self.end_sessions_of(username)
        self.api_tokens.revoke_all_of(username, "user deleted")
        return cur.rowcount == 1

    # -- invites ----------------------------------------------------------------------
    def create_invite(self, role, hours, max_uses=1, servers=None, see_processes=True, created_by=None, groups=None):
        """New invite; returns ``(id, code)`` — the code exists only in this return value.
        ``groups``: host groups in the invited viewer's scope besides ``servers``."""
        if role not in ROLES:
            raise AccountError(f"Unknown role {role!r}.")
        servers, see_processes = role_scope(role, servers, see_processes)
        if servers is None:
            groups = None
        if not 1 <= int(max_uses) <= 1000 or not 0 < float(hours) <= 24 * 365:
            raise AccountError("Uses must be 1-1000 and the expiry within a year.")
        code = secrets.token_urlsafe(24)
        now = int(time.time())
        cur = self._conn().execute(
            "INSERT INTO invites (code_hash, role, servers, see_processes, max_uses, expires_at, created_at, created_by,"
            " groups) VALUES (?,?,?,?,?,?,?,?,?)",
            (_hash(code), role, scope_json(servers), int(bool(see_processes)), int(max_uses),
             now + int(float(hours) * 3600), now, created_by, groups_json(groups)),
        )
        return cur.lastrowid, code

    def invites(self, limit=None):
        """Every invite (dicts without code hashes), newest first; the ``limit`` newest when given."""
        out = []
        for row in self._conn().execute("SELECT * FROM invites ORDER BY id DESC LIMIT ?", (-1 if limit is None else int(limit),)):
            invite = _decoded(row)
            invite.pop("code_hash")
            out.append(invite)
        return out

    def revoke_invite(self, invite_id):
        cur = self._conn().execute("UPDATE invites SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                   (int(time.time()), invite_id))
        return cur.rowcount == 1

    def invite_valid(self, code):
        """True when ``code`` names a live invite with uses left."""
        if not isinstance(code, str) or not code:
            return False
        row = self._conn().execute(
            "SELECT 1 FROM invites WHERE code_hash = ? AND revoked_at IS NULL AND expires_at > ? AND uses < max_uses",
            (_hash(code), int(time.time())),
        ).fetchone()
        return row is not None

    def register(self, code, username, password_hash):
        """Consume one use of invite ``code`` and create the user, in one transaction.

        Returns the new user's role. Raises :class:`AccountError` for a bad, used-up,
        expired or revoked code, or a taken username (the use is then not consumed).
        """
        check_username(username)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT id, role, servers, see_processes, groups FROM invites WHERE code_hash = ? AND revoked_at IS NULL"
                " AND expires_at > ? AND uses < max_uses",
                (_hash(code or ""), int(time.time())),
            ).fetchone()
            if row is None:
                raise AccountError("This invite link is not valid any more.")
            conn.execute("UPDATE invites SET uses = uses + 1 WHERE id = ?", (row["id"],))
            try:
                conn.execute(
                    "INSERT INTO users (username, password_hash, role, servers, see_processes, created_at, created_by,"
                    " groups) VALUES (?,?,?,?,?,?,?,?)",
                    (username, password_hash, row["role"], row["servers"], row["see_processes"], int(time.time()),
                     f"invite {row['id']}", row["groups"]),
                )
            except sqlite3.IntegrityError:
                raise AccountError(f"The username {username!r} is taken.")
            conn.execute("COMMIT")
            return row["role"]
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def forget_server(self, server_id):
        """Remove ``server_id`` from every user's and invite's server list (after a delete, see docs/security.md M4).

        A viewer limited to that server alone keeps an empty list (sees nothing), never "all".
        Returns how many rows changed.
        """
        conn = self._conn()
        changed = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("users", "invites"):
                for row_id, servers in conn.execute(f"SELECT id, servers FROM {table} WHERE servers IS NOT NULL").fetchall():
                    ids = json.loads(servers)
                    if server_id in ids:
                        conn.execute(f"UPDATE {table} SET servers = ? WHERE id = ?",
                                     (scope_json([s for s in ids if s != server_id]), row_id))
                        changed += 1
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return changed

    def purge_expired(self):
        """Delete expired sessions; returns how many."""
        return self._conn().execute("DELETE FROM sessions WHERE expires_at <= ?", (int(time.time()),)).rowcount


LIMITER_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_attempts (
    limiter TEXT NOT NULL,
    key TEXT NOT NULL,
    attempt TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'failed')),
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_attempts_key ON login_attempts (limiter, key, state, at);
CREATE INDEX IF NOT EXISTS login_attempts_attempt ON login_attempts (attempt);
"""


class LoginLimiter:
    """Login budget: at most ``limit`` failed attempts per ``window`` seconds per key.

    Keys are ``"ip:<address>"`` and ``"user:<name>"``. An attempt is admitted only while
    ``failures + attempts being checked < limit`` for every key, so parallel guesses can
    never get more than ``limit`` password checks per window. When the budget is used up
    only by attempts still being checked, a newcomer is told to wait (``busy``) instead of
    being refused: many people logging in at once behind one NAT address are not failures.

    The counts live in ``path`` (``auth.db``, table ``login_attempts``; ``":memory:"`` for a
    private one), so every worker process of the hub shares one budget: N workers never
    give N times the guesses. ``name`` separates limiters sharing a file ("login",
    "register", "login-ok"). ``limits``: a limit per key prefix (``{"ip": 60}``) instead of
    ``limit``. The "login-ok" limiter budgets right passwords (N10): there
    :meth:`failed` counts a successful login and :meth:`succeeded` frees a wrong one.
    An attempt still "being checked" after :attr:`PENDING_TTL` seconds belongs to a worker
    that died and no longer counts.
    """

    PENDING_TTL = 120

    def __init__(self, path=":memory:", limit=5, window=300, name="login", limits=None):
        self.limit, self.window, self.name = limit, window, name
        self.limits = dict(limits or {})  # key prefix ("ip") -> its own limit
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(LIMITER_SCHEMA)

    def reserve(self, keys, now=None):
        """Admit one attempt for ``keys``. Returns ``(token, retry_after_seconds, busy)``:

        a token (pass it to :meth:`succeeded` or :meth:`failed`); or no token and the
        seconds until the failure budget frees (refuse, 429); or no token and ``busy``
        (other attempts are being checked: try again in a moment). Raises ``sqlite3.Error``
        when ``auth.db`` cannot be written.
        """
        now = time.time() if now is None else now
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")  # one check-and-reserve at a time across processes
            try:
                conn.execute("DELETE FROM login_attempts WHERE limiter = ? AND ((state = 'failed' AND at <= ?)"
                             " OR (state = 'pending' AND at <= ?))",
                             (self.name, now - self.window, now - self.PENDING_TTL))
                waits, busy = [], False
                for key in keys:
                    limit = self.limits.get(key.split(":", 1)[0], self.limit)
                    failures = [at for (at,) in conn.execute(
                        "SELECT at FROM login_attempts WHERE limiter = ? AND key = ? AND state = 'failed'"
                        " ORDER BY at", (self.name, key))]
                    pending = conn.execute("SELECT count(*) FROM login_attempts WHERE limiter = ? AND key = ?"
                                           " AND state = 'pending'", (self.name, key)).fetchone()[0]
                    if len(failures) >= limit:
                        waits.append(int(failures[-limit] + self.window - now) + 1)
                    elif len(failures) + pending >= limit:
                        busy = True
                if waits or busy:
                    conn.execute("COMMIT")
                    return None, max(waits) if waits else 0, not waits
                attempt = secrets.token_hex(12)
                conn.executemany("INSERT INTO login_attempts (limiter, key, attempt, state, at)"
                                 " VALUES (?, ?, ?, 'pending', ?)", [(self.name, key, attempt, now) for key in keys])
                conn.execute("COMMIT")
                return attempt, 0, False
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def succeeded(self, token):
        """The password was right: the attempt costs nothing."""
        with self._lock:
            self._conn.execute("DELETE FROM login_attempts WHERE attempt = ?", (token,))

    def failed(self, token, now=None):
        """The password was wrong: one failure against every key of the attempt."""
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute("UPDATE login_attempts SET state = 'failed', at = ? WHERE attempt = ?", (now, token))
