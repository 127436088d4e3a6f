"""Notification targets, people's contacts and delivery failures, kept in ``auth.db``.

Apprise URLs and e-mail addresses carry secrets (bot tokens, webhook keys, SMTP passwords) or
personal data, so they live here, never in ``monitor.db`` (which analysts can read with SQL;
see docs/security.md). Tables:

* ``notify_targets``: named targets an admin adds on ``/admin`` (``name``, Apprise ``url``,
  ``severities`` JSON list or NULL for every severity).
* ``notify_contacts``: one row per holder name (the user name that holds GPUs on the servers,
  usually the lab login): ``email``, ``url`` (an Apprise URL or chat webhook), ``digest``
  (1: wants the weekly digest), ``digest_sent_at``, ``tz`` (the holder's IANA time zone such as
  ``Europe/Zurich``, NULL: hub time; quiet hours and the digest's hour follow it). Older
  ``auth.db`` files get ``tz`` added in place by :class:`NotifyStore` (``ALTER TABLE``, every
  contact kept).
* ``notify_failures``: the newest :data:`FAILURES_KEPT` failed deliveries (``target``, ``at``
  epoch s, ``error`` one cleaned line without secrets).
* ``notify_status``: per target the last success and the last failure.

Written by the hub's job leader (failures, digest times) and the ``/admin`` and ``/account``
pages; every process opens its own connections (WAL, busy timeout 5 s).
"""

import functools
import json
import re
import sqlite3
import threading
import time
import zoneinfo

from .accounts import thread_connection

SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_targets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    url TEXT NOT NULL,
    severities TEXT,
    created_at INTEGER NOT NULL,
    created_by TEXT
);
CREATE TABLE IF NOT EXISTS notify_contacts (
    holder TEXT PRIMARY KEY COLLATE NOCASE,
    email TEXT,
    url TEXT,
    digest INTEGER NOT NULL DEFAULT 0,
    digest_sent_at INTEGER,
    updated_at INTEGER NOT NULL,
    updated_by TEXT,
    tz TEXT
);
CREATE TABLE IF NOT EXISTS notify_failures (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notify_failures_at ON notify_failures (at);
CREATE TABLE IF NOT EXISTS notify_status (
    target TEXT PRIMARY KEY,
    last_ok_at INTEGER,
    last_failure_at INTEGER,
    last_error TEXT
);
"""

SEVERITIES = ("critical", "warning", "info")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# An e-mail address on one line (no display name, no comma list): what an SMTP RCPT TO takes.
EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
FAILURES_KEPT = 200
# NotifyStore.edit_contact: "leave this part as stored".
KEEP = object()


class ContactError(ValueError):
    """A target or contact that cannot be stored; ``str()`` is shown to the admin or user."""


@functools.lru_cache(maxsize=1)
def time_zones():
    """Sorted IANA time zone names this hub knows (``zoneinfo.available_timezones()``: the system
    tz database and the pinned ``tzdata`` package, so the same names everywhere), for the
    /account and /admin pickers and :func:`check_tz`. Read once per process."""
    return tuple(sorted(_zone_set()))


@functools.lru_cache(maxsize=1)
def _zone_set():
    # "localtime" (a link to the machine's own zone in some system tz trees) names no place: it
    # would mean a different zone on every hub.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules"}


def known_tz(name):
    """True when ``name`` (any value) is, exactly, an IANA time zone name of :func:`time_zones`:
    the only names worth handing to :class:`zoneinfo.ZoneInfo` (which opens a file per name:
    a directory such as ``America``, an over-long name or ``localtime`` would raise or mean the
    machine's zone). One set lookup."""
    return isinstance(name, str) and name in _zone_set()


@functools.lru_cache(maxsize=1)
def _zones_by_lower():
    # {lower-case name: [canonical names]}: "europe/zurich" -> ["Europe/Zurich"].
    found = {}
    for zone in _zone_set():
        found.setdefault(zone.lower(), []).append(zone)
    return found


def check_tz(name):
    """``name`` stripped when it is an IANA time zone name the hub knows (:func:`time_zones`,
    e.g. ``Europe/Zurich``, ``Asia/Shanghai``, ``UTC``), None when empty ("hub time").
    A name that matches exactly one known zone when case is ignored (``europe/zurich``) gives
    that zone's canonical spelling (``Europe/Zurich``): what is stored and shown.
    Raises :class:`ContactError` naming the field for anything else (a path, a POSIX TZ string,
    an unknown name); the message repeats at most 64 characters of it, for the page to escape."""
    name = (name or "").strip()
    if not name:
        return None
    if not known_tz(name):
        same = _zones_by_lower().get(name.lower()) if len(name) <= 64 else None
        if same and len(same) == 1:
            return same[0]
        raise ContactError(f"Time zone: {name[:64]!r} is not a known IANA time zone name; "
                           "use one like Europe/Zurich or Asia/Shanghai, or leave it empty for hub time.")
    return name


def check_name(name):
    """``name`` if it is 1-64 of ``[A-Za-z0-9._-]`` starting with a letter or digit, else :class:`ContactError`."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ContactError("Target names are 1 to 64 letters, digits, '.', '_' or '-'.")
    return name


def check_severities(values):
    """Sorted list of severities from ``values`` (each one of :data:`SEVERITIES`), or None for
    "every severity" when ``values`` is empty. Raises :class:`ContactError` for another word."""
    chosen = sorted({str(v).strip().lower() for v in values or () if str(v).strip()})
    unknown = [v for v in chosen if v not in SEVERITIES]
    if unknown:
        raise ContactError(f"Unknown severity {unknown[0]!r}: use {', '.join(SEVERITIES)}.")
    return chosen or None


def check_email(address):
    """``address`` stripped, or None when empty; :class:`ContactError` unless it is one plain address."""
    address = (address or "").strip()
    if not address:
        return None
    if len(address) > 254 or not EMAIL_RE.match(address) or ".." in address:
        raise ContactError("Give one e-mail address like name@example.org.")
    return address


class NotifyStore:
    """The notification tables of ``auth.db`` at ``path``; thread-safe (a connection per thread)."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(SCHEMA)
        if "tz" not in {row[1] for row in conn.execute("PRAGMA table_info(notify_contacts)")}:
            # auth.db files from before per-contact time zones: the column is added in place
            # (every contact kept, tz NULL = hub time, as before).
            try:
                conn.execute("ALTER TABLE notify_contacts ADD COLUMN tz TEXT")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise

    def _conn(self):
        return thread_connection(self._local, self.path)

    # -- targets ---------------------------------------------------------------------------
    def targets(self):
        """Admin-made targets, by name: dicts ``id``, ``name``, ``url``, ``severities`` (list or
        None), ``created_at``, ``created_by``."""
        rows = self._conn().execute("SELECT * FROM notify_targets ORDER BY name").fetchall()
        return [dict(row, severities=json.loads(row["severities"]) if row["severities"] else None) for row in rows]

    def add_target(self, name, url, severities=None, created_by=None):
        """Store a target; ``url`` must already be checked (``server_monitor.jobs.notify.check_url``).
        Raises :class:`ContactError` for a bad or taken name."""
        check_name(name)
        chosen = check_severities(severities)
        try:
            self._conn().execute(
                "INSERT INTO notify_targets (name, url, severities, created_at, created_by) VALUES (?,?,?,?,?)",
                (name, url, json.dumps(chosen) if chosen else None, int(time.time()), created_by))
        except sqlite3.IntegrityError:
            raise ContactError(f"A target named {name!r} exists already.") from None

    def target(self, name):
        """The admin-made target ``name`` (any case) as :meth:`targets` gives it, or None."""
        row = self._conn().execute("SELECT * FROM notify_targets WHERE name = ?", (name,)).fetchone()
        return dict(row, severities=json.loads(row["severities"]) if row["severities"] else None) if row else None

    def update_target(self, name, new_name, url=None, severities=None):
        """Edit the admin-made target ``name``: rename it to ``new_name``, set its ``severities``
        (empty: every severity) and, when ``url`` is given (already checked with
        ``server_monitor.jobs.notify.check_url``), replace its URL; ``url`` None keeps the stored
        one (the page never shows it back). Its delivery status follows a rename. Raises
        :class:`ContactError` when there is no such target or ``new_name`` is bad or taken."""
        check_name(new_name)
        chosen = check_severities(severities)
        conn = self._conn()
        try:
            with conn:  # one transaction: the target and its status rename together
                changed = conn.execute(
                    "UPDATE notify_targets SET name = ?, url = coalesce(?, url), severities = ? WHERE name = ?",
                    (new_name, url, json.dumps(chosen) if chosen else None, name)).rowcount
                if not changed:
                    raise ContactError(f"No target named {name!r}.")
                if new_name != name:
                    conn.execute("DELETE FROM notify_status WHERE target = ? AND lower(target) <> lower(?)", (new_name, name))
                    conn.execute("UPDATE notify_status SET target = ? WHERE target = ?", (new_name, name))
        except sqlite3.IntegrityError:
            raise ContactError(f"A target named {new_name!r} exists already.") from None

    def delete_target(self, name):
        """Delete the target ``name``; returns True when there was one."""
        return self._conn().execute("DELETE FROM notify_targets WHERE name = ?", (name,)).rowcount > 0

    # -- delivery outcomes -----------------------------------------------------------------
    def record_ok(self, target, at=None):
        """Note a successful delivery to ``target`` (its name)."""
        self._conn().execute(
            "INSERT INTO notify_status (target, last_ok_at) VALUES (?, ?)"
            " ON CONFLICT (target) DO UPDATE SET last_ok_at = excluded.last_ok_at", (target, int(at or time.time())))

    def record_failure(self, target, error, at=None):
        """Note a failed delivery: ``error`` must be one clean line without secrets (the caller's job).
        Keeps the newest :data:`FAILURES_KEPT` rows."""
        at = int(at or time.time())
        conn = self._conn()
        conn.execute("INSERT INTO notify_failures (target, at, error) VALUES (?,?,?)", (target, at, error))
        conn.execute("INSERT INTO notify_status (target, last_failure_at, last_error) VALUES (?,?,?)"
                     " ON CONFLICT (target) DO UPDATE SET last_failure_at = excluded.last_failure_at,"
                     " last_error = excluded.last_error", (target, at, error))
        conn.execute("DELETE FROM notify_failures WHERE id <= (SELECT id FROM notify_failures ORDER BY id DESC"
                     " LIMIT 1 OFFSET ?)", (FAILURES_KEPT,))

    def failures(self, limit=20):
        """The newest failures: dicts ``target``, ``at``, ``error``."""
        rows = self._conn().execute("SELECT target, at, error FROM notify_failures ORDER BY id DESC LIMIT ?",
                                    (int(limit),))
        return [dict(row) for row in rows]

    def status(self):
        """``{target name: {"last_ok_at", "last_failure_at", "last_error"}}``."""
        return {row["target"]: dict(row) for row in self._conn().execute("SELECT * FROM notify_status")}

    def failure_summary(self, since):
        """For ``/-/health``: ``{"failures": N since ``since``, "last_failure_at", "last_failure_target"}``
        (no error text: the health answer is public)."""
        conn = self._conn()
        count = conn.execute("SELECT count(*) FROM notify_failures WHERE at >= ?", (int(since),)).fetchone()[0]
        last = conn.execute("SELECT target, at FROM notify_failures ORDER BY id DESC LIMIT 1").fetchone()
        return {"failures": count, "last_failure_at": last["at"] if last else None,
                "last_failure_target": last["target"] if last else None}

    # -- contacts --------------------------------------------------------------------------
    def contact(self, holder):
        """The contact of ``holder`` (dict ``holder``, ``email``, ``url``, ``digest``, ``digest_sent_at``,
        ``updated_at``, ``updated_by``, ``tz``: IANA name or None for hub time) or None."""
        row = self._conn().execute("SELECT * FROM notify_contacts WHERE holder = ?", (holder,)).fetchone()
        return dict(row) if row else None

    def contacts(self, limit=500):
        """Every contact, by holder name (at most ``limit``)."""
        return [dict(row) for row in self._conn().execute(
            "SELECT * FROM notify_contacts ORDER BY holder LIMIT ?", (int(limit),))]

    def zones(self, limit=5000):
        """``{holder (lower case): IANA time zone}`` of the contacts that have one (at most
        ``limit``), for the dashboard's Idle holders panel (whose quiet hours are on whose clock).
        A stored name this hub does not list (:func:`known_tz`: a hand edit, a restored auth.db) is
        left out: that holder is on hub time, as for the nudges."""
        return {row[0].lower(): row[1] for row in self._conn().execute(
            "SELECT holder, tz FROM notify_contacts WHERE tz IS NOT NULL ORDER BY holder LIMIT ?", (int(limit),))
            if known_tz(row[1])}

    def failed_contacts(self, limit=5000):
        """``{holder (lower case): epoch s}`` of the holders whose last delivery failed on every
        contact target (``notify_status`` rows ``contact:<holder>:email|url``: the newest failure
        later than any success), with the time of that failure: the Idle holders panel says
        "nudge failed" instead of "–" (e.g. an e-mail contact on a hub without ``alerts.smtp``).
        At most ``limit`` status rows are read."""
        outcome = {}
        for row in self._conn().execute(
                "SELECT target, last_ok_at, last_failure_at FROM notify_status WHERE target LIKE 'contact:%'"
                " ORDER BY target LIMIT ?", (int(limit),)):
            holder = row["target"][len("contact:"):].rpartition(":")[0].lower()
            ok, failed = outcome.get(holder, (0, 0))
            outcome[holder] = (max(ok, row["last_ok_at"] or 0), max(failed, row["last_failure_at"] or 0))
        return {holder: failed for holder, (ok, failed) in outcome.items() if holder and failed > ok}

    def digest_contacts(self):
        """Every contact that wants the weekly digest (``digest`` 1), by holder name, however many."""
        return [dict(row) for row in self._conn().execute(
            "SELECT * FROM notify_contacts WHERE digest = 1 ORDER BY holder")]

    def contacts_page(self, q="", limit=50, offset=0):
        """One page of contacts for ``/admin`` (like the users list): ``(contacts, total)``.

        ``q``: a case-insensitive part of the holder name, the e-mail address or ``updated_by``
        ("" for every contact; never the URL, which holds secrets); ``limit`` (1..500) contacts
        by holder name from ``offset``; ``total`` counts every match."""
        limit, offset = min(500, max(1, int(limit))), max(0, int(offset))
        where, values = "", []
        if q:
            where = (" WHERE instr(lower(holder || ' ' || coalesce(email, '') || ' ' || coalesce(updated_by, '')),"
                     " lower(?)) > 0")
            values = [q]
        conn = self._conn()
        total = conn.execute(f"SELECT count(*) FROM notify_contacts{where}", values).fetchone()[0]
        rows = conn.execute(f"SELECT * FROM notify_contacts{where} ORDER BY holder LIMIT ? OFFSET ?",
                            values + [limit, offset])
        return [dict(row) for row in rows], total

    def contacts_for(self, holders):
        """``{holder (as stored): contact}`` for the names in ``holders`` (any case)."""
        names = sorted({str(h) for h in holders if h})
        if not names:
            return {}
        rows = self._conn().execute("SELECT * FROM notify_contacts WHERE holder IN (SELECT value FROM json_each(?))"
                                    " COLLATE NOCASE", (json.dumps(names),))
        return {row["holder"].lower(): dict(row) for row in rows}

    def set_contact(self, holder, email=None, url=None, digest=False, updated_by=None, tz=None):
        """Store (or, with neither ``email`` nor ``url`` nor ``tz``, delete) ``holder``'s contact.
        ``email`` and ``tz`` (IANA time zone name, empty/None: hub time; :func:`check_tz`) are
        checked here; ``url`` must already be checked by the caller. A contact with only a time
        zone is kept (nothing is sent to it; the zone applies once an address is added, and the
        Idle holders panel uses it). Returns ``"address"`` (an e-mail or URL is stored),
        ``"zone"`` (only the zone) or ``"removed"``. Raises :class:`ContactError`."""
        holder = (holder or "").strip()
        if not holder or len(holder) > 64 or any(c.isspace() or ord(c) < 32 for c in holder):
            raise ContactError("A holder name is the user name on the servers (1 to 64 characters, no spaces).")
        email = check_email(email)
        tz = check_tz(tz)
        conn = self._conn()
        if not email and not url and not tz:
            conn.execute("DELETE FROM notify_contacts WHERE holder = ?", (holder,))
            return "removed"
        conn.execute(
            "INSERT INTO notify_contacts (holder, email, url, digest, updated_at, updated_by, tz) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT (holder) DO UPDATE SET email = excluded.email, url = excluded.url,"
            " digest = excluded.digest, updated_at = excluded.updated_at, updated_by = excluded.updated_by,"
            " tz = excluded.tz",
            (holder, email, url or None, 1 if digest else 0, int(time.time()), updated_by, tz))
        return "address" if email or url else "zone"

    def edit_contact(self, holder, email=KEEP, url=KEEP, digest=KEEP, updated_by=None, tz=KEEP):
        """Change only the given parts of ``holder``'s contact, in one transaction: a part left
        at :data:`KEEP` keeps its stored value (a new contact starts empty, no digest, hub time).
        ``email`` "" or None clears it (checked here), ``url`` None clears it (a new one must
        already be checked by the caller), ``digest`` a bool, ``tz`` an IANA name or ""/None for
        hub time (checked here). With neither e-mail, URL nor time zone left the contact is deleted, as
        :meth:`set_contact` does. Returns the stored contact (dict) or None.
        Raises :class:`ContactError`."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # no /account save slips in between the read and the write
        try:
            stored = self.contact((holder or "").strip()) or {}
            self.set_contact(holder, stored.get("email") if email is KEEP else email,
                             stored.get("url") if url is KEEP else url,
                             bool(stored.get("digest")) if digest is KEEP else digest, updated_by=updated_by,
                             tz=stored.get("tz") if tz is KEEP else tz)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return self.contact((holder or "").strip())

    def digest_sent(self, holder, at):
        """Remember when ``holder``'s weekly digest went out (epoch s)."""
        self._conn().execute("UPDATE notify_contacts SET digest_sent_at = ? WHERE holder = ?", (int(at), holder))
