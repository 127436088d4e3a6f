"""Connection limits of the hub's HTTP server (security review N3, slowloris).

uvicorn closes a keep-alive connection that stays idle after a response, but it has no
timeout for a connection that is opened and then sends its request headers slowly (or never),
and no cap on open connections: 42,000 such sockets from one client used every file
descriptor of both workers, and ``/login``, ``/-/health`` and ingest stopped answering.

:class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with, per worker process:

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

import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("server_monitor.serving.netguard")

DEFAULTS = {"header_timeout_s": 10.0, "body_timeout_s": 30.0, "max_connections": 1000,
            "max_connections_per_address": 128}
# The limits of this worker process (configure() sets them from the config in create_app).
LIMITS = dict(DEFAULTS)
_open = {"total": 0}
_per_address = {}
_refused = {"total": 0, "per_address": 0}


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
    return dict(_refused)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with header and body deadlines and connection caps
    (module docstring). Pass as ``uvicorn.run(..., http=GuardedHttpToolsProtocol)``."""

    _sm_counted = False
    _sm_address = None
    _sm_timer = None
    _sm_cycle = None  # the request whose headers were seen last
    _sm_phase = "headers"  # what the connection waits for: "headers", "body" or "app" (no deadline)

    def connection_made(self, transport):
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        per_address = int(LIMITS["max_connections_per_address"])
        if _open["total"] >= LIMITS["max_connections"] or (
                per_address and address is not None and _per_address.get(address, 0) >= per_address):
            which = "total" if _open["total"] >= LIMITS["max_connections"] else "per_address"
            if _refused[which] % 1000 == 0:
                log.warning("refusing connections: %s open (limit %s), %s from %s (limit %s)", _open["total"],
                            LIMITS["max_connections"], _per_address.get(address, 0), address, per_address)
            _refused[which] += 1
            transport.abort()
            return
        self._sm_counted = True
        self._sm_address = address
        _open["total"] += 1
        if address is not None:
            _per_address[address] = _per_address.get(address, 0) + 1
        super().connection_made(transport)
        self._sm_arm(LIMITS["header_timeout_s"])

    def connection_lost(self, exc):
        self._sm_disarm()
        if not self._sm_counted:
            return
        self._sm_counted = False
        _open["total"] -= 1
        if self._sm_address is not None:
            left = _per_address.get(self._sm_address, 1) - 1
            if left > 0:
                _per_address[self._sm_address] = left
            else:
                _per_address.pop(self._sm_address, None)
        super().connection_lost(exc)

    def data_received(self, data):
        super().data_received(data)
        self._sm_track()

    def on_response_complete(self):
        super().on_response_complete()
        if self.transport.is_closing():
            return
        self._sm_phase = "headers"  # the next request's headers (keep-alive), unless pipelined
        self._sm_arm(LIMITS["header_timeout_s"])
        self._sm_track()

    def _sm_track(self):
        """Move the deadline on: headers complete → body deadline (or none while the app runs);
        body complete → none."""
        cycle = self.cycle
        if cycle is None:
            return
        if self._sm_phase == "headers" and cycle is not self._sm_cycle and not cycle.response_complete:
            self._sm_cycle = cycle
            if cycle.more_body:
                self._sm_phase = "body"
                self._sm_arm(LIMITS["body_timeout_s"])
            else:
                self._sm_phase = "app"
                self._sm_disarm()
        elif self._sm_phase == "body" and not cycle.more_body:
            self._sm_phase = "app"
            self._sm_disarm()

    def _sm_arm(self, seconds):
        self._sm_disarm()
        self._sm_timer = self.loop.call_later(seconds, self._sm_expired)

    def _sm_disarm(self):
        if self._sm_timer is not None:
            self._sm_timer.cancel()
            self._sm_timer = None

    def _sm_expired(self):
        self._sm_timer = None
        if not self.transport.is_closing():
            self.transport.close()
