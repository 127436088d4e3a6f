"""Connection limits of the hub's HTTP server (security review N3, slowloris).

uvicorn closes a keep-alive connection that stays idle after a response, but it has no
timeout for a connection that is opened and then sends its request headers slowly (or never),
and no cap on open connections: 42,000 such sockets from one client used every file
descriptor of both workers, and ``/login``, ``/-/health`` and ingest stopped answering.

``server_monitor.serving.netproto.GuardedHttpToolsProtocol`` is uvicorn's httptools protocol with,
per worker process, these limits (kept here, where importing them costs no uvicorn):

* a header deadline: a request's headers must be complete ``server.header_timeout_s`` (10 s)
  after the connection opened or the previous response ended, else the connection is closed;
* a body deadline: its body must have arrived ``server.body_timeout_s`` (30 s) after its
  headers, else the connection is closed (the app sees a disconnect);
* at most ``server.max_connections`` open connections (default 1,000, and never more than
  three quarters of the process's file limit ``RLIMIT_NOFILE``): beyond that a new connection is
  closed at once, before anything is read;
* at most ``server.max_connections_per_address`` open connections from one client address
  (default 128; 0 turns it off). Behind a reverse proxy every request comes from the proxy's
  address: raise it there (docs/operations.md), the proxy enforces its own per-client limits.

uvicorn's ``limit_concurrency`` (503 once that many connections or requests are open) is set
to the same ``max_connections`` by ``server-monitor serve``.
"""

import resource

DEFAULTS = {"header_timeout_s": 10.0, "body_timeout_s": 30.0, "max_connections": 1000,
            "max_connections_per_address": 128}
# The limits of this worker process (configure() sets them from the config in create_app).
LIMITS = dict(DEFAULTS)
# Open connections of this worker, in all and per client address, and those refused
# (maintained by the protocol, on the event loop's thread).
OPEN = {"total": 0}
PER_ADDRESS = {}
REFUSED = {"total": 0, "per_address": 0}


def fd_cap(max_connections):
    """``max_connections``, lowered to three quarters of the soft ``RLIMIT_NOFILE`` (the rest
    is for database files, SQLite's and uvicorn's own descriptors)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return max_connections
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return max_connections
    return max(16, min(max_connections, soft * 3 // 4))


def configure(config):
    """Set this process's :data:`LIMITS` from ``server.*`` of a loaded config (see the module
    docstring); returns them (dict)."""
    for key, default in DEFAULTS.items():
        LIMITS[key] = type(default)(config.get(f"server.{key}", default))
    LIMITS["max_connections"] = fd_cap(int(LIMITS["max_connections"]))
    return dict(LIMITS)


def refused_counts():
    """Connections refused so far by this worker: ``{"total": n, "per_address": n}``."""
    return dict(REFUSED)
