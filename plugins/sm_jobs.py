"""Background jobs of the hub, each in one daemon thread, never on the request path:

* maintenance (roll-ups, retention, WAL checkpoints) every ``data.maintenance_interval_s``
  seconds (60; 0 turns it off);
* alert evaluation and delivery every ``alerts.interval_s`` seconds (``alerts.enabled``).

They run in one process per hub, the holder of the jobs lock (``server_monitor.jobs.leader``): the
worker itself with one worker, the ``serve`` process with several (this hook then only waits
on the lock and reads the leader's state for ``/-/health``).
"""

from datasette import hookimpl

from server_monitor.serving import hub
from server_monitor.jobs.leader import JobsLeader, start_jobs


@hookimpl
def startup(datasette):
    ctx = hub.context(datasette)
    if ctx.jobs is None:
        ctx.jobs = JobsLeader(ctx.config.db_path, lambda: start_jobs(ctx, ctx.config), ctx.dead_jobs)
        ctx.jobs.start()
