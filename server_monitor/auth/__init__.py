"""Accounts layer: ``auth.db`` — users, invites, sessions and the login limiter (``accounts``)
and per-host agent tokens (``tokens``). Imports only ``server_monitor.core``."""
