"""uvicorn's httptools protocol with the hub's connection limits (security review N3): header
and body deadlines, a cap on open connections per worker and per client address. The limits and
their reasons are in :mod:`server_monitor.serving.netguard`; this module is what
``server-monitor serve`` names as uvicorn's ``http`` (it imports uvicorn, so only the workers
load it)."""

import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .netguard import LIMITS, OPEN, PER_ADDRESS, REFUSED

log = logging.getLogger("server_monitor.serving.netproto")


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
        if OPEN["total"] >= LIMITS["max_connections"] or (
                per_address and address is not None and PER_ADDRESS.get(address, 0) >= per_address):
            which = "total" if OPEN["total"] >= LIMITS["max_connections"] else "per_address"
            if REFUSED[which] % 1000 == 0:
                log.warning("refusing connections: %s open (limit %s), %s from %s (limit %s)", OPEN["total"],
                            LIMITS["max_connections"], PER_ADDRESS.get(address, 0), address, per_address)
            REFUSED[which] += 1
            transport.abort()
            return
        self._sm_counted = True
        self._sm_address = address
        OPEN["total"] += 1
        if address is not None:
            PER_ADDRESS[address] = PER_ADDRESS.get(address, 0) + 1
        super().connection_made(transport)
        self._sm_arm(LIMITS["header_timeout_s"])

    def connection_lost(self, exc):
        self._sm_disarm()
        if not self._sm_counted:
            return
        self._sm_counted = False
        OPEN["total"] -= 1
        if self._sm_address is not None:
            left = PER_ADDRESS.get(self._sm_address, 1) - 1
            if left > 0:
                PER_ADDRESS[self._sm_address] = left
            else:
                PER_ADDRESS.pop(self._sm_address, None)
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
