"""Canned queries from ``canned_queries/*.sql`` plus the ``:_scope_*`` magic parameters.

Each ``.sql`` file is one canned query on the ``monitor`` database, named by its file
stem. Leading ``-- key: value`` comment lines set its Datasette options (``title``,
``description``, ``hide_sql``, ``write``). Queries filter rows with
``(:_scope_all or s.id in (select value from json_each(:_scope_servers)))`` so every
actor sees only the servers in their scope.
"""

import json
import os

from datasette import hookimpl

QUERY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "canned_queries")
DATABASE = "monitor"
_OPTION_KEYS = {"title", "description", "hide_sql", "write", "on_success_message", "on_success_redirect"}


def parse_query_file(text):
    """``.sql`` text to a Datasette canned query dict (``sql`` plus header options)."""
    options = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        key, sep, value = stripped[2:].partition(":")
        key = key.strip()
        if sep and key in _OPTION_KEYS:
            value = value.strip()
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    options["sql"] = text.strip()
    return options


def load_queries(directory=QUERY_DIR):
    """``{name: canned query dict}`` for every ``*.sql`` file in ``directory``."""
    queries = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".sql"):
            with open(os.path.join(directory, name), encoding="utf-8") as fp:
                queries[name[:-4]] = parse_query_file(fp.read())
    return queries


_QUERIES = load_queries()


@hookimpl
def canned_queries(datasette, database, actor):
    if database != DATABASE:
        return None
    return _QUERIES


def _scope(key, request):
    """``:_scope_all`` is 1 for all-server actors; ``:_scope_servers`` a JSON id list."""
    actor = request.actor if request else None
    # No actor sees nothing; actors without a "servers" list see every server.
    scope = actor.get("servers", "*") if actor else []
    if key == "all":
        return 1 if scope == "*" else 0
    if key == "servers":
        return json.dumps([] if scope == "*" else list(scope))
    raise KeyError(key)


@hookimpl
def register_magic_parameters(datasette):
    return [("scope", _scope)]
