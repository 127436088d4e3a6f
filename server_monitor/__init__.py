"""Server Monitor hub: configuration, schema, report contract and storage.

The hub is Datasette (reporting, auth, JSON API) plus the WSGI ingest endpoint in
``ingest.py``; this package holds the code both of them share.
"""

__version__ = "0.1.0"
