"""Background jobs layer: ``leader`` (one process per hub runs the jobs: WAL checkpoints,
maintenance, the fleet publisher, alerts, replication), ``alerts`` (rules and delivery) and
``replication`` (Litestream supervised, restore). Imports ``core``,
``storage`` and ``serving`` (the fleet publisher, the analysts' lock paths); nothing below imports it."""
