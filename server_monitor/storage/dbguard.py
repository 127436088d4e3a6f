"""Noticing that ``monitor.db`` was deleted or replaced under the running hub (see docs/reliability.md H2).

SQLite keeps working on an open file after its path is unlinked: without this guard the
hub went on acknowledging reports into the deleted file, served its old data, and a
background job re-created an empty file at the path. The hub records the file identity
(``st_dev``, ``st_ino``) of its database when ingest starts (:func:`watch`); every later
:func:`check` ``stat()``\\s the path (about a microsecond) and, once the path no longer names
that file, the hub is in a sticky "database replaced" state until it is restarted:

* ingest answers 503 with ``Retry-After`` (agents keep the reports in their spool and
  deliver them after the restart);
* :func:`server_monitor.storage.schema.connect` refuses to open the path, so no job creates a new
  empty database there or writes into one;
* ``/-/health`` answers 503 with ``database_replaced: true`` and the reason (the UI banner
  shows it);
* the log says so at CRITICAL level, once, with what to do.
"""

import logging
import os
import sqlite3
import threading

log = logging.getLogger("server_monitor.dbguard")

_guards = {}
_lock = threading.Lock()


class DatabaseReplaced(sqlite3.OperationalError):
    """The database file was deleted or replaced while the hub runs; ``str()`` says what to do."""


class Guard:
    """Identity of one database file, compared with what its path names now."""

    def __init__(self, path):
        self.path = path
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)
        self.problem = None

    def check(self):
        """``None`` while the path still names the watched file, else the problem text (sticky)."""
        if self.problem is not None:
            return self.problem
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            what = "deleted"
        except OSError:  # e.g. a permission change: not evidence of replacement
            return None
        else:
            if (st.st_dev, st.st_ino) == self.identity:
                return None
            what = "replaced by another file"
        self.problem = (f"{self.path} was {what} while the hub was running; reports are refused (agents keep "
                        "them) until the hub is restarted. Restore the file, or restart to start an empty database")
        log.critical("%s", self.problem)
        return self.problem


def watch(path):
    """Start watching ``path`` (an existing database file); returns its :class:`Guard`.

    Called again for the same path (a new hub in the same process, e.g. in tests) it
    starts over from the file the path names now.
    """
    guard = Guard(os.path.abspath(path))
    with _lock:
        _guards[guard.path] = guard
    return guard


def check(path):
    """The problem text when ``path`` is watched and no longer names its file, else ``None``."""
    guard = _guards.get(os.path.abspath(path))
    return guard.check() if guard is not None else None


def ensure(path):
    """Raise :class:`DatabaseReplaced` when :func:`check` reports a problem for ``path``."""
    problem = check(path)
    if problem is not None:
        raise DatabaseReplaced(problem)
