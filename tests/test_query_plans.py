"""Every canned query's plan stays indexed on a database grown the way the hub grows it.

The database is filled through the product's own ingest path (``validate_report`` +
``store_report``) and the hub's own maintenance pass (roll-ups, retention, statistics), then
``EXPLAIN QUERY PLAN`` of each ``canned_queries/*.sql`` must not contain a full ``SCAN`` of
a history table: such a plan grows with retention (a dashboard refresh of 20 s at 7 days).
Checked on a connection opened after maintenance (statistics as the hub leaves them), on one
opened before any statistics existed, and on one that read statistics gathered while the
database was nearly empty (Datasette keeps its connections open, and SQLite reads statistics
only when a connection loads the schema).
"""

import json
import re
import sqlite3
import time
import uuid

import pytest
from reports import sample_report

from server_monitor.storage import schema
from server_monitor.core import natural, topology
from server_monitor.storage.contract import validate_report
from server_monitor.serving.queries import QUERIES
from server_monitor.storage.rollup import Maintenance, refresh_statistics
from server_monitor.storage.store import store_report

HISTORY = ("host_samples", "gpu_samples", "disk_samples", "gpu_processes", "host_samples_5m", "host_samples_1h",
           "gpu_samples_5m", "gpu_samples_1h", "gpu_usage_1h", "alerts", "xid_events", "disk_samples_5m",
           "disk_samples_1h", "temperature_samples", "temperature_samples_5m", "temperature_samples_1h",
           "gpu_usage_user_1d")
SERVERS, HOURS, INTERVAL = 12, 3, 120
PARAMS = {"server_id": "1", "hours": "24", "since": "", "until": "", "by": "user", "count": "1", "user": "user0",
          "days": "30", "_scope_all": 1, "_scope_servers": "[]", "_scope_processes": 1, "_actor_id": "admin"}


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("plans") / "monitor.db")
    schema.migrate(path)
    before = sqlite3.connect(path)  # as a Datasette connection opened at startup, before any statistics
    before.execute("SELECT count(*) FROM servers").fetchone()
    conn = schema.connect(path)
    now = int(time.time())
    start = now - HOURS * 3600
    templates = [json.dumps(sample_report(f"plan-{s:02d}", gpus=8, processes=2, disks=4)) for s in range(SERVERS)]
    # Statistics gathered while the database was nearly empty (a fresh install's first pass),
    # read by a connection that stays open while history grows: the worst case for plans.
    first = json.loads(templates[0])
    first["sample_time"] = first["sent_at"] = start - 60
    store_report(conn, validate_report(first), start - 60)
    assert refresh_statistics(conn, force=True) == "analyze"
    stale = sqlite3.connect(path)
    stale.execute("SELECT count(*) FROM servers").fetchone()
    for ts in range(start, now, INTERVAL):
        for template in templates:
            report = json.loads(template)
            report["report_id"] = str(uuid.uuid4())
            report["sample_time"] = report["sent_at"] = ts
            report["interval"] = INTERVAL
            assert store_report(conn, validate_report(report), ts)["stored"]
    conn.close()
    # The hub's pass (its 8 MiB floor for statistics lowered to this small database's size).
    stats = Maintenance(path, pause=0, stats_min_pages=100).run_once()
    assert stats["hours_rolled"] >= 2  # roll-up tiers and GPU-hours hold rows
    assert stats["statistics"] == "analyze"  # the database grew: statistics gathered again
    after = sqlite3.connect(path)
    assert after.execute("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'gpu_processes'").fetchone()[0]
    yield {"after": after, "before": before, "stale": stale}
    for c in (after, before, stale):
        c.close()


def plan(conn, sql):
    topology.register(conn)  # the SQL functions every Datasette connection has (plugins/sm_topology.py,
    natural.register(conn)   # plugins/sm_natural.py)
    names = set(re.findall(r"(?<!:):(\w+)", sql))
    params = {name: PARAMS.get(name, "") for name in names}
    params.update({n: 10 for n in names if n.startswith("_config_")})
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


READ_QUERIES = sorted(name for name, q in QUERIES.items() if not q.get("write"))


@pytest.mark.parametrize("connection", ["after", "before", "stale"])
@pytest.mark.parametrize("name", READ_QUERIES)
def test_canned_query_plan_has_no_full_scan_of_history(grown, connection, name):
    conn = grown[connection]
    lines = plan(conn, QUERIES[name]["sql"])
    # Alias-aware: map "SCAN p" back to its table through the query's FROM/JOIN clauses.
    sql = QUERIES[name]["sql"]
    aliases = dict((alias, table) for table, alias in re.findall(r"\b(?:from|join)\s+(\w+)\s+(\w+)", sql, re.I))
    scanned = []
    for line in lines:
        m = re.match(r"SCAN (\w+)", line)
        if m:
            table = aliases.get(m.group(1), m.group(1))
            if table in HISTORY:
                scanned.append(f"{line} ({table})")
    assert not scanned, (name, lines)
