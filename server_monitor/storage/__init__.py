"""Storage layer: ``monitor.db`` and what writes it — ``schema`` (migrations, connections),
``dbguard`` (a database replaced under the hub), ``contract`` (report validation), ``store``
(reports → one transaction), ``rollup`` (tiers, retention, GPU-hours, WAL checkpoints) and
``instance`` (the data-directory and writer locks). Imports only ``server_monitor.core``."""
