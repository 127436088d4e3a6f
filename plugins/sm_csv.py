"""CSV exports that a spreadsheet cannot run (see docs/security.md L2).

Every ``.csv`` answer of Datasette (tables, canned queries, ``?sql=``, ``_stream=1``) is written
by one ``csv.writer`` call in ``datasette.views.base``; Datasette 0.65 has no hook for it. At
startup that module's ``csv`` is replaced by a shim whose writer prefixes a text cell starting
with ``=``, ``+``, ``-``, ``@``, tab or carriage return (OWASP's list, plus their full-width
forms) with ``'``, unless the cell is a plain number (``-3``, ``+1.5e3`` stay numbers). Agent
text such as process user names (from a container's own ``/etc/passwd``) then stays text.
"""

import csv as _csv
import re
import types

from datasette import hookimpl
from datasette.views import base

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def escape_cell(value):
    """``value`` safe for a spreadsheet: text that would start a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class _EscapingWriter:
    def __init__(self, fileobj, *args, **kwargs):
        self._writer = _csv.writer(fileobj, *args, **kwargs)

    def writerow(self, row):
        # Returns what the file's write() returned: Datasette awaits it.
        return self._writer.writerow([escape_cell(cell) for cell in row])

    def writerows(self, rows):
        return self._writer.writerows([[escape_cell(cell) for cell in row] for row in rows])


def _shim():
    module = types.ModuleType("csv")
    module.__dict__.update({k: v for k, v in vars(_csv).items() if not k.startswith("__")})
    module.writer = _EscapingWriter
    module.sm_escaping = True
    return module


def install():
    """Patch Datasette's CSV writer (idempotent); returns True when the patch is in place."""
    if not getattr(base.csv, "sm_escaping", False):
        base.csv = _shim()
    return True


install()


@hookimpl
def startup(datasette):
    install()
