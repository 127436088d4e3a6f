"""Serving layer: what answers HTTP inside the Datasette hub — ``asgi`` (the app factory),
``wsgi_bridge`` (the ingest writer thread inside ASGI), ``hub`` (per-instance context for the
plugins), ``queries`` (canned queries and scope), ``fleet``/``fleet_share`` (the fleet document),
``metrics`` (Prometheus), ``analyst`` (the analysts' SQL gate) and ``web`` (pages with the strict
CSP). Imports ``core``, ``storage`` and ``auth``; never ``jobs``, the plugins or ``ingest.py``."""
