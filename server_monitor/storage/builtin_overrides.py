"""Overrides of the built-in alert rules (issue 26 item 2): table ``builtin_rule_overrides``.

The built-in rules are the ones ``server_monitor/jobs/alerts.py`` :func:`evaluate` always runs,
with the thresholds of ``config.yaml``'s ``alerts:`` section. ``config.yaml`` stays their
default; an admin may override, on ``/admin/rules``, a rule's threshold, its minutes, its
severity and its notification targets (where the rule has them, see :data:`BUILTINS`) and may
disable it. One row per overridden rule; a null column follows config.yaml (or, for severity
and targets, the rule's own severity and routing by severity). "Reset to config" deletes the
row. Who changed it last and when (UTC epoch s) are kept with it.

Why a table of its own and not rows of ``alert_rules`` marked "built-in": a built-in rule has
a fixed name, no scope, no kind and no GPU model, and some (``gpu_xid``'s look-back window) a
parameter no ``alert_rules`` kind has; it is changed, never created or deleted. Rows there
would be rules that the list, the scope checks, the firing keys (``rule<id>:``) and the
"deleted rule" path would all have to skip.

Every function takes an open ``sqlite3`` connection to monitor.db; writers run in the caller's
transaction (or autocommit). Bad input raises :class:`~server_monitor.storage.alert_rules.RuleError`
naming the field.
"""

import json
import logging
import math
import re
import time

from .alert_rules import MAX_DURATION_MINUTES, SEVERITIES, RuleError, parse_decimal, parse_targets, rename_target_in, stored_targets

log = logging.getLogger("server_monitor.alerts")

# How long the look-back of gpu_xid or the offline threshold may be (a week, in minutes).
MAX_WINDOW_MINUTES = 10080

# Built-in rule -> its default severity (the one jobs/alerts.py fires with), and what may be
# overridden besides severity, targets and enabled: ``threshold`` and ``minutes`` as
# ``{"key": config.yaml alerts key, "label", "unit", "min", "max"}``, or None where the rule has
# none. The order is the order of the /admin/rules table.
BUILTINS = {
    "host_offline": {"severity": "critical", "minutes": None,
                     "threshold": {"key": "host_offline_minutes", "label": "No report for", "unit": "min",
                                   "min": 1, "max": MAX_WINDOW_MINUTES}},
    "gpu_failure": {"severity": "critical", "threshold": None, "minutes": None},
    "collection_stale": {"severity": "warning", "threshold": None, "minutes": None},
    "gpu_lost": {"severity": "critical", "threshold": None, "minutes": None},
    "gpu_ecc": {"severity": "critical", "threshold": None, "minutes": None},
    "gpu_xid": {"severity": "critical", "threshold": None,
                "minutes": {"key": "xid_minutes", "label": "Look back", "unit": "min", "min": 1,
                            "max": MAX_WINDOW_MINUTES}},
    "gpu_throttle": {"severity": "warning", "threshold": None, "minutes": None},
    "gpu_pcie_degraded": {"severity": "warning", "threshold": None, "minutes": None},
    # Its minutes: the temperature held on every raw sample (kept 48 h) for that long, as a
    # rule's "For" (jobs/alerts.py held_for); 0 is not a duration: 1 minute at least.
    "gpu_temperature": {"severity": "warning",
                        "threshold": {"key": "gpu_temperature_c", "label": "temperature.gpu at least", "unit": "°C",
                                      "min": 0, "max": 150},
                        "minutes": {"key": "gpu_temperature_minutes", "label": "For", "unit": "min", "min": 1,
                                    "max": MAX_DURATION_MINUTES}},
    "disk_full": {"severity": "warning", "minutes": None,
                  "threshold": {"key": "disk_percent", "label": "Used at least", "unit": "%", "min": 0, "max": 100}},
    "host_identity": {"severity": "warning", "threshold": None, "minutes": None},
}

COLUMNS = ("rule", "enabled", "threshold", "minutes", "severity", "targets", "updated_by", "updated_at")
_DIGITS = re.compile(r"[0-9]{1,15}")


def check_name(name):
    """``name`` when it is a built-in rule of :data:`BUILTINS`; else raises :class:`RuleError` (``rule``)."""
    if not isinstance(name, str) or name not in BUILTINS:
        shown = name[:40] if isinstance(name, str) else name
        raise RuleError("rule", f"no built-in rule is named {shown!r} (one of {', '.join(BUILTINS)})")
    return name


def _text(form, key):
    value = form.get(key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return "" if value is None else str(value).strip()


def parse(name, form):
    """The override fields of built-in rule ``name`` from ``form`` (a mapping of field name to text
    or list of texts, as a parsed HTML form gives): ``{"threshold", "minutes", "severity",
    "targets"}``. An empty field is None: config.yaml's value (threshold, minutes), the rule's
    own severity, routing by severity (targets). ``threshold``: a finite ASCII decimal number in
    the rule's unit, within its bounds; ``minutes``: a whole number within its bounds; a field
    the rule does not have must be empty. Raises :class:`RuleError` naming the first bad field
    (``rule`` for an unknown name)."""
    spec = BUILTINS[check_name(name)]
    fields = {}
    for key in ("threshold", "minutes"):
        raw, bounds = _text(form, key), spec[key]
        if not raw:
            fields[key] = None
            continue
        if bounds is None:
            raise RuleError(key, f"{name} has no {key} (leave it empty)")
        where = f"must be {bounds['min']} to {bounds['max']} {bounds['unit']}"
        if key == "minutes":
            if not _DIGITS.fullmatch(raw) or not bounds["min"] <= int(raw) <= bounds["max"]:
                raise RuleError(key, f"{where}, a whole number")
            fields[key] = int(raw)
            continue
        value = parse_decimal(key, raw)
        if not bounds["min"] <= value <= bounds["max"]:
            raise RuleError(key, where)
        fields[key] = value
    severity = _text(form, "severity")
    if severity and severity not in SEVERITIES:
        raise RuleError("severity", f"must be one of {', '.join(SEVERITIES)} (or empty: {spec['severity']})")
    fields["severity"] = severity or None
    fields["targets"] = parse_targets(_text(form, "targets"))
    return fields


# The unusable stored values already logged (rule, field, value): each is logged once per process,
# not on every alert pass.
_LOGGED = set()


def _stored_number(name, key, value):
    """A stored threshold or minutes of built-in rule ``name`` as :func:`parse` would have given
    it, or None (config.yaml's) when a hand edit left a value outside the rule's bounds, text,
    or a field the rule does not have."""
    bounds = BUILTINS[name][key]
    if value is None or bounds is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or not bounds["min"] <= value <= bounds["max"]:
        return None
    if key == "minutes":
        return int(value) if float(value).is_integer() else None
    return float(value)


def _row(row):
    """A stored row as an override. What :func:`parse` would refuse (written by hand with SQL, or
    by a restored copy) is ignored field by field and logged once: the field follows config.yaml
    (threshold, minutes), the rule's own severity or routing by severity (targets); the row's
    good fields still apply (round 4 attack run B1: one bad row stopped every alert)."""
    override = dict(zip(COLUMNS, row))
    name = override["rule"]
    override["enabled"] = override["enabled"] not in (0, "0")
    cleaned = {key: _stored_number(name, key, override[key]) for key in ("threshold", "minutes")}
    cleaned["severity"] = override["severity"] if override["severity"] in SEVERITIES else None
    cleaned["targets"] = stored_targets(override["targets"])
    for key, value in cleaned.items():
        if value is None and override[key] is not None and (name, key, repr(override[key])) not in _LOGGED:
            _LOGGED.add((name, key, repr(override[key])))
            log.warning("built-in rule %s: ignoring the stored %s %.60r (not what /admin/rules would save);"
                        " config.yaml's applies", name, key, override[key])
    override.update(cleaned)
    return override


def all_overrides(conn):
    """Every override of a built-in rule of :data:`BUILTINS`, ``{rule: {"rule", "enabled",
    "threshold", "minutes", "severity", "targets", "updated_by", "updated_at"}}`` (``targets`` a
    list or None); rows naming no built-in rule are left out, unusable fields are None (see
    :func:`_row`). One read of a table of at most :data:`BUILTINS` rows: the alert thread calls
    it once per pass. Raises nothing for what a hand edit may store."""
    return {row[0]: _row(row) for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM builtin_rule_overrides")
            if row[0] in BUILTINS}


def _upsert(conn, name, values, user, now):
    now = int(time.time() if now is None else now)
    conn.execute(
        "INSERT INTO builtin_rule_overrides (rule, enabled, threshold, minutes, severity, targets, updated_by,"
        " updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (rule) DO UPDATE SET enabled = excluded.enabled,"
        " threshold = excluded.threshold, minutes = excluded.minutes, severity = excluded.severity,"
        " targets = excluded.targets, updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        (name, int(values["enabled"]), values["threshold"], values["minutes"], values["severity"],
         json.dumps(values["targets"]) if values["targets"] else None, user, now))


def _current(conn, name):
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM builtin_rule_overrides WHERE rule = ?", (name,)).fetchone()
    return _row(row) if row else {"enabled": True, "threshold": None, "minutes": None, "severity": None,
                                  "targets": None}


def save(conn, name, fields, user, now=None):
    """Store :func:`parse`'s ``fields`` as the override of built-in rule ``name`` (its enabled
    state kept), changed by ``user``. An override that changes nothing (every field empty, the
    rule enabled) is deleted instead: the rule follows config.yaml again. Returns True when a row
    is left."""
    values = dict(_current(conn, check_name(name)), **fields)
    if values["enabled"] and all(values[k] is None for k in ("threshold", "minutes", "severity", "targets")):
        reset(conn, name)
        return False
    _upsert(conn, name, values, user, now)
    return True


def set_enabled(conn, name, enabled, user, now=None):
    """Enable or disable built-in rule ``name`` (its other overrides kept), changed by ``user``.
    Enabling a rule that overrides nothing else deletes its row."""
    return save(conn, name, {"enabled": bool(enabled)}, user, now)


def reset(conn, name):
    """Reset to config: delete the override of built-in rule ``name``. True when there was one."""
    return conn.execute("DELETE FROM builtin_rule_overrides WHERE rule = ?", (check_name(name),)).rowcount == 1


def naming_target(conn, target):
    """The built-in rules whose override names notification target ``target`` (any case), as
    ``["built-in <rule>", ...]`` (to refuse deleting a target in use, as for ``alert_rules``)."""
    wanted = target.lower()
    return [f"built-in {name}" for name, targets in
            conn.execute("SELECT rule, targets FROM builtin_rule_overrides WHERE targets IS NOT NULL ORDER BY rule")
            if any(t.lower() == wanted for t in stored_targets(targets) or ())]


def rename_target(conn, old, new, user, now=None):
    """Point the overrides that name target ``old`` (any case) at ``new`` (a target renamed on
    /admin), changed by ``user``. Returns how many overrides changed."""
    return rename_target_in(conn, "builtin_rule_overrides", "rule", old, new, user, now)


def apply(cfg, overrides):
    """``cfg`` (the ``alerts`` settings, ``jobs.alerts.settings``) with the overridden thresholds
    and minutes of ``overrides`` (:func:`all_overrides`) in place of config.yaml's: a new dict,
    ``cfg`` is not changed. Applying it twice gives the same."""
    merged = dict(cfg)
    for name, override in overrides.items():
        spec = BUILTINS.get(name)
        for key in ("threshold", "minutes"):
            if spec and spec[key] and override[key] is not None:
                merged[spec[key]["key"]] = override[key]
    return merged


__all__ = ["BUILTINS", "check_name", "parse", "all_overrides", "save", "set_enabled", "reset", "naming_target",
           "rename_target", "apply"]
