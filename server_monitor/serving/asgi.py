"""The hub as an ASGI application: what ``server-monitor serve`` hands to uvicorn.

``create_app()`` builds the Datasette instance the way ``datasette serve`` would with the
hub's arguments (one database ``monitor``, ``metadata.yml``, ``plugins/``, ``templates/``,
``static/`` and the settings below) and returns its ASGI app, with the startup hooks run
at ASGI lifespan startup (so the background jobs and the ingest app exist before the first
request). It is a factory so that uvicorn can start it in each of ``server.workers``
processes (``uvicorn.run("server_monitor.serving.asgi:create_app", factory=True, workers=N)``): the
processes share the listening socket, each accepts its own connections.

Process-wide state that must be shared between the workers lives in SQLite or behind a
file lock (see ``docs/architecture.md``, "Worker processes"): sessions and the login
limiter in ``auth.db``, the background jobs in one worker at a time (``server_monitor.jobs.leader``),
analysts' ad-hoc SQL gated across workers. Per-worker caches (the fleet document) are keyed
by ``PRAGMA data_version``, so every worker serves the same data.
"""

import logging
import os
import sys
import threading
import time

from ..core import config as config_mod
from ..core.process import die_with_parent
from . import netguard
from .analyst import RoutingExecutor, interrupt_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# How long a thread that wants the GIL waits before the running one is asked to let go
# (Python's default: 5 ms). Ingest's writer thread gives the GIL up in every SQLite call and
# must get it back while it holds the writer lock that every worker queues on; with 5 ms, a
# report's 20-odd statements could wait 100 ms behind a thread rendering JSON.
SWITCH_INTERVAL_S = 0.001


def settings(cfg):
    """Datasette settings of the hub (dict of setting name -> value) for config ``cfg``.

    ``num_sql_threads``: the viewers' SQL threads; analysts' ad-hoc SQL runs on threads of its
    own (``server_monitor/serving/analyst.py``, :func:`build_datasette` installs the pool).
    """
    return {
        "max_returned_rows": 20000,
        "sql_time_limit_ms": 5000,
        "num_sql_threads": 3,
    }


def build_datasette(cfg):
    """A :class:`datasette.app.Datasette` serving ``cfg.db_path`` with the hub's plugins.

    Raises what Datasette raises for a broken metadata file or database
    (``datasette.app.StartupError``, ``sqlite3.Error``).
    """
    # Deferred: datasette.app loads Jinja, the plugin manager and every view (~0.2 s); the fleet
    # publisher subprocess imports this module and never builds Datasette.
    from datasette.app import Datasette
    from datasette.utils import parse_metadata

    with open(os.path.join(ROOT, "metadata.yml")) as fp:
        metadata = parse_metadata(fp.read())
    datasette = Datasette(
        [cfg.db_path],
        metadata=metadata,
        plugins_dir=os.path.join(ROOT, "plugins"),
        template_dir=os.path.join(ROOT, "templates"),
        static_mounts=[("static", os.path.join(ROOT, "static"))],
        settings=settings(cfg),
        secret=cfg.get("server.secret_key"),
        cache_headers=True,
    )
    # Datasette's SQL pool, with analysts' ad-hoc SQL routed to lower-priority threads of its own.
    datasette.executor = RoutingExecutor(settings(cfg)["num_sql_threads"],
                                         int(cfg.get("sql.analyst_concurrency", 1)))
    return datasette


class _Startup:
    """ASGI wrapper that runs Datasette's startup hooks at lifespan startup."""

    def __init__(self, datasette, app):
        self.datasette, self.app = datasette, app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.datasette.invoke_startup()
                except Exception as exc:  # noqa: BLE001 - reported to uvicorn, which stops the worker
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn has cancelled the requests still running after server.shutdown_timeout_s;
                # their SQL still runs in Datasette's threads: stop it, so the threads let the
                # process exit (I-10), and end the process should one still not finish.
                interrupt_all()
                _exit_watchdog(EXIT_WATCHDOG_S)
                await send({"type": "lifespan.shutdown.complete"})
                return


# After the lifespan shutdown, a worker has this long to exit before it ends itself (I-10).
EXIT_WATCHDOG_S = 10.0


def _exit_watchdog(seconds):
    """End this process ``seconds`` from now if it is still running (security review I-10).

    uvicorn cancels requests still running after ``server.shutdown_timeout_s``, but a Python
    function inside SQLite (or any SQL thread) cannot be cancelled, and the interpreter waits for
    every SQL thread before it exits: a worker stuck that way kept the port and the database lock
    until SIGKILL. SQLite rolls back whatever such a thread had not committed."""
    def wait_then_exit():
        time.sleep(seconds)
        logging.getLogger("server_monitor").error(
            "worker %s still running %.0f s after shutdown (a long SQL call?): exiting now", os.getpid(), seconds)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=wait_then_exit, name="exit-watchdog", daemon=True).start()


def create_app():
    """The hub's ASGI app for the config named by ``$SERVER_MONITOR_CONFIG`` (uvicorn factory).

    Called once per worker process by uvicorn. Raises :class:`config.ConfigError` for a bad
    config (``serve`` has checked it before starting workers).
    """
    cfg = config_mod.load(os.environ.get(config_mod.ENV_VAR, "config.yaml"))
    netguard.configure(cfg)  # this worker's connection limits (N3)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if config_mod.worker_count(cfg) > 1:
        die_with_parent()  # a worker of serve (which set $SERVER_MONITOR_WORKERS): dies with it
    datasette = build_datasette(cfg)
    return _Startup(datasette, datasette.app())
