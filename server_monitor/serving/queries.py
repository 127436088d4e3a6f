"""Canned queries (``canned_queries/*.sql``) and the actor scope they filter by.

Shared by the Datasette plugin that registers them (``plugins/sm_canned.py``) and the
JSON endpoints that run them directly (``plugins/sm_api.py``).
"""

import json
import math
import os
import re

from ..core.config import idle_hours
from . import hub

QUERY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "canned_queries")
DATABASE = "monitor"
_OPTION_KEYS = {"title", "description", "hide_sql", "write", "on_success_message", "on_success_redirect",
                "on_error_redirect", "admin"}


def parse_query_file(text):
    """``.sql`` text to a Datasette canned query dict: ``sql`` plus ``-- key: value`` options."""
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


QUERIES = load_queries()


# For Datasette: the queries without our own "admin" option.
DATASETTE_QUERIES = {name: {k: v for k, v in q.items() if k != "admin"} for name, q in QUERIES.items()}
# Names of the admin-only (write) queries; plugins/sm_auth.py lets only admins run them.
ADMIN_QUERIES = frozenset(name for name, q in QUERIES.items() if q.get("admin"))


def scope_value(key, actor):
    """Value of magic parameter ``:_scope_<key>`` for ``actor``.

    ``all``: 1 when the actor sees every server (no ``servers`` list), else 0.
    ``servers``: JSON array of the server ids the actor may see (``[]`` with ``all``).
    ``processes``: 1 when the actor may see GPU processes (users, process names).
    No actor sees nothing. Raises KeyError for other keys.
    """
    scope = actor.get("servers", "*") if actor else []
    if key == "all":
        return 1 if scope == "*" else 0
    if key == "servers":
        return json.dumps([] if scope == "*" else list(scope))
    if key == "processes":
        return 1 if actor and actor.get("processes", True) else 0
    raise KeyError(key)


def scope_params(actor):
    """The scope parameters, for running a canned query outside Datasette's views."""
    return {f"_scope_{key}": scope_value(key, actor) for key in ("all", "servers", "processes")}


def config_params(config):
    """``:_config_<key>`` values (``features.*`` in config.yaml) for running queries directly;
    ``idle_hours`` is :func:`server_monitor.core.config.idle_hours` (the nudges' threshold too)."""
    values = {f"_config_{key}": value for key, value in (config.get("features") or {}).items()}
    values["_config_idle_hours"] = idle_hours(config)
    return values


# Parameters of the canned queries that name a row or a span: a value that is not one is a 400
# naming the parameter (canned_param_problem), not a 200 with no rows.
INTEGER_PARAMS = frozenset({"server_id", "gpu_id"})
NUMBER_PARAMS = frozenset({"hours"})
_INTEGER_RE = re.compile(r"^\s*[+-]?[0-9]{1,18}\s*$")  # ASCII digits (\d takes any Unicode digit)
_CANNED_PATH_RE = re.compile(r"^/" + DATABASE + r"/(\w+)(?:\.(?:json|csv))?$")


def canned_param_problem(path, query):
    """For a GET of the canned query at ``path`` (``/monitor/<name>``, ``.json`` or ``.csv``) with
    the parsed query string ``query`` (``{name: [values]}``): the message of a 400 when one of its
    parameters :data:`INTEGER_PARAMS` (``server_id``, ``gpu_id``: an integer) or
    :data:`NUMBER_PARAMS` (``hours``: a finite number) has a non-empty value that is not one,
    e.g. ``"server_id must be an integer (a server's id), not 'abc'"``; None otherwise (other paths,
    empty values: the query's default). The value is repeated cut to 40 characters."""
    match = _CANNED_PATH_RE.match(path)
    for name in _CHECKED_PARAMS.get(match.group(1), ()) if match else ():
        for value in query.get(name) or ():
            if not value.strip():
                continue
            if name in INTEGER_PARAMS and not _INTEGER_RE.match(value):
                return f"{name} must be an integer (an id), not {value[:40]!r}"
            if name in NUMBER_PARAMS:
                try:
                    finite = math.isfinite(float(value))
                except ValueError:
                    finite = False
                if not finite:
                    return f"{name} must be a number, not {value[:40]!r}"
    return None


def named_parameters(sql):
    """The ``:name`` parameters of ``sql`` (comments included; ``::`` casts are not parameters)."""
    return set(re.findall(r"(?<![:\w]):(\w+)", sql))


# Each canned query's parameters that canned_param_problem checks, sorted (read once, not per request).
_CHECKED_PARAMS = {name: sorted((INTEGER_PARAMS | NUMBER_PARAMS) & named_parameters(q["sql"]))
                   for name, q in QUERIES.items()}


async def run(datasette, name, actor, **params):
    """Run canned query ``name`` on ``monitor`` for ``actor``; returns a list of dicts.

    ``params``: the query's own parameters (``None`` and those not given are passed as ``""``,
    as Datasette does for a canned query's missing parameters).
    """
    sql = QUERIES[name]["sql"]
    values = {key: "" for key in named_parameters(sql)}
    values.update(scope_params(actor))
    values.update(config_params(hub.context(datasette).config))
    values.update({k: "" if v is None else str(v) for k, v in params.items()})
    result = await datasette.get_database(DATABASE).execute(sql, values)
    return [dict(row) for row in result.rows]
