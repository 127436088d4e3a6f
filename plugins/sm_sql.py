"""Datasette's SQL connections without ``fts3_tokenizer()`` (see docs/security.md L7).

Debian's libsqlite3 is built with ``SQLITE_ENABLE_FTS3_TOKENIZER``: ``fts3_tokenizer('porter')``
returns a pointer into libsqlite3 (an ASLR leak) and the two-argument form registers a tokenizer
at any address (the primitive of known SQLite RCE chains). On every connection Datasette opens,
an authorizer refuses any statement that calls it ("not authorized"), both forms are also replaced
by a function that raises, and on Python 3.12+ the tokenizer switch
(``SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER``) is turned off as well.

Connections of the analysts' SQL threads also get a lower ``SQLITE_LIMIT_LENGTH``
(``server_monitor.serving.analyst.limit_connection``, security review N5).
"""

import sqlite3

from datasette import hookimpl

from server_monitor.serving import analyst


def _refused(*args):
    raise sqlite3.OperationalError("fts3_tokenizer() is disabled on this hub")


def _authorizer(action, arg1, arg2, db_name, trigger):
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "fts3_tokenizer":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def harden(conn):
    """Disable ``fts3_tokenizer`` on ``conn`` (a ``sqlite3.Connection``)."""
    conn.set_authorizer(_authorizer)
    for n_args in (1, 2):
        conn.create_function("fts3_tokenizer", n_args, _refused)
    option = getattr(sqlite3, "SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER", None)
    if option is not None and hasattr(conn, "setconfig"):
        conn.setconfig(option, False)


@hookimpl
def prepare_connection(conn, database, datasette):
    harden(conn)
    analyst.limit_connection(conn)  # bounded printf(); analysts' threads: values of at most 16 MiB (N5)
