"""Fleet documents built once for every worker, by one process of their own.

Why: with 1,000 servers reporting every 5 s, every server changes between two refreshes, so
each fleet document (``server_monitor.serving.fleet``) is a full build: 0.3-0.9 s of Python. Built in
each worker process, that Python held the GIL that the worker's ingest writer thread needs
between SQLite calls; measured with ``python -m bench prove``'s mixed load (1,000 hosts at 200
reports/s, 120 s runs): ingest p99 159-194 ms with the 60 dashboard viewers, 93 ms with the
analysts and no viewers (docs/performance.md). Here the build runs in a **publisher process**
(``python -m server_monitor.serving.fleet_share``) that shares no GIL with any worker, once per round
for all workers instead of once per worker.

Files, in ``<data.path>.fleet/`` (mode 0700, the hub's own user):

* ``<scope>.want`` — written by a worker (:meth:`Shelf.want`) for a scope whose document is
  slow to build on a large fleet, and touched again (at most every :data:`WANT_TOUCH_S`) while
  viewers keep asking; content: the scope key as JSON. A scope not asked for in
  :data:`WANT_TTL_S` is dropped with its document.
* ``<scope>.doc`` — the document, replaced atomically (``os.replace``) by the publisher:
  ``SMFLEET1 {"etag", "body", "gzip", "servers"}\\n`` + JSON bytes + gzip bytes. Its
  modification time says when it was last known current: set to the time the round began
  (before its read), again in a round in which the database did not change.
* ``written`` — touched after every write a person makes through the hub (an admin's form,
  an acknowledgement: :func:`note_write`, from ``plugins/sm_gate.py``). A page's first load
  asks for ``?fresh=1`` and takes a shared document only when it was current after that.

**Kept warm** (issue 24: the overview at 10,000 servers in ≤ 2 s): a scope of at least
:data:`KEEP_MIN_SERVERS` servers that a viewer asked for within :data:`KEEP_S` stays built,
every :data:`KEEP_PERIOD_S`, after its viewers left: the first page load of the morning gets a
document at once instead of a cold build (4.5 s of Python at 10,000 servers × 8 GPUs). The
wants survive a restart of the hub, so the publisher builds them again right after it.

The publisher is started by the jobs leader (:class:`PublisherThread`, one of
``server_monitor.jobs.leader``'s job threads) when the first want appears, exits when no scope
was wanted for :data:`WANT_TTL_S`, and dies with the leader (``PR_SET_PDEATHSIG``). A round
rebuilds every wanted scope; the next starts ``REBUILD_FACTOR`` times its duration later
(between :data:`MIN_PERIOD_S` and ``fleet.MAX_REUSE_S``), the rule workers used for reusing
a slow document. It runs at nice :data:`NICE`: on a saturated machine agents' acknowledgements
come first and the document gets a little older.

Workers (``fleet.FleetCache``) answer from the shelf when the document covers at least
``fleet.REUSE_MIN_SERVERS`` servers and is younger than ``fleet.MAX_STALE_S``; otherwise
(small fleets, ``?fresh=1``, no publisher, a publisher behind) they build as before.
"""

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

from ..core.process import die_with_parent
from ..storage.instance import UnsafeFileError, check_private_dir
from . import fleet

log = logging.getLogger("server_monitor.fleet")

SUFFIX = ".fleet"
MAGIC = b"SMFLEET1 "
WANT_TTL_S = 60.0  # a scope no viewer asked for in this long is no longer built (unless kept warm)
KEEP_S = 24 * 3600.0  # ... a large fleet's scope asked for within this long is kept warm
KEEP_MIN_SERVERS = 1000  # ... when its document covers at least this many servers
KEEP_PERIOD_S = 8.0  # ... rebuilt this often (a worker serves it while younger than fleet.MAX_STALE_S)
WRITTEN = "written"  # touched after each write a person makes (note_write)
WANT_TOUCH_S = 10.0  # a worker refreshes a scope's want at most this often
MIN_PERIOD_S = 1.0  # rounds start at most once a second
NICE = 5  # the publisher's niceness: acknowledgements before display freshness
RESPAWN_S = 5.0  # a publisher that failed is started again after this long at the soonest
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def share_dir(db_path):
    """The shelf directory of database ``db_path``: ``<db_path>.fleet``."""
    return db_path + SUFFIX


def scope_name(key):
    """File name stem (24 hex digits) of a ``fleet.scope_key``."""
    return hashlib.blake2b(json.dumps(list(key)).encode(), digest_size=12).hexdigest()


def note_write(db_path):
    """Record that a person just changed something through the hub (touch ``<shelf>/written``):
    a ``?fresh=1`` fleet request then takes only documents current after it. Never raises."""
    path = os.path.join(share_dir(db_path), WRITTEN)
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            os.makedirs(share_dir(db_path), mode=0o700, exist_ok=True)
            check_private_dir(share_dir(db_path))
            _write_atomic(path, b"")
    except OSError as exc:  # a read-only or full disk: fresh requests then build in the worker
        log.warning("cannot note a write for the fleet documents: %s", exc)


def _doc_header(path):
    """The header of a ``.doc`` file (``{"etag", "body", "gzip", "servers"}``; {} when unreadable)."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(512)
        found = json.loads(head[len(MAGIC):head.index(b"\n")]) if head.startswith(MAGIC) else {}
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _doc_servers(path):
    """The ``servers`` of a ``.doc`` file's header (0 when unreadable)."""
    try:
        return int(_doc_header(path).get("servers", 0))
    except (ValueError, TypeError):
        return 0


def _kept(directory, stem, age):
    """True when a want ``age`` seconds old is live: asked for within :data:`WANT_TTL_S`, or
    within :data:`KEEP_S` for a document of at least :data:`KEEP_MIN_SERVERS` servers."""
    return age <= WANT_TTL_S or (age <= KEEP_S and
                                 _doc_servers(os.path.join(directory, stem + ".doc")) >= KEEP_MIN_SERVERS)


def _write_atomic(path, data):
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(tmp, flags, 0o600), "wb") as fp:
        fp.write(data)  # no fsync: a cache; a file cut short by a crash is never served (decode_doc)
    os.replace(tmp, path)


def encode_doc(entry, servers):
    """The ``.doc`` file bytes of ``fleet.Entry`` ``entry`` for a document of ``servers`` servers."""
    header = json.dumps({"etag": entry.etag, "body": len(entry.body), "gzip": len(entry.gzip),
                         "servers": servers}).encode()
    return b"".join((MAGIC, header, b"\n", entry.body, entry.gzip))


def decode_doc(data):
    """``(fleet.Entry, servers)`` from ``.doc`` bytes; raises ``ValueError`` when they are not one
    whole document (a file of another version, cut short)."""
    if not data.startswith(MAGIC):
        raise ValueError("not a fleet document")
    end = data.index(b"\n")
    header = json.loads(data[len(MAGIC):end])
    start = end + 1
    body = data[start:start + header["body"]]
    gz = data[start + header["body"]:]
    if len(body) != header["body"] or len(gz) != header["gzip"]:
        raise ValueError("fleet document cut short")
    return fleet.Entry(None, header["etag"], body, gz, None), int(header["servers"])


class Shared:
    """A document read from the shelf: ``entry`` (``fleet.Entry``), ``servers`` (count) and
    ``checked`` (wall-clock time it was last known current, epoch s)."""

    __slots__ = ("entry", "servers", "checked", "stat")

    def __init__(self, entry, servers, checked, stat):
        self.entry, self.servers, self.checked, self.stat = entry, servers, checked, stat


class Shelf:
    """A worker's side of the shelf of database ``db_path``: ask for scopes, read documents.

    Never raises for a missing, unreadable or half-written file: :meth:`get` answers None
    and the worker builds the document itself.
    """

    def __init__(self, db_path):
        self.dir = share_dir(db_path)
        self._touched = {}
        self._docs = {}

    def _path(self, key, ext):
        return os.path.join(self.dir, scope_name(key) + ext)

    def _unsafe(self, exc, every_s=300):
        now = time.monotonic()
        if now - getattr(self, "_warned", -every_s) >= every_s:
            self._warned = now
            log.warning("%s", exc)

    def want(self, key, now=None):
        """Ask the publisher for scope ``key``'s document (write or touch ``<scope>.want``);
        at most once per :data:`WANT_TOUCH_S` per scope."""
        now = time.monotonic() if now is None else now
        if now - self._touched.get(key, -WANT_TOUCH_S) < WANT_TOUCH_S:
            return
        self._touched[key] = now
        path = self._path(key, ".want")
        try:
            try:
                os.utime(path)
            except FileNotFoundError:
                os.makedirs(self.dir, mode=0o700, exist_ok=True)
                check_private_dir(self.dir)
                _write_atomic(path, json.dumps(list(key)).encode())
        except OSError as exc:  # a read-only or full disk: the worker keeps building itself
            log.warning("cannot ask for a shared fleet document: %s", exc)

    def get(self, key):
        """The :class:`Shared` document of scope ``key``, or None when there is none (yet)."""
        path = self._path(key, ".doc")
        try:
            check_private_dir(self.dir)  # documents others could plant are never served (N8)
            st = os.stat(path)
        except UnsafeFileError as exc:
            self._unsafe(exc)
            return None
        except OSError:
            return None
        known = self._docs.get(key)
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if known is not None and known.stat == sig:
            return known
        if known is not None and known.stat[1] == sig[1] and _doc_header(path).get("etag") == known.entry.etag:
            known.checked, known.stat = st.st_mtime, sig  # the same document confirmed: not read again (13 MB at 10,000 servers)
            return known
        try:
            with open(path, "rb") as fp:
                entry, servers = decode_doc(fp.read())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        found = self._docs[key] = Shared(entry, servers, st.st_mtime, sig)
        return found

    def written(self):
        """When a person last changed something (epoch s of ``written``; 0.0 when never)."""
        try:
            return os.stat(os.path.join(self.dir, WRITTEN)).st_mtime
        except OSError:
            return 0.0


class Publisher:
    """The publisher's rounds (see the module docstring), on database ``db_path``.

    ``idle_max_util``: ``features.idle_max_util``. ``bucket_s``: as ``fleet.FleetCache``
    (liveness states follow the clock). :meth:`round` builds every wanted scope once.
    """

    def __init__(self, db_path, idle_max_util=5, bucket_s=10):
        self.db_path = db_path
        self.dir = share_dir(db_path)
        self.idle_max_util = idle_max_util
        self.bucket_s = bucket_s
        self.fragments = {}
        self.previous = {}  # scope name -> (fleet.Entry, version it was built at)
        self.checked = {}  # scope name -> time.time() its document was last built or confirmed
        self._conn = None

    def wanted(self, now=None):
        """``[(scope name, scope key, asked for within WANT_TTL_S?)]`` of the live wants
        (:func:`_kept`); the others are removed with their documents."""
        now = time.time() if now is None else now
        found = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return found
        for name in names:
            if not name.endswith(".want"):
                continue
            path = os.path.join(self.dir, name)
            stem = name[:-len(".want")]
            try:
                age = now - os.stat(path).st_mtime
                if not _kept(self.dir, stem, age):
                    for ext in (".want", ".doc"):
                        try:
                            os.unlink(os.path.join(self.dir, stem + ext))
                        except FileNotFoundError:
                            pass
                    self.previous.pop(stem, None)
                    self.checked.pop(stem, None)
                    continue
                with open(path, "rb") as fp:
                    key = json.loads(fp.read())
                key = (int(key[0]), str(key[1]), int(key[2]))  # queries.scope_value's types
            except (OSError, ValueError, IndexError, TypeError):
                continue  # being written, or not ours
            if scope_name(key) == stem:
                found.append((stem, key, age <= WANT_TTL_S))
        return found

    def round(self, now=None):
        """Build (or confirm) every wanted scope's document; returns the number of scopes.

        Raises ``sqlite3.Error`` when the database cannot be read, ``OSError`` when the
        shelf cannot be written."""
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, isolation_level=None)
        check_private_dir(self.dir)  # raises UnsafeFileError (an OSError): nothing written there
        wanted = self.wanted(now)
        if not wanted:
            return 0
        began = time.time() if now is None else now  # before the read: what the document is current as of
        version = (self._conn.execute("PRAGMA data_version").fetchone()[0], int(began // self.bucket_s))
        for stem, key, asked in wanted:
            path = os.path.join(self.dir, stem + ".doc")
            if not asked and began - self.checked.get(stem, float("-inf")) < KEEP_PERIOD_S:
                continue  # kept warm, no viewer now: at its own slower pace
            previous = self.previous.get(stem)
            if previous is not None and previous[1] == version and os.path.exists(path):
                os.utime(path, (began, began))  # nothing committed since: the document is still current
                self.checked[stem] = began
                continue
            content, servers = fleet.build_scope(self._conn, fleet.scope_of(key), self.fragments, self.idle_max_util)
            entry = fleet.encode(content, previous[0] if previous else None, version)
            _write_atomic(path, encode_doc(entry, servers))
            os.utime(path, (began, began))
            self.previous[stem] = (entry, version)
            self.checked[stem] = began
        return len(wanted)

    def run(self, parent_pid=None):
        """Rounds until no scope was wanted (or kept) for :data:`WANT_TTL_S` or the parent is gone."""
        idle_since = time.monotonic()
        while parent_pid is None or os.getppid() == parent_pid:
            started = time.monotonic()
            if self.round():
                idle_since = started
            elif started - idle_since > WANT_TTL_S:
                return
            cost = time.monotonic() - started
            period = min(fleet.MAX_REUSE_S, max(MIN_PERIOD_S, fleet.REBUILD_FACTOR * cost))
            time.sleep(max(0.0, started + period - time.monotonic()))


def main(argv=None):
    """``python -m server_monitor.serving.fleet_share DB_PATH IDLE_MAX_UTIL PARENT_PID``: the publisher."""
    argv = sys.argv[1:] if argv is None else argv
    db_path, idle, parent = argv[0], float(argv[1]), int(argv[2])
    die_with_parent()  # as the workers: SIGKILL when the leader dies
    if os.getppid() != parent:
        return 0
    try:
        os.nice(NICE)
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Publisher(db_path, idle).run(parent)
    return 0


class PublisherThread(threading.Thread):
    """A job thread of the leader: starts the publisher process when a scope is wanted, again
    after it exits (at most every :data:`RESPAWN_S` after a failure), and stops it with
    :meth:`stop`. ``proc`` is the running ``subprocess.Popen`` or None."""

    def __init__(self, db_path, idle_max_util=5, interval=1.0):
        super().__init__(name="fleet-publisher", daemon=True)
        self.db_path, self.idle_max_util, self.interval = db_path, idle_max_util, interval
        self.stopped = threading.Event()
        self.proc = None
        self.starts = 0

    def _wanted(self):
        directory = share_dir(self.db_path)
        try:
            now = time.time()
            return any(name.endswith(".want") and _kept(directory, name[:-len(".want")],
                                                         now - os.stat(os.path.join(directory, name)).st_mtime)
                       for name in os.listdir(directory))
        except OSError:
            return False

    def run(self):
        not_before = 0.0
        while not self.stopped.wait(self.interval):
            if self.proc is not None:
                code = self.proc.poll()
                if code is None:
                    continue
                self.proc = None
                if code != 0:
                    log.warning("the fleet document publisher exited with status %s; starting it again", code)
                    not_before = time.monotonic() + RESPAWN_S
            if time.monotonic() >= not_before and self._wanted():
                try:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-m", "server_monitor.serving.fleet_share", self.db_path, str(self.idle_max_util),
                         str(os.getpid())], cwd=ROOT, stdin=subprocess.DEVNULL)
                    self.starts += 1
                except OSError as exc:  # workers keep building themselves meanwhile
                    log.warning("cannot start the fleet document publisher: %s", exc)
                    not_before = time.monotonic() + RESPAWN_S
        self.stop()

    def stop(self):
        """Stop the thread and the publisher process (waits up to 5 s for it)."""
        self.stopped.set()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
