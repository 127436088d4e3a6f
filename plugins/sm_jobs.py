"""Background jobs of the hub process: roll-ups, retention and WAL checkpoints.

One daemon thread per hub process (``server_monitor.rollup.MaintenanceThread``), every
``data.maintenance_interval_s`` seconds (60; 0 turns it off). It never runs on the
request path.
"""

from datasette import hookimpl

from server_monitor import hub
from server_monitor.rollup import Maintenance, MaintenanceThread


@hookimpl
def startup(datasette):
    ctx = hub.context(datasette)
    interval = float(ctx.config.get("data.maintenance_interval_s", 60))
    if interval > 0 and getattr(ctx, "maintenance_thread", None) is None:
        ctx.maintenance_thread = MaintenanceThread(Maintenance.from_config(ctx.config), interval)
        ctx.maintenance_thread.start()
