"""Natural order of server names: ``dgx-a9 < dgx-a10 < dgx-a11 < dgx-a100`` (digit runs compare
as numbers, the rest case-insensitively), as people number their hosts.

The canned queries that list servers order by the SQL function ``natural_key(name)``
(``plugins/sm_natural.py`` registers it on every Datasette connection): one call per row, a
plain string compared by SQLite's own sorter (a collation callback would be called per
comparison: 1.4 million Python calls to sort 80,000 GPU rows). The dashboard sorts the same way
in ``static/common.js`` (``naturalCompare``: ``Intl.Collator`` with ``numeric: true``)."""

import re

_DIGITS = re.compile(r"\d+")
PAD = 20  # digit runs are compared as numbers of up to 20 digits (longer ones as text)


def sort_key(text):
    """The natural sort key of ``text`` (str or None; None sorts as ""): lower-cased (casefold),
    each run of digits without its leading zeros, left-padded with zeros to :data:`PAD` digits.
    ``sort_key("DGX-A10") == "dgx-a00000000000000000010"``."""
    return _DIGITS.sub(lambda m: (m.group().lstrip("0") or "0").rjust(PAD, "0"), (text or "").casefold())


def register(conn):
    """Register ``natural_key(text)`` (:func:`sort_key`) on sqlite3 connection ``conn``."""
    conn.create_function("natural_key", 1, sort_key, deterministic=True)
