"""Datasette's error handler without rich tracebacks on the event loop (issue 13).

Datasette 0.65's default ``handle_exception`` prints every exception it answers, a 400 included
(an analyst's query stopped by its time limit, a bad parameter), with rich's traceback renderer
and ``show_locals=True``, synchronously on the event loop. On a busy 2-core hub one such print
(the first one also imports rich's syntax highlighting) held every other request, viewers' and
agents' alike, for 3–10 s. This turns the rich printer off at startup: client errors are
answered without printing, server errors (500) are still printed as a plain traceback by
Datasette's own fallback.

A query stopped by its time limit while Datasette renders CSV (``/monitor.csv?sql=``) escaped
Datasette's CSV view as ``QueryInterrupted`` and was answered 500 (security review I-7); it is
answered 400 "SQL query took too long", as the JSON and HTML views answer it.
"""

import datasette.handle_exception as default_handler
from datasette import hookimpl
from datasette.database import QueryInterrupted
from datasette.views.base import DatasetteError


@hookimpl
def startup(datasette):
    default_handler.rich = None


@hookimpl(tryfirst=True)
def handle_exception(datasette, request, exception):
    """``QueryInterrupted`` (a query past its time limit) → 400, for every view; others: Datasette's."""
    if not isinstance(exception, QueryInterrupted):
        return None
    return default_handler.handle_exception(datasette, request, DatasetteError(
        "SQL query took too long (the time limit stopped it).", title="SQL Interrupted", status=400))
