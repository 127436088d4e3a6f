"""Datasette's error handler without rich tracebacks on the event loop (issue 13).

Datasette 0.65's default ``handle_exception`` prints every exception it answers, a 400 included
(an analyst's query stopped by its time limit, a bad parameter), with rich's traceback renderer
and ``show_locals=True``, synchronously on the event loop. On a busy 2-core hub one such print
(the first one also imports rich's syntax highlighting) held every other request, viewers' and
agents' alike, for 3–10 s. This turns the rich printer off at startup: client errors are
answered without printing, server errors (500) are still printed as a plain traceback by
Datasette's own fallback.
"""

import datasette.handle_exception as default_handler
from datasette import hookimpl


@hookimpl
def startup(datasette):
    default_handler.rich = None
