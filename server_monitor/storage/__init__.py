"""Storage layer: ``monitor.db`` and what writes it — ``schema`` (migrations, connections),
``dbguard`` (a database replaced under the hub), ``contract`` (report validation), ``store``
(reports → one transaction), ``rollup`` (tiers, retention, GPU-hours, WAL checkpoints),
``instance`` (the data-directory and writer locks) and ``xidtext`` (an XID line without
the process's pid and name). Imports only ``server_monitor.core`` (and the text rule shared
with the agent, ``monitor_agent.textrule``)."""
