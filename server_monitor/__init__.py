"""Server Monitor hub: the code behind ``server-monitor serve``, in five rooms (layers).

* ``core`` — configuration and pure GPU knowledge (health badge, NVLink/NUMA sets);
* ``storage`` — ``monitor.db``: schema and migrations, the report contract, storing reports,
  roll-ups and retention, the data-directory and writer locks;
* ``auth`` — ``auth.db``: users, invites, sessions, the login limiter, agent tokens;
* ``serving`` — what answers HTTP inside Datasette: the ASGI factory, the ingest bridge, the
  plugins' hub context, canned queries, the fleet document, Prometheus metrics, the analysts'
  SQL gate, page helpers;
* ``jobs`` — background jobs (one process per hub): maintenance, WAL checkpoints, the fleet
  publisher, alerts, Litestream replication.

A room imports only the rooms below it (docs/architecture.md, "Layers of the hub package";
``tests/test_architecture.py`` checks it). ``cli.py`` is the ``server-monitor`` command.
The WSGI ingest endpoint (``ingest.py``) and the Datasette plugins (``plugins/``) sit on top
and may use every room; nothing here imports them.
"""

__version__ = "0.1.0"
