"""Canned queries from ``canned_queries/*.sql`` plus the ``:_scope_*`` magic parameters.

Each ``.sql`` file is one canned query on the ``monitor`` database, named by its file
stem (see ``server_monitor/serving/queries.py``). Queries filter rows with
``(:_scope_all or s.id in (select value from json_each(:_scope_servers)))`` so every
actor sees only the servers in their scope.
"""

from datasette import hookimpl

from server_monitor.core.config import idle_hours
from server_monitor.serving import hub
from server_monitor.serving.queries import DATABASE, DATASETTE_QUERIES, scope_value


@hookimpl
def canned_queries(datasette, database, actor):
    # Admin-only (write) queries are listed here for everyone; sm_auth's permission rules
    # let only admins see or run them.
    return DATASETTE_QUERIES if database == DATABASE else None


@hookimpl
def register_magic_parameters(datasette):
    def config_value(key, request):
        """``:_config_<key>``: the ``features.<key>`` default from config.yaml."""
        config = hub.context(datasette).config
        if key == "idle_hours":  # one threshold for the Idle holders panel and the nudges
            return idle_hours(config)
        value = config.get(f"features.{key}")
        if value is None:
            raise KeyError(key)
        return value

    return [
        ("scope", lambda key, request: scope_value(key, request.actor if request else None)),
        ("config", config_value),
    ]
