"""One hub per database: a lock next to ``monitor.db`` and a free-port check before start.

``server-monitor serve`` calls :func:`acquire_data_lock` and :func:`check_port_free` before
it starts uvicorn. The lock is an ``flock`` on ``<data.path>.lock`` held by the ``serve``
process for its whole life; the kernel drops it when the process dies (no stale lock files
to clean up).
A second hub on the same database, on any port, is refused with one line naming the
first one (pid and address, read from the lock file).
"""

import errno
import fcntl
import os
import socket
import sqlite3
import stat
import threading


class InstanceError(RuntimeError):
    """Another hub holds the database, or the listen address is taken; ``str()`` says which."""


class UnsafeFileError(OSError):
    """A lock file or the shelf directory is a link, not a regular file (directory), belongs to
    another user or is writable by others; ``str()`` is one line naming it (N8)."""


def _refuse(path, what, why):
    return UnsafeFileError(f"{path}: {why}; refusing to use it as {what}. Remove it and keep the data "
                           f"directory writable by the hub's user (uid {os.geteuid()}) only")


def open_lock_file(path):
    """Open (create 0600 when missing) the lock file ``path`` for ``flock``; returns the descriptor.

    Never follows a symbolic link (``O_NOFOLLOW``), is not inherited by child processes
    (``O_CLOEXEC``), and refuses a file that is not a regular file owned by this process's
    effective user: in a data directory others can write to, a planted link made the hub
    truncate the link's target and a planted lock held by another user hung every ingest
    (security review 227e0d8, N8). A file of ours with group/other permission bits is made 0600.
    Raises :class:`UnsafeFileError` for such a file, ``OSError`` when it cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "a lock file", "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise _refuse(path, "a lock file", "not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "a lock file", "not a regular file")
        if st.st_uid != os.geteuid():
            raise _refuse(path, "a lock file", f"owned by uid {st.st_uid}")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_private_dir(path):
    """Raise :class:`UnsafeFileError` unless ``path`` (when it exists) is a real directory (not
    a link) owned by this process's effective user and not writable by group or others. For
    the fleet shelf ``<db_path>.fleet``, whose documents are served to viewers (N8)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "the shelf directory", "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory")
    if st.st_uid != os.geteuid():
        raise _refuse(path, "the shelf directory", f"owned by uid {st.st_uid}")
    if st.st_mode & 0o022:
        raise _refuse(path, "the shelf directory", f"writable by others (mode {st.st_mode & 0o777:o})")


def lock_path(db_path):
    """The lock file of a database: ``<db_path>.lock`` (in the data directory)."""
    return db_path + ".lock"


def acquire_data_lock(db_path, url):
    """Take the exclusive lock for ``db_path``; returns the open descriptor (keep it open).

    ``url``: the address this hub will serve, written into the lock file for the error
    message of a second hub. Raises :class:`InstanceError` when another process holds the
    lock, :class:`UnsafeFileError` for a planted lock file (see :func:`open_lock_file`),
    ``OSError`` when the lock file cannot be created (e.g. missing directory).
    """
    path = lock_path(db_path)
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            os.close(fd)
            raise
        try:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        os.close(fd)
        raise InstanceError(f"another hub already uses {db_path} ({holder}); stop it first, "
                            "or give this one its own data.path")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, {url}\n".encode(), 0)
    return fd


def check_port_free(host, port):
    """Raise :class:`InstanceError` unless ``host:port`` can be bound now (TCP).

    Binds with ``SO_REUSEADDR`` (as uvicorn does), so sockets in TIME_WAIT do not count.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InstanceError(f"cannot listen on {host}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InstanceError(f"port {port} on {host} is already in use (another hub or program); "
                                "stop it or choose another port with --port")
        raise InstanceError(f"cannot listen on {host}:{port}: {exc.strerror}")
    finally:
        sock.close()


class WriterLock:
    """Serialises the hub's write transactions (ingest in every worker, maintenance).

    SQLite lets one writer in at a time and makes the others poll: a writer that finds the
    database locked sleeps (1, 2, 5, 10 … up to 100 ms between tries) until ``busy_timeout``.
    With two worker processes taking reports, and the maintenance pass writing beside them,
    those sleeps, not the work, made ingest slow. This lock (an ``flock`` on
    ``<data.path>.write.lock`` plus a thread lock) queues the writers in the kernel instead,
    which wakes the next one the moment the lock is released. Use as a context manager around
    one transaction; it is held for that only. Raises ``OSError`` when the lock file cannot
    be opened (:class:`UnsafeFileError` for a planted one, see :func:`open_lock_file`).
    """

    def __init__(self, db_path):
        self.path = db_path + ".write.lock"
        self._fd = open_lock_file(self.path)
        self._thread_lock = threading.Lock()

    def __enter__(self):
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class LockedWriter(sqlite3.Connection):
    """A writer connection whose ``BEGIN IMMEDIATE`` … ``COMMIT``/``ROLLBACK`` transactions hold
    its ``writer_lock`` (a :class:`WriterLock`, set after connecting; none: no lock). For the
    maintenance pass, whose transactions then queue with ingest's instead of making it poll."""

    writer_lock = None
    _held = False

    def execute(self, sql, *args):
        if (self.writer_lock is not None and not self._held
                and sql.lstrip()[:15].upper() == "BEGIN IMMEDIATE"):
            self.writer_lock.__enter__()
            self._held = True
        try:
            return super().execute(sql, *args)
        finally:
            if self._held and not self.in_transaction:  # committed, rolled back, or BEGIN failed
                self._held = False
                self.writer_lock.__exit__(None, None, None)
