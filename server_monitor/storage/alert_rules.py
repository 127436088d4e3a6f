"""Alert rules made by admins on ``/admin/rules`` (issue 26 item 2): the ``alert_rules`` table.

A rule says what to measure (:data:`KINDS`), the threshold in that kind's unit, how long the
condition must hold (``duration_minutes``), how severe it is (``info``, ``warning``,
``critical``), where it applies (``scope``: every server, one host group of ``server_groups``,
or one server), optionally which GPU model (a case-insensitive substring of the GPU's
``name`` as nvidia-smi reports it, GPU kinds only), whether it is enabled, and optionally the
notification targets it goes to (``targets``: names of the Notifier's targets; none: routed by
severity). Who created and last edited it, and when (UTC epoch s), are kept with it.

This module validates and stores rules; ``server_monitor/jobs/alerts.py`` evaluates them. The
config file's ``alerts.*`` thresholds are not stored here: they stay the built-in rules
(``jobs.alerts.builtin_rules``), whose overrides made on /admin/rules live in
``builtin_rule_overrides`` (:mod:`server_monitor.storage.builtin_overrides`).

Every function takes an open ``sqlite3`` connection to monitor.db; the writers run in the
caller's transaction (or autocommit). Bad input raises :class:`RuleError` naming the field.
"""

import json
import math
import re
import time

from ..core.config import ALERT_DEFAULTS
from . import groups as host_groups

SEVERITIES = ("info", "warning", "critical")
SCOPES = ("all", "group", "server")

# kind -> what the admin reads, the threshold's unit and bounds, whether it takes a duration
# and a GPU model filter, the threshold when the form leaves it empty, and the alert ``rule``
# name its firings carry (the names of the built-in rules where they measure the same).
KINDS = {
    "gpu_temperature": {"label": "GPU temperature (temperature.gpu)", "unit": "°C", "min": 0, "max": 150,
                        "duration": True, "gpu": True, "default": ALERT_DEFAULTS["gpu_temperature_c"]},
    "gpu_memory": {"label": "GPU memory used (memory.used / memory.total)", "unit": "%", "min": 0, "max": 100,
                   "duration": True, "gpu": True, "default": 95},
    "gpu_idle_held": {"label": "GPU held idle (memory held, utilization.gpu under the threshold, known only)",
                      "unit": "% utilization", "min": 1, "max": 100, "duration": True, "gpu": True, "default": 5},
    "host_offline": {"label": "Host offline (no report for the threshold, at least 4 of its intervals)",
                     "unit": "min", "min": 1, "max": 10080, "duration": False, "gpu": False,
                     "default": ALERT_DEFAULTS["host_offline_minutes"]},
    "gpu_health": {"label": "GPU health: ECC, critical XID, lost GPU, driver failure, reset needed",
                   "unit": None, "min": None, "max": None, "duration": False, "gpu": False, "default": None},
    "disk_full": {"label": "Disk used (per mount point)", "unit": "%", "min": 0, "max": 100,
                  "duration": True, "gpu": False, "default": ALERT_DEFAULTS["disk_percent"]},
}
# The longest a condition may be asked to hold: the raw samples it is read from are kept 48 h.
MAX_DURATION_MINUTES = 1440
MAX_NAME = 100
MAX_MODEL = 64
MAX_TARGETS = 16
TARGET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A row id as text: ASCII digits, short enough for SQLite's 64-bit integers ("²" or a 30-digit
# number would raise in int() or in SQLite, a 500 instead of a message).
_DIGITS = re.compile(r"[0-9]{1,15}")
# A decimal number in ASCII ("88", "88.5", "-1", "1e2"); float() alone also takes "nan", "inf",
# "٨٨" (Arabic-Indic digits), "1_000" and surrounding white space.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def parse_decimal(key, raw):
    """``raw`` (form text) as a float when it is a finite ASCII decimal number of at most 40
    characters; raises :class:`RuleError` naming ``key`` otherwise. Bounds are the caller's."""
    if len(raw) > 40 or not _DECIMAL.fullmatch(raw):
        raise RuleError(key, f"{raw[:40]!r} is not a number")
    value = float(raw)
    if not math.isfinite(value):  # "1e999"
        raise RuleError(key, f"{raw!r} is not a finite number")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

COLUMNS = ("id", "name", "kind", "threshold", "duration_minutes", "severity", "scope", "scope_group",
           "scope_server_id", "gpu_model", "enabled", "targets", "created_by", "created_at", "updated_by",
           "updated_at")


class RuleError(ValueError):
    """A rule field that breaks the rules above: ``field`` names it, ``str()`` is shown to the admin."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


def row_id(text):
    """``text`` as a row id (int), or None unless it is 1 to 15 ASCII digits."""
    return int(text) if isinstance(text, str) and _DIGITS.fullmatch(text) else None


def _text(form, key):
    value = form.get(key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return "" if value is None else str(value).strip()


def parse(form, server_exists=None):
    """A rule's fields from ``form`` (a mapping of field name to text or to a list of texts, as a
    parsed HTML form gives), checked: ``{"name", "kind", "threshold", "duration_minutes",
    "severity", "scope", "scope_group", "scope_server_id", "gpu_model", "enabled", "targets"}``.

    ``threshold``: a number in the kind's unit (empty: the kind's default); ``scope``: ``all``,
    ``group`` (with ``scope_group``) or ``server`` (with ``scope_server_id``); ``targets``:
    names separated by commas or spaces; ``enabled``: present and not ``0``/``off``.
    ``server_exists``: optional ``f(id) -> bool`` checking a server scope. Raises
    :class:`RuleError` naming the first bad field.
    """
    name = _text(form, "name")
    if not name or len(name) > MAX_NAME or _CONTROL.search(name):
        raise RuleError("name", f"give 1 to {MAX_NAME} printable characters")
    kind = _text(form, "kind")
    if kind not in KINDS:
        raise RuleError("kind", f"must be one of {', '.join(KINDS)}")
    spec = KINDS[kind]
    raw = _text(form, "threshold")
    if spec["unit"] is None:
        if raw:
            raise RuleError("threshold", f"{kind} takes no threshold (leave it empty)")
        threshold = None
    elif not raw:
        threshold = float(spec["default"])
    else:
        threshold = parse_decimal("threshold", raw)
        if not spec["min"] <= threshold <= spec["max"]:
            raise RuleError("threshold", f"must be {spec['min']} to {spec['max']} {spec['unit']}")
    raw = _text(form, "duration_minutes") or "0"
    if not _DIGITS.fullmatch(raw) or int(raw) > MAX_DURATION_MINUTES:
        raise RuleError("duration_minutes", f"must be a whole number of minutes, 0 to {MAX_DURATION_MINUTES}")
    duration = int(raw)
    if duration and not spec["duration"]:
        raise RuleError("duration_minutes", f"{kind} takes no duration (leave 0)"
                        + ("; its threshold is the time without a report" if kind == "host_offline" else ""))
    severity = _text(form, "severity")
    if severity not in SEVERITIES:
        raise RuleError("severity", f"must be one of {', '.join(SEVERITIES)}")
    scope = _text(form, "scope") or "all"
    if scope not in SCOPES:
        raise RuleError("scope", f"must be one of {', '.join(SCOPES)}")
    scope_group = scope_server_id = None
    if scope == "group":
        try:
            scope_group = host_groups.check_name(_text(form, "scope_group"))
        except host_groups.GroupError as exc:
            raise RuleError("scope_group", str(exc)) from None
    elif scope == "server":
        raw = _text(form, "scope_server_id")
        if not _DIGITS.fullmatch(raw) or (server_exists is not None and not server_exists(int(raw))):
            raise RuleError("scope_server_id", "choose an existing server")
        scope_server_id = int(raw)
    gpu_model = _text(form, "gpu_model") or None
    if gpu_model is not None:
        if not spec["gpu"]:
            raise RuleError("gpu_model", f"{kind} is not a per-GPU rule: leave the GPU model empty")
        if len(gpu_model) > MAX_MODEL or _CONTROL.search(gpu_model):
            raise RuleError("gpu_model", f"give at most {MAX_MODEL} printable characters")
    enabled = _text(form, "enabled").lower() not in ("", "0", "off", "false", "no")
    return {"name": name, "kind": kind, "threshold": threshold, "duration_minutes": duration, "severity": severity,
            "scope": scope, "scope_group": scope_group, "scope_server_id": scope_server_id, "gpu_model": gpu_model,
            "enabled": enabled, "targets": parse_targets(_text(form, "targets"))}


def parse_targets(text):
    """Notification target names from ``text`` (separated by commas or spaces), first spelling of
    each kept in order, or None when there are none. Raises :class:`RuleError` (``targets``) for a
    name outside :data:`TARGET_RE` or more than :data:`MAX_TARGETS` names. Whether a target of that
    name exists is the caller's check (the Notifier's targets live outside monitor.db)."""
    names = [t for t in re.split(r"[\s,]+", text or "") if t]
    for target in names:
        if not TARGET_RE.fullmatch(target):
            raise RuleError("targets", f"{target[:40]!r} is not a target name (letters, digits, '.', '_', '-')")
    if len(names) > MAX_TARGETS:
        raise RuleError("targets", f"at most {MAX_TARGETS} targets")
    return sorted(set(names), key=names.index) or None


def stored_targets(text):
    """The target names of a stored ``targets`` column (``alert_rules`` or
    ``builtin_rule_overrides``): the JSON list :func:`parse_targets` gave, or None when empty or
    when a hand edit (SQL, a restored copy) left something else there (not JSON, not a list of
    target names): the rule then routes by severity. Raises nothing, so one bad row never stops
    the alert pass that reads every rule (round 4 attack run B1)."""
    if not text:
        return None
    try:
        names = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(names, list) or not all(isinstance(t, str) and TARGET_RE.fullmatch(t) for t in names):
        return None
    return names[:MAX_TARGETS] or None


def _row(row):
    rule = dict(zip(COLUMNS, row))
    rule["enabled"] = bool(rule["enabled"])
    rule["targets"] = stored_targets(rule["targets"])
    return rule


# The columns :func:`parse` gives values for, in the order :func:`_values` lists them.
FIELDS = ("name", "kind", "threshold", "duration_minutes", "severity", "scope", "scope_group", "scope_server_id",
          "gpu_model", "enabled", "targets")


def _values(fields):
    """:func:`parse`'s ``fields`` as the SQL values of :data:`FIELDS` (targets as JSON)."""
    return tuple(int(fields["enabled"]) if name == "enabled"
                 else (json.dumps(fields["targets"]) if fields["targets"] else None) if name == "targets"
                 else fields[name] for name in FIELDS)


def _name_taken(conn, name, rule_id=None):
    row = conn.execute("SELECT id FROM alert_rules WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] != rule_id


def create(conn, fields, user, now=None):
    """Store a new rule from :func:`parse`'s ``fields``, made by ``user``; returns its id.
    Raises :class:`RuleError` (``name``) when another rule has that name."""
    if _name_taken(conn, fields["name"]):
        raise RuleError("name", f"a rule named {fields['name']!r} exists already")
    now = int(time.time() if now is None else now)
    cur = conn.execute(
        f"INSERT INTO alert_rules ({', '.join(FIELDS)}, created_by, created_at, updated_by, updated_at)"
        f" VALUES ({','.join('?' * (len(FIELDS) + 4))})", (*_values(fields), user, now, user, now))
    return cur.lastrowid


def update(conn, rule_id, fields, user, now=None):
    """Replace rule ``rule_id``'s fields (from :func:`parse`), edited by ``user``. Returns False
    when there is no such rule; raises :class:`RuleError` (``name``) for a name in use."""
    if _name_taken(conn, fields["name"], rule_id):
        raise RuleError("name", f"a rule named {fields['name']!r} exists already")
    now = int(time.time() if now is None else now)
    cur = conn.execute(
        f"UPDATE alert_rules SET {', '.join(f'{name} = ?' for name in FIELDS)}, updated_by = ?, updated_at = ?"
        " WHERE id = ?", (*_values(fields), user, now, rule_id))
    return cur.rowcount == 1


def set_enabled(conn, rule_id, enabled, user, now=None):
    """Enable or disable rule ``rule_id`` (edited by ``user``); False when there is no such rule."""
    now = int(time.time() if now is None else now)
    cur = conn.execute("UPDATE alert_rules SET enabled = ?, updated_by = ?, updated_at = ? WHERE id = ?",
                       (int(bool(enabled)), user, now, rule_id))
    return cur.rowcount == 1


def delete(conn, rule_id):
    """Delete rule ``rule_id``; its past firings stay in ``alerts`` (their ``rule_id`` kept).
    False when there is no such rule."""
    return conn.execute("DELETE FROM alert_rules WHERE id = ?", (rule_id,)).rowcount == 1


def rules_naming_target(conn, target):
    """Names of the rules whose ``targets`` list ``target`` (a notification target name, any case)."""
    wanted = target.lower()
    return [name for name, targets in conn.execute("SELECT name, targets FROM alert_rules WHERE targets IS NOT NULL")
            if any(t.lower() == wanted for t in stored_targets(targets) or ())]


def rename_target(conn, old, new, user, now=None):
    """Point every rule that names the notification target ``old`` (any case) at ``new`` instead,
    as edited by ``user`` (a target renamed on /admin keeps its rules). Returns how many rules changed."""
    return rename_target_in(conn, "alert_rules", "id", old, new, user, now)


def rename_target_in(conn, table, key, old, new, user, now=None):
    """Rename target ``old`` (any case) ``new`` in the JSON ``targets`` of every row of ``table``
    (``alert_rules`` or ``builtin_rule_overrides``, rows keyed by column ``key``: constants, never
    user text), setting ``updated_by``/``updated_at``. Returns how many rows changed."""
    now = int(time.time() if now is None else now)
    changed = 0
    for row_key, targets in conn.execute(f"SELECT {key}, targets FROM {table} WHERE targets IS NOT NULL").fetchall():
        names = stored_targets(targets)
        renamed = None if names is None else retarget(names, old, new)
        if renamed is not None:
            conn.execute(f"UPDATE {table} SET targets = ?, updated_by = ?, updated_at = ? WHERE {key} = ?",
                         (json.dumps(renamed), user, now, row_key))
            changed += 1
    return changed


def retarget(names, old, new):
    """``names`` (target names) with ``old`` (any case) renamed ``new``, duplicates dropped, or
    None when ``old`` is not among them."""
    renamed = [new if t.lower() == old.lower() else t for t in names]
    return sorted(set(renamed), key=renamed.index) if renamed != names else None


def get(conn, rule_id):
    """Rule ``rule_id`` as a dict of :data:`COLUMNS` (``targets`` a list or None), or None."""
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM alert_rules WHERE id = ?", (rule_id,)).fetchone()
    return _row(row) if row else None


def all_rules(conn, enabled_only=False):
    """Every rule (dicts as :func:`get`), by name; ``enabled_only``: only the enabled ones."""
    where = " WHERE enabled" if enabled_only else ""
    return [_row(r) for r in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM alert_rules{where} ORDER BY name, id")]


def recent_firings(conn, rule_id=None, rule=None, limit=5):
    """The newest ``limit`` rows of ``alerts`` raised by rule ``rule_id`` (or, with ``rule_id``
    None, by the built-in rule named ``rule``): ``[{"id", "server_id", "server", "subject",
    "shown", "message", "severity", "started_at", "resolved_at"}]``, newest first
    (``alerts_by_rule``). ``shown``: the subject as the dashboard names it, "GPU <gpu_index>" for
    a per-GPU alert (subject ``gpu<gpus.id>``, an internal id) whose GPU row is still there, else
    the subject (a PCI bus id, a mount point, a GPU state)."""
    if rule_id is not None:
        where, params = "a.rule_id = ?", (rule_id,)
    else:
        where, params = "a.rule_id IS NULL AND a.rule = ?", (rule,)
    rows = conn.execute(
        "SELECT a.id, a.server_id, coalesce(s.display_name, s.hostname), a.subject, g.gpu_index, a.message,"
        " a.severity, a.started_at, a.resolved_at FROM alerts a LEFT JOIN servers s ON s.id = a.server_id"
        " LEFT JOIN gpus g ON g.id = CASE WHEN a.subject GLOB 'gpu[0-9]*' AND substr(a.subject, 4) NOT GLOB '*[^0-9]*'"
        " THEN CAST(substr(a.subject, 4) AS INTEGER) END AND g.server_id = a.server_id"
        f" WHERE {where} ORDER BY a.started_at DESC, a.id DESC LIMIT ?", (*params, limit))
    keys = ("id", "server_id", "server", "subject", "gpu_index", "message", "severity", "started_at", "resolved_at")
    out = []
    for row in rows:
        firing = dict(zip(keys, row))
        index = firing.pop("gpu_index")
        firing["shown"] = f"GPU {index}" if index is not None else firing["subject"]
        out.append(firing)
    return out


def scope_servers(conn, rule):
    """The ids of the servers rule ``rule`` covers now, as a set, or None for every server.

    A group scope is read from ``server_groups`` on every call: a server that joins the group
    (any source) is covered from the next pass, with no edit of the rule."""
    if rule["scope"] == "group":
        return set(host_groups.members(conn, [rule["scope_group"]]))
    if rule["scope"] == "server":
        return {rule["scope_server_id"]}
    return None


__all__ = ["row_id", "KINDS", "SEVERITIES", "SCOPES", "RuleError", "parse", "parse_targets", "stored_targets",
           "retarget", "rename_target_in", "create", "update", "set_enabled", "delete", "get", "all_rules",
           "recent_firings", "scope_servers", "MAX_DURATION_MINUTES"]
