"""The ``gpu_set()`` SQL function (``server_monitor.core.topology``) on every Datasette connection,
used by the ``free_gpus`` canned query to pick GPUs joined by NVLink on one NUMA node."""

from datasette import hookimpl

from server_monitor.core import topology


@hookimpl
def prepare_connection(conn, database, datasette):
    topology.register(conn)
