"""The ``natural_key()`` SQL function (``server_monitor.core.natural``: dgx-a9 < dgx-a10 < dgx-a100)
on every Datasette connection, for the canned queries that list servers
(``order by natural_key(name)``)."""

from datasette import hookimpl

from server_monitor.core import natural


@hookimpl
def prepare_connection(conn, database, datasette):
    natural.register(conn)
