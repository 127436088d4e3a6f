"""Benchmarks and the proof suite of the hub and the agent: one command, ``python -m bench``.

    .venv/bin/python -m bench --help
    .venv/bin/python -m bench ingest [--seconds 30] [--servers 200] [--days 30]
    .venv/bin/python -m bench prove --profile quick

Each command is a module of this package (``bench/<command>.py``, ``gpu-history`` is
``gpu_history.py``); what they share — a hub started on its own config and database, the
admin login, timing and percentiles — is in :mod:`bench.common`. The figures they print are
the ones in docs/performance.md, each row naming its command.
"""
