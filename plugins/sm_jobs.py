"""Background jobs of the hub, each in one daemon thread, never on the request path:

* maintenance (roll-ups, retention, WAL checkpoints) every ``data.maintenance_interval_s``
  seconds (60; 0 turns it off);
* alert evaluation and delivery every ``alerts.interval_s`` seconds (``alerts.enabled``).

With several worker processes (``server.workers``) only the one holding the jobs lock runs
them (``server_monitor.leader``); another takes over when it dies.
"""

from datasette import hookimpl

from server_monitor import alerts, hub
from server_monitor.leader import JobsLeader
from server_monitor.rollup import Maintenance, MaintenanceThread


def start_jobs(ctx):
    """Start the maintenance and alert threads of ``ctx`` (once)."""
    interval = float(ctx.config.get("data.maintenance_interval_s", 60))
    if interval > 0 and getattr(ctx, "maintenance_thread", None) is None:
        ctx.maintenance_thread = MaintenanceThread(Maintenance.from_config(ctx.config), interval)
        ctx.maintenance_thread.start()
    cfg = alerts.settings(ctx.config)
    if cfg["enabled"] and getattr(ctx, "alert_thread", None) is None:
        ctx.alert_thread = alerts.AlertThread(alerts.AlertEngine(ctx.config.db_path, cfg))
        ctx.alert_thread.start()


@hookimpl
def startup(datasette):
    ctx = hub.context(datasette)
    if ctx.jobs is None:
        ctx.jobs = JobsLeader(ctx.config.db_path, lambda: start_jobs(ctx), ctx.dead_jobs)
        ctx.jobs.start()
