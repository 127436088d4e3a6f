"""Natural order of server names: ``dgx-a9 < dgx-a10 < dgx-a11 < dgx-a100`` (digit runs compare
as numbers, letters case-insensitively), as people number their hosts.

One key, three places that must agree (tests/test_natsort.py checks them against each other):

* ``servers.name_key`` (migration 29): :func:`sort_key` of the name shown
  (``coalesce(display_name, hostname)``), written with the name by every path that sets one
  (``storage/store.py`` ingest, the ``admin_set_server`` canned query) and re-checked at every
  start (:func:`server_monitor.storage.schema.refresh_name_keys`). Its plain BINARY order is the
  natural order, so the index ``servers_name_key (name_key, id)`` gives /admin's pages and the
  server lists in natural order without sorting or a per-row function.
* the SQL function ``natural_key(text)`` (``plugins/sm_natural.py`` registers it on every
  Datasette connection), for queries that order by a name that is not a server's stored key.
* ``naturalKey`` / ``naturalCompare`` in ``static/common.js`` (the dashboard's sorting): the
  same key built the same way, compared by code point (SQLite's BINARY order of UTF-8).

The key: the text lower-cased (``str.lower``, the same Unicode mapping as JavaScript's
``toLowerCase``), each run of ASCII digits without its leading zeros written as
``<digits of its length><its length><the digits>`` (``9`` → ``119``, ``10`` → ``1210``,
a 30-digit run → ``230…``): a longer number sorts after a shorter one whatever their digits,
numbers of equal length compare digit by digit, so text order is number order for any length.
The encoded run starts with a digit, so punctuation (``-``, ``.``) < numbers < letters, as in the
plain text. Names equal but for case or leading zeros (``DGX-A7``, ``dgx-a007``) have equal keys
(the queries break ties by server id)."""

import re

_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only (Python's \\d would take any Unicode digit; JS's does not)
# The key is built from the name's first MAX_KEY_CHARS code points (static/common.js cuts the same):
# host names are at most 253 characters, and natural_key() runs as Python inside an analyst's SQL,
# where no time limit stops it (round 4 attack run B4: a 16 MB string ran 11 s past a 2 s limit).
# Longer names that agree on these characters tie (and are ordered by server id).
MAX_KEY_CHARS = 1024


def _number(match):
    digits = match.group().lstrip("0") or "0"
    length = str(len(digits))
    return str(len(length)) + length + digits


def sort_key(text):
    """The natural sort key of ``text`` (str or None; None sorts as ""), a str whose plain
    code point order is the natural order. ``sort_key("DGX-A10") == "dgx-a1210"``,
    ``sort_key("dgx-a9") == "dgx-a119"``. Bytes (a name a hand edit stored as a BLOB) are read
    as UTF-8, bad bytes as U+FFFD; any other value as its ``str()``. Only the first
    :data:`MAX_KEY_CHARS` code points count (bounded work per call). Raises nothing: it runs
    inside SQL at every start (``refresh_name_keys``), where one exception stopped the hub
    starting (round 4 attack run B3)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text[:4 * MAX_KEY_CHARS]).decode("utf-8", "replace")
    elif text is not None and not isinstance(text, str):
        text = str(text)
    return _DIGITS.sub(_number, (text or "")[:MAX_KEY_CHARS].lower())


def register(conn):
    """Register ``natural_key(text)`` (:func:`sort_key`) on sqlite3 connection ``conn``."""
    conn.create_function("natural_key", 1, sort_key, deterministic=True)
