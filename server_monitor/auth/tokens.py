"""Per-host agent tokens, kept hashed in ``auth.db``.

Besides the shared ``agent.token`` (any host may report with it), an admin can issue a
token bound to one host identity (``servers.machine_id``). The database keeps only the
token's SHA-256; the token is shown once, when issued. A per-host token can only write
reports whose host identity matches, and stops working the moment it is revoked.
"""

import hashlib
import hmac
import secrets
import sqlite3
import time

PREFIX = "smh_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    machine_id TEXT NOT NULL,
    label TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_used_at INTEGER
);
"""


def token_hash(token):
    """Hex SHA-256 of a token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def connect(path):
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(SCHEMA)
    return conn


def issue(conn, machine_id, label=None):
    """Create a token for ``machine_id``; returns ``(id, token)`` — the only time it is seen."""
    token = PREFIX + secrets.token_urlsafe(32)
    cur = conn.execute(
        "INSERT INTO agent_tokens (token_hash, machine_id, label, created_at) VALUES (?, ?, ?, ?)",
        (token_hash(token), machine_id, label, int(time.time())),
    )
    return cur.lastrowid, token


def revoke(conn, token_id):
    """Revoke token ``token_id``; returns True if it existed and was live."""
    cur = conn.execute("UPDATE agent_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                       (int(time.time()), token_id))
    return cur.rowcount == 1


def list_tokens(conn):
    """All tokens (without hashes): list of dicts."""
    cur = conn.execute("SELECT id, machine_id, label, created_at, revoked_at, last_used_at FROM agent_tokens ORDER BY id")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur]


def tokens_page(conn, q="", limit=50, offset=0):
    """One page of tokens for /admin (issue 24 item 3): ``(tokens, total)``, newest first.

    ``q``: a case-insensitive part of the label (host name) or machine id ("" for all);
    ``limit`` 1..500 from ``offset``. Tokens are dicts as :func:`list_tokens` returns them.
    """
    limit, offset = min(500, max(1, int(limit))), max(0, int(offset))
    where, values = "", []
    if q:
        where = " WHERE instr(lower(coalesce(label, '') || ' ' || machine_id), lower(?)) > 0"
        values = [q]
    total = conn.execute(f"SELECT count(*) FROM agent_tokens{where}", values).fetchone()[0]
    cur = conn.execute(f"SELECT id, machine_id, label, created_at, revoked_at, last_used_at FROM agent_tokens{where}"
                       " ORDER BY id DESC LIMIT ? OFFSET ?", values + [limit, offset])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur], total


def host_for_token(conn, token):
    """The ``machine_id`` a live per-host token may write, or None for an unknown/revoked one."""
    if not token.startswith(PREFIX):
        return None
    digest = token_hash(token)
    row = conn.execute(
        "SELECT id, token_hash, machine_id, last_used_at FROM agent_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        (digest,),
    ).fetchone()
    if row is None or not hmac.compare_digest(row[1], digest):
        return None
    now = int(time.time())
    if row[3] is None or now - row[3] > 60:
        conn.execute("UPDATE agent_tokens SET last_used_at = ? WHERE id = ?", (now, row[0]))
    return row[2]
