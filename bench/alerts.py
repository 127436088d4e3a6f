"""One alert evaluation pass at fleet size, built-in rules alone and with rules made in /admin.

    .venv/bin/python -m bench alerts [--servers 1000] [--reports 11] [--passes 5] [--db PATH] [--long]

Grows a lab-like fleet (``bench/fleet_fixture.py``: 8 H100-class GPUs a host, a quarter free,
some held idle, one host offline, one hot GPU, four clusters as host groups) through the hub's
own write path, ``--reports`` reports a host one minute apart (the history the rules' durations
read), then times what the alert thread runs every ``alerts.interval_s``: ``evaluate()`` (the
built-in rules of config.yaml; the planner's statistics first, as the hub's maintenance gathers
them: ``rollup.refresh_statistics``), the same with :data:`OVERRIDES` stored (where the revision has
editable built-in rules), then ``evaluate()`` with :data:`RULES` (every kind, group,
server and model scopes, durations of 5 and 10 minutes), each the median of ``--passes`` passes,
and one whole ``AlertEngine.run_once`` pass in steady state (alerts already stored). ``--long`` adds
:data:`LONG_RULES` with a duration of the whole history (at most 1,440 minutes), the worst case
of ``held_for``: every GPU whose condition holds has every sample of its window read. With an
older revision (no ``alert_rules``) only the built-in pass is timed. Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from bench import fleet_fixture
from server_monitor.jobs import alerts
from server_monitor.storage import rollup, schema

try:
    from server_monitor.storage import alert_rules
except ImportError:  # a revision before alert rules (issue 26 item 2): built-in rules only
    alert_rules = None
try:
    from server_monitor.storage import builtin_overrides
except ImportError:  # a revision before editable built-in rules: no overrides pass
    builtin_overrides = None

# The overrides of the "built-in rules overridden" pass: thresholds that fire more, one rule off.
OVERRIDES = {"gpu_temperature": {"threshold": "80", "minutes": "3", "severity": "critical"},
             "disk_full": {"threshold": "50"}}
DISABLED = ("gpu_throttle",)

# The rules of the "with rules" pass: one or more of every kind, scoped every way.
RULES = [
    {"name": "hot A", "kind": "gpu_temperature", "threshold": "80", "duration_minutes": "5", "scope": "group",
     "scope_group": "cluster-a"},
    {"name": "hot H100", "kind": "gpu_temperature", "threshold": "75", "gpu_model": "H100"},
    {"name": "memory full", "kind": "gpu_memory", "threshold": "95", "duration_minutes": "5"},
    {"name": "idle 10 min", "kind": "gpu_idle_held", "threshold": "5", "duration_minutes": "10"},
    {"name": "idle B", "kind": "gpu_idle_held", "threshold": "5", "duration_minutes": "5", "scope": "group",
     "scope_group": "cluster-b"},
    {"name": "down", "kind": "host_offline", "threshold": "10"},
    {"name": "health C", "kind": "gpu_health", "scope": "group", "scope_group": "cluster-c"},
    {"name": "disk", "kind": "disk_full", "threshold": "50", "duration_minutes": "5"},
    {"name": "one host", "kind": "gpu_memory", "threshold": "10", "scope": "server", "scope_server_id": "1"},
]

# The rules of the --long pass: conditions that hold on many GPUs for the whole history.
LONG_RULES = [
    {"name": "warm (every GPU)", "kind": "gpu_temperature", "threshold": "20"},
    {"name": "memory in use", "kind": "gpu_memory", "threshold": "10"},
    {"name": "held idle", "kind": "gpu_idle_held", "threshold": "5"},
]


class Config:
    def get(self, key, default=None):
        return default


def median_ms(fn, passes):
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=11, help="reports a host, one minute apart")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--db", help="reuse (or create) this database instead of a temporary one")
    parser.add_argument("--long", action="store_true",
                        help="also time rules whose duration is the whole history (--reports - 1 minutes, at most"
                             " 1,440): every GPU whose condition holds has its whole window read")
    args = parser.parse_args()
    path = args.db or os.path.join(tempfile.mkdtemp(prefix="sm-alerts-"), "monitor.db")
    now = int(time.time())
    t0 = time.perf_counter()
    if not os.path.exists(path):
        for k in range(args.reports - 1, -1, -1):
            fleet_fixture.grow(path, servers=args.servers, processes=args.servers * 8, now=now - 60 * k, groups=4,
                               racks=False)
    grow_s = time.perf_counter() - t0
    cfg = alerts.settings(Config())
    schema.migrate(path)  # a database kept from an older revision is brought up to this one's schema
    conn = schema.connect(path)
    # The planner's statistics as the hub's maintenance leaves them (its next pass would gather
    # them on a database grown this much); a revision without the step plans without them.
    refresh = getattr(rollup, "refresh_statistics", None)
    statistics_step = refresh(conn) if refresh else "none"
    conn.close()
    conn = schema.connect(path)  # a connection reads the statistics when it loads the schema
    # The clock of the fleet's newest report (plus 5 s), so a reused database is timed in the
    # same state (the same hosts offline, the same windows) whenever and by whichever code.
    now = conn.execute("SELECT max(last_seen) FROM servers").fetchone()[0] + 5
    out = {"servers": args.servers, "gpus": conn.execute("SELECT count(*) FROM gpus").fetchone()[0],
           "gpu_samples": conn.execute("SELECT count(*) FROM gpu_samples").fetchone()[0], "grow_s": round(grow_s, 1),
           "statistics": statistics_step}
    out["builtin_ms"], firing = median_ms(lambda: alerts.evaluate(conn, now, cfg), args.passes)
    out["builtin_alerts"] = len(firing)
    if builtin_overrides is not None:
        # The same pass with overrides stored: evaluate() reads them (one read of a table of at
        # most 11 rows) and applies them; then they are reset so the next passes match.
        with conn:
            for name, form in OVERRIDES.items():
                builtin_overrides.save(conn, name, builtin_overrides.parse(name, form), "bench", now)
            for name in DISABLED:
                builtin_overrides.set_enabled(conn, name, False, "bench", now)
        out["builtin_overridden_ms"], firing = median_ms(lambda: alerts.evaluate(conn, now, cfg), args.passes)
        out["builtin_overridden_alerts"] = len(firing)
        with conn:
            for name in list(OVERRIDES) + list(DISABLED):
                builtin_overrides.reset(conn, name)
    if alert_rules is not None:
        with conn:
            conn.execute("DELETE FROM alert_rules")
            for form in RULES:
                alert_rules.create(conn, alert_rules.parse(dict({"severity": "warning", "enabled": "on"}, **form)),
                                   "bench", now)
        rules = alert_rules.all_rules(conn, enabled_only=True)
        out["rules"] = len(rules)
        out["with_rules_ms"], firing = median_ms(lambda: alerts.evaluate(conn, now, cfg, rules), args.passes)
        out["with_rules_alerts"] = len(firing)
        out["per_rule_ms"] = {}
        for rule in rules:
            out["per_rule_ms"][rule["name"]], found = median_ms(
                lambda rule=rule: alerts.evaluate_rule(conn, now, cfg, rule), args.passes)
        if args.long:
            minutes = str(min(args.reports - 1, alert_rules.MAX_DURATION_MINUTES))
            out["long_minutes"], out["long_ms"], out["long_alerts"] = int(minutes), {}, {}
            with conn:
                for form in LONG_RULES:
                    alert_rules.create(conn, alert_rules.parse(dict({"severity": "warning", "enabled": "on",
                                                                     "duration_minutes": minutes}, **form)), "bench", now)
            for rule in alert_rules.all_rules(conn, enabled_only=True):
                if rule["name"] not in {form["name"] for form in LONG_RULES}:
                    continue
                out["long_ms"][rule["name"]], found = median_ms(
                    lambda rule=rule: alerts.evaluate_rule(conn, now, cfg, rule), args.passes)
                out["long_alerts"][rule["name"]] = len(found)
    conn.close()

    class Quiet:
        def send(self, event, alert):
            return True
    engine = alerts.AlertEngine(path, cfg, notifier=Quiet())
    engine.run_once(now)  # stores the alerts
    out["run_once_steady_ms"], _ = median_ms(lambda: engine.run_once(now), args.passes)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
