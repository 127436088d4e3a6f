"""Alert rules, evaluated in the background, delivered by :mod:`server_monitor.jobs.notify`
(Apprise targets, the webhooks and e-mail below). Every firing is a row in ``alerts``; it fires once, is repeated at
most every ``alerts.repeat_minutes``, and sends a resolved notice when it clears. Servers
and GPUs an admin marked ``maintenance`` raise nothing. An acknowledged alert (``alert_acks``)
sends no reminders; an alert covered by a silence (``silences``: a server and/or a rule until
a time) sends nothing while the silence lasts (and no resolved notice if it was never sent).

Two sets of rules: the built-in ones below (thresholds from ``config.yaml``, every server; an
admin may override a built-in rule's threshold, minutes, severity and targets, or disable it, on
``/admin/rules``: table ``builtin_rule_overrides``, ``server_monitor/storage/builtin_overrides.py``,
read once per pass; config.yaml stays the default) and the rules admins make on
``/admin/rules`` (table ``alert_rules``, validated and stored by
``server_monitor/storage/alert_rules.py``, evaluated by :func:`evaluate_rule` with their scope,
duration, severity and GPU model). An alert of such a rule carries ``rule_id`` and, when the rule
names any, ``targets`` (notification target names the Notifier delivers to; else by severity).
A host is offline after :func:`offline_after_s`: never before 4 of its own reporting intervals.

Configuration (``config.yaml``, all optional)::

    alerts:
      enabled: true
      interval_s: 60
      repeat_minutes: 60
      host_offline_minutes: 5
      gpu_temperature_c: 85
      gpu_temperature_minutes: 5
      xid_minutes: 60
      disk_percent: 90
      dashboard_url: https://monitor.example.org/
      webhooks:
        - {url: "https://hooks.slack.com/services/...", format: slack}
        - {url: "https://open.feishu.cn/open-apis/bot/v2/hook/...", format: feishu}
        - {url: "https://example.org/hook", format: generic}
      smtp: {host: smtp.example.org, port: 587, starttls: true, username: ..., password: ...,
             from: monitor@example.org, to: [gpu-admins@example.org]}
"""

import json
import logging
import threading
import time

from ..core import gpu_health
from ..core.gpu_health import canonical_bus_id
from ..core.config import ALERT_DEFAULTS as DEFAULTS  # the alerts section's keys, kept with every other key
from ..storage import alert_rules, builtin_overrides, schema
from . import notify

# NVIDIA XID codes alerted as critical (monitor_agent/kmsg.py keeps the table of names; the hub
# must not import the agent package, so the codes are repeated here and a test keeps them equal).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 94, 95, 119, 120, 140, 143, 158})

log = logging.getLogger("server_monitor.alerts")

FAILURE_STATES = ("driver_mismatch", "no_devices", "driver_not_loaded", "insufficient_permissions", "error")
STATE_TEXT = {
    "driver_mismatch": "NVIDIA driver/library version mismatch (a reboot is usually pending)",
    "no_devices": "the NVIDIA driver finds no GPUs",
    "driver_not_loaded": "the NVIDIA driver is not loaded",
    "insufficient_permissions": "insufficient permissions for NVML",
    "error": "nvidia-smi fails",
    "timeout": "nvidia-smi does not answer (killed after the timeout)",
    "busy": "nvidia-smi hangs (an earlier call is still alive)",
}


# The text rules of notices live with the delivery (jobs/notify.py); kept importable here.
clean_text, slack_escape, feishu_escape = notify.clean_text, notify.slack_escape, notify.feishu_escape


def settings(config):
    """``alerts`` section of the hub config merged over :data:`DEFAULTS`, plus ``idle_min_mib``
    (``features.idle_min_mib``, MiB: the memory a GPU must hold to count as held idle for a
    ``gpu_idle_held`` rule, as the dashboard and ``idle_holders`` count it)."""
    merged = dict(DEFAULTS)
    merged.update(config.get("alerts") or {})
    idle_min_mib = config.get("features.idle_min_mib", 1024)
    merged["idle_min_mib"] = idle_min_mib if isinstance(idle_min_mib, int) and idle_min_mib > 0 else 1024
    return merged




def streak_start(conn, table, key_sql, key_params, bad_sql, bad_params=(), now=None):
    """First ``ts`` of the newest unbroken run of ``table`` rows matching ``bad_sql``, or None.

    The onset of a condition from stored history: the row after the newest one (up to ``now``)
    where ``bad_sql`` is false or null (unknown ends a run), else the oldest row kept. ``table``
    is ``host_samples``, ``gpu_samples`` or ``disk_samples`` (raw samples, so a run older than
    the raw retention starts at the oldest raw sample); ``key_sql`` selects one server/GPU/mount
    (``server_id = ?``); both SQL fragments are this module's constants, never user text.
    Walks the primary key backwards from the newest row: its cost is the run's length.
    """
    limit = (" AND ts <= ?", (now,)) if now is not None else ("", ())
    last_good = conn.execute(
        f"SELECT ts FROM {table} WHERE {key_sql}{limit[0]} AND NOT coalesce({bad_sql}, 0)"
        " ORDER BY ts DESC LIMIT 1", (*key_params, *limit[1], *bad_params)).fetchone()
    first = conn.execute(
        f"SELECT ts FROM {table} WHERE {key_sql} AND ts > ?{limit[0]} ORDER BY ts LIMIT 1",
        (*key_params, last_good[0] if last_good else -1, *limit[1])).fetchone()
    return first[0] if first else None


def _first_report_after(conn, server_id, ts):
    """Time of the server's first report after ``ts`` (a GPU's ``last_ts``): when it went missing."""
    row = conn.execute("SELECT ts FROM host_samples WHERE server_id = ? AND ts > ? ORDER BY ts LIMIT 1",
                       (server_id, ts)).fetchone()
    return row[0] if row else ts


# A host is offline after ``alerts.host_offline_minutes`` (or a rule's threshold) without a
# report, and never before it missed this many of its own reporting intervals (``interval_s``,
# the interval the agent states in every report): an agent reporting every 300 s is not
# "offline" after 5 minutes. The servers view calls a host offline after 4 missed reports too.
OFFLINE_INTERVALS = 4


def offline_after_s(minutes, interval_s):
    """Seconds without a report after which a host is offline: ``max(minutes × 60,``
    :data:`OFFLINE_INTERVALS` ``× interval_s)`` (``interval_s`` the agent's reporting interval, s)."""
    return max(minutes * 60, OFFLINE_INTERVALS * (interval_s or 0))


def is_offline(now, last_seen, interval_s, minutes):
    """True when the host last seen at ``last_seen`` (epoch s, hub clock) is offline at ``now``."""
    return now - last_seen > offline_after_s(minutes, interval_s)


def offline_text(name, now, last_seen, interval_s):
    """The host-offline alert's text (``name`` is agent text: the Notifier cleans it)."""
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(last_seen))
    every = f"; it reports every {interval_s} s" if interval_s and interval_s >= 120 else ""
    return f"{name}: no report since {since} ({int((now - last_seen) // 60)} min{every})"


def _servers(conn):
    """``{id: (id, name, last_seen, interval_s, gpu_state, gpu_message, gpu_lost, status)}`` of the
    servers not in maintenance."""
    return {row[0]: row for row in conn.execute(
        "SELECT id, coalesce(display_name, hostname), last_seen, interval_s, gpu_state, gpu_message, gpu_lost, status"
        " FROM servers WHERE status != 'maintenance'")}


def evaluate(conn, now, cfg, rules=(), overrides=None):
    """Alerts firing now: ``{key: {"rule", "severity", "server_id", "subject", "message", "since"}}``.

    The built-in rules first: ``cfg``'s thresholds, or those of ``overrides`` (the admin's
    overrides of the built-in rules, :func:`server_monitor.storage.builtin_overrides.all_overrides`;
    read here once when None), whose severity and ``targets`` the alerts carry; a built-in rule
    an override disabled raises nothing (a ``gpu_health`` rule of ``rules`` still sees its
    conditions). Then every rule of ``rules`` (enabled rows
    of ``alert_rules``, :func:`server_monitor.storage.alert_rules.all_rules`), whose alerts also
    carry ``rule_id`` and, where the rule names them, ``targets`` (notification target names);
    see :func:`evaluate_rule`.

    ``since`` is the condition's onset read from stored history (epoch s), or a function of no
    argument that reads it (called only for an alert not yet stored, so the history is read once
    per new alert, not on every pass), or None where history cannot tell (the engine then uses
    the time it first saw the alert). ``conn``: a connection to monitor.db. ``cfg``:
    :func:`settings`. Pure reads.
    """
    firing = {}
    if overrides is None:
        overrides = builtin_overrides.all_overrides(conn)
    cfg = builtin_overrides.apply(cfg, overrides)

    def fire(rule, server_id, subject, message, since=None):
        # Severity: the override's, else the rule's own (builtin_overrides.BUILTINS, one table of them).
        key = f"{rule}:{server_id}:{subject}"
        override = overrides.get(rule)
        severity = (override and override["severity"]) or builtin_overrides.BUILTINS[rule]["severity"]
        firing[key] = {"rule": rule, "severity": severity,
                       "server_id": server_id, "subject": subject, "message": message, "since": since}
        if override and override["targets"]:
            firing[key]["targets"] = list(override["targets"])

    servers = _servers(conn)
    offline = set()
    for server_id, name, last_seen, interval, state, message, lost, _ in servers.values():
        if is_offline(now, last_seen, interval, cfg["host_offline_minutes"]):
            offline.add(server_id)
            fire("host_offline", server_id, "", offline_text(name, now, last_seen, interval), since=last_seen)
            continue

        def state_onset(server_id=server_id, state=state):
            return streak_start(conn, "host_samples", "server_id = ?", (server_id,), "gpu_state = ?", (state,), now)
        if state in FAILURE_STATES:
            # The driver-mismatch message is NVML's wording of the same thing: not repeated.
            fire("gpu_failure", server_id, state, f"{name}: {STATE_TEXT[state]}"
                 + (f" ({message})" if message and state != "driver_mismatch" else ""), since=state_onset)
        elif state in ("timeout", "busy"):
            fire("collection_stale", server_id, state, f"{name}: GPU data is stale: {STATE_TEXT[state]}",
                 since=state_onset)
        if state == "gpu_lost" and lost:
            for item in json.loads(lost):
                bus = item.get("pci.bus_id") or "?"
                fire("gpu_lost", server_id, canonical_bus_id(bus),
                     f"{name}: GPU {bus} is lost ({item.get('message') or ''})", since=state_onset)
    for gpu_id, server_id, index, bus, gpu_name, last_ts in conn.execute(
            "SELECT id, server_id, gpu_index, pci_bus_id, name, last_ts FROM gpus WHERE present = 0 AND removed_at IS NULL"
            " AND status != 'maintenance'"):
        subject = canonical_bus_id(bus) if bus else f"gpu{gpu_id}"
        key = f"gpu_lost:{server_id}:{subject}"

        def gone_since(server_id=server_id, last_ts=last_ts):
            # The first report without the GPU: it went missing right after its last sample.
            return None if last_ts is None else _first_report_after(conn, server_id, last_ts)
        if key in firing:
            # The driver named it lost already (its own message says why): one problem, not two,
            # and it has been gone since its last report, whenever the driver started saying so.
            firing[key]["since"] = gone_since
            continue
        if server_id in servers and server_id not in offline:
            fire("gpu_lost", server_id, subject,
                 f"{servers[server_id][1]}: GPU {index} ({bus}, {gpu_name}) is missing from the latest report",
                 since=gone_since)
    for gpu_id, server_id, index, ecc, remap, retire, failure, state in conn.execute(
            "SELECT id, server_id, gpu_index, ecc_errors_uncorrected_volatile_total, remapped_rows_pending,"
            " retired_pages_pending, remapped_rows_failure, gpu_state FROM gpus WHERE present AND status != 'maintenance'"
            " AND (ecc_errors_uncorrected_volatile_total > 0 OR remapped_rows_pending = 1 OR retired_pages_pending = 1"
            "      OR remapped_rows_failure = 1 OR gpu_state = 'requires_reset')"):
        if server_id in servers and server_id not in offline:
            what = []
            if state == "requires_reset":
                what.append("GPU requires reset")
            if ecc:
                what.append(f"{ecc} uncorrectable ECC errors")
            if failure:
                what.append("row remapping failed (RMA)")
            if remap:
                what.append("row remapping pending (reset needed)")
            if retire:
                what.append("page retirement pending (reset needed)")
            fire("gpu_ecc", server_id, f"gpu{gpu_id}", f"{servers[server_id][1]}: GPU {index}: {', '.join(what)}",
                 since=(lambda gpu_id=gpu_id: streak_start(conn, "gpu_samples", "gpu_id = ?", (gpu_id,),
                                                           "ecc_errors_uncorrected_volatile_total > 0", (), now))
                 if ecc else None)
    for gpu_id, server_id, index, active, busy, gen, gen_max, width, width_max in conn.execute(
            "SELECT id, server_id, gpu_index, clocks_event_reasons_active, busy, pcie_link_gen_current,"
            " pcie_link_gen_max, pcie_link_width_current, pcie_link_width_max FROM gpus"
            " WHERE present AND status != 'maintenance'"
            " AND ((clocks_event_reasons_active & ?) != 0"
            "      OR (busy AND (pcie_link_gen_current < pcie_link_gen_max OR pcie_link_width_current < pcie_link_width_max)))",
            (gpu_health.HW_SLOWDOWN_MASK,)):
        if server_id not in servers or server_id in offline:
            continue
        slow = gpu_health.reason_names((active or 0) & gpu_health.HW_SLOWDOWN_MASK)
        if slow:
            fire("gpu_throttle", server_id, f"gpu{gpu_id}",
                 f"{servers[server_id][1]}: GPU {index} is throttled by {', '.join(slow)}",
                 since=lambda gpu_id=gpu_id: streak_start(conn, "gpu_samples", "gpu_id = ?", (gpu_id,),
                                                          "(clocks_event_reasons_active & ?) != 0",
                                                          (gpu_health.HW_SLOWDOWN_MASK,), now))
        degraded = gpu_health.pcie_degraded({"pcie_link_gen_current": gen, "pcie_link_gen_max": gen_max,
                                             "pcie_link_width_current": width, "pcie_link_width_max": width_max})
        if busy and degraded:
            fire("gpu_pcie_degraded", server_id, f"gpu{gpu_id}",
                 f"{servers[server_id][1]}: GPU {index} is busy on a degraded link ({degraded})")
    critical_xids = sorted(CRITICAL_XIDS)
    # The alert text never names the process (pid, name): every viewer in scope reads it in
    # alerts_active and /api/fleet, also those with processes hidden (security review N6). Who
    # ran on the GPU is in the XID list (server_xids / xid_events) for those who may see it.
    for server_id, gpu_id, index, bus, xid, name, ts in conn.execute(
            "SELECT e.server_id, e.gpu_id, g.gpu_index, e.pci_bus_id, e.xid, e.name, max(e.ts)"
            " FROM xid_events e LEFT JOIN gpus g ON g.id = e.gpu_id"
            f" WHERE e.ts >= ? AND e.xid IN ({','.join('?' * len(critical_xids))})"
            " AND coalesce(g.status, 'active') != 'maintenance'"
            " GROUP BY e.server_id, e.gpu_id, e.pci_bus_id, e.xid",
            [now - cfg["xid_minutes"] * 60] + critical_xids):
        if server_id in servers and server_id not in offline:
            gpu = f"GPU {index} ({bus})" if index is not None else f"GPU {bus}"
            fire("gpu_xid", server_id, f"{bus}:xid{xid}",
                 f"{servers[server_id][1]}: {gpu}: Xid {xid} {name or ''}".strip(), since=ts)
    # "For N min" as a rule made on /admin/rules means it (held_for): the condition held on the
    # newest sample at or before now - N min and on every sample since, whatever the agent's
    # interval (a window that had to hold 2 samples never fired for 1 min at 60 s reports, F21).
    # An alert already open stays while no sample of the last N min is under the threshold: an
    # override (a longer N) never resolves an alert whose condition still holds.
    hot, minutes = cfg["gpu_temperature_c"], cfg["gpu_temperature_minutes"]
    hot_sql = _GPU_CONDITIONS["gpu_temperature"][0]
    hot_open = {row[0] for row in conn.execute(  # (a key range on the index alerts_active)
        "SELECT key FROM alerts WHERE resolved_at IS NULL AND key > 'gpu_temperature:' AND key < 'gpu_temperature;'")}
    for gpu_id, server_id, index, temperature in conn.execute(
            f"SELECT id, server_id, gpu_index, temperature_gpu_c FROM gpus WHERE present AND status != 'maintenance'"
            f" AND {hot_sql}", (hot,)):
        if server_id not in servers or server_id in offline:
            continue
        key = ("gpu_id = ?", (gpu_id,))
        was_open = f"gpu_temperature:{server_id}:gpu{gpu_id}" in hot_open
        if not held_for(conn, "gpu_samples", *key, hot_sql, (hot,), now, minutes * 60, anchored=not was_open):
            continue
        fire("gpu_temperature", server_id, f"gpu{gpu_id}",
             f"{servers[server_id][1]}: GPU {index} at {_num(temperature)} °C (≥ {_num(hot)} °C) for {minutes} min",
             since=lambda key=key: streak_start(conn, "gpu_samples", *key, hot_sql, (hot,), now))
    for server_id, mount, percent in conn.execute(
            "SELECT d.server_id, d.mountpoint, 100.0 * d.used_bytes / d.total_bytes FROM servers s"
            " JOIN disk_samples d ON d.server_id = s.id AND d.ts = s.last_ts"
            " WHERE d.total_bytes > 0 AND 100.0 * d.used_bytes / d.total_bytes >= ?", (cfg["disk_percent"],)):
        if server_id in servers and server_id not in offline:
            fire("disk_full", server_id, mount, f"{servers[server_id][1]}: {mount} is {percent:.0f} % full",
                 since=lambda server_id=server_id, mount=mount: streak_start(
                     conn, "disk_samples", "server_id = ? AND mountpoint = ?", (server_id, mount),
                     "total_bytes > 0 AND 100.0 * used_bytes / total_bytes >= ?", (cfg["disk_percent"],), now))
    for event_id, server_id, kind, hostname, previous, other, ts in conn.execute(
            "SELECT e.id, e.server_id, e.kind, e.hostname, e.previous, e.other_server_id, e.ts FROM host_identity_events e"
            " JOIN servers s ON s.id = e.server_id WHERE e.accepted_at IS NULL AND s.status != 'maintenance'"):
        fire("host_identity", server_id, f"event{event_id}",
             identity_text(kind, hostname, previous, other, scoped=True) + " (accept it on /admin if expected)",
             since=ts)
    builtin = dict(firing)
    for key, alert in builtin.items():
        if alert["rule"] in overrides and not overrides[alert["rule"]]["enabled"]:
            del firing[key]
    if rules:
        for rule in rules:
            firing.update(evaluate_rule(conn, now, cfg, rule, servers=servers, offline=offline, builtin=builtin))
    return firing


# The built-in rules a gpu_health rule covers (on its scope, with its severity and targets).
HEALTH_RULES = ("gpu_failure", "gpu_lost", "gpu_ecc", "gpu_xid")

# Per-GPU kinds: the condition on the latest values (``gpus``) and on one GPU's raw samples
# (``gpu_samples``, for the duration), as SQL over the columns both tables have, with their
# parameters from (threshold, idle_min_mib, memory_total_mib). Constants, never user text.
_GPU_CONDITIONS = {
    "gpu_temperature": ("temperature_gpu_c >= ?", lambda t, mib, total: (t,)),
    # gpu_samples has no memory.total: the GPU's (it does not change) turns the % into MiB.
    "gpu_memory": ("memory_used_mib >= ?", lambda t, mib, total: (t * total / 100.0,)),
    # Held idle as the fleet and idle_holders count it: memory held, utilization.gpu (and the
    # encoder/decoder) under the threshold, utilization known (unknown is not 0 %).
    "gpu_idle_held": ("utilization_gpu IS NOT NULL AND utilization_gpu < ? AND coalesce(utilization_encoder, 0) < ?"
                      " AND coalesce(utilization_decoder, 0) < ? AND memory_used_mib >= ?",
                      lambda t, mib, total: (t, t, t, mib)),
}


def held_for(conn, table, key_sql, key_params, cond_sql, cond_params, now, seconds, anchored=True):
    """True when ``cond_sql`` held on every row of ``table`` for one key over the last
    ``seconds`` before ``now``: on the newest row at or before ``now - seconds`` (so the
    condition began before the window) and on every row after it. Unknown (null) breaks it.
    ``anchored=False`` drops the first part (the rows in the window alone: an alert already
    open stays while they hold). Samples further apart than ``seconds`` still count: the
    newest one before the window says what held at its start.
    Cost: the rows in the window (primary key range). SQL fragments are this module's constants."""
    start = now - seconds
    if anchored:
        anchor = conn.execute(f"SELECT coalesce({cond_sql}, 0) FROM {table} WHERE {key_sql} AND ts <= ?"
                              " ORDER BY ts DESC LIMIT 1", (*cond_params, *key_params, start)).fetchone()
        if not anchor or not anchor[0]:
            return False
    broken = conn.execute(f"SELECT 1 FROM {table} WHERE {key_sql} AND ts > ? AND ts <= ?"
                          f" AND NOT coalesce({cond_sql}, 0) LIMIT 1",
                          (*key_params, start, now, *cond_params)).fetchone()
    return broken is None


def _like(text):
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _scope_sql(rule, column):
    """SQL keeping the rows whose ``column`` (a server id) is in ``rule``'s scope, and its parameters
    (group members read from ``server_groups`` by its index ``server_groups_grp``)."""
    if rule["scope"] == "group":
        return f" AND {column} IN (SELECT server_id FROM server_groups WHERE grp = ?)", (rule["scope_group"],)
    if rule["scope"] == "server":
        return f" AND {column} = ?", (rule["scope_server_id"],)
    return "", ()


def evaluate_rule(conn, now, cfg, rule, servers=None, offline=None, builtin=None):
    """Alerts one ``alert_rules`` rule raises now, keyed ``rule<id>:<server_id>:<subject>``, as
    :func:`evaluate` gives them plus ``rule_id`` and (when the rule names any) ``targets``.

    ``rule``: a dict of :data:`server_monitor.storage.alert_rules.COLUMNS`. Servers in
    maintenance raise nothing; GPU, disk and health kinds skip offline hosts. Its scope is read
    now (:func:`~server_monitor.storage.alert_rules.scope_servers`). ``servers``/``offline``/
    ``builtin``: what :func:`evaluate` already read (computed here when None, e.g. for a dry
    run). A disabled rule is evaluated all the same (the dry run of /admin/rules): the engine
    passes only enabled ones. Pure reads.
    """
    if servers is None:
        servers = _servers(conn)
    if offline is None:
        offline = {sid for sid, row in servers.items() if is_offline(now, row[2], row[3], cfg["host_offline_minutes"])}
    scope = alert_rules.scope_servers(conn, rule)
    kind, threshold, severity, rule_id = rule["kind"], rule["threshold"], rule["severity"], rule["id"]
    seconds = (rule["duration_minutes"] or 0) * 60
    label = f" [rule {rule['name']}]"
    out = {}

    def covered(server_id, online=True):
        return server_id in servers and (scope is None or server_id in scope) and not (online and server_id in offline)

    def fire(alert_rule, server_id, subject, message, since=None):
        alert = {"rule": alert_rule, "severity": severity, "server_id": server_id, "subject": subject,
                 "message": message + label, "since": since, "rule_id": rule_id}
        if rule.get("targets"):
            alert["targets"] = list(rule["targets"])
        out[f"rule{rule_id}:{server_id}:{subject}"] = alert

    if kind == "host_offline":
        for server_id, name, last_seen, interval, *_ in servers.values():
            if covered(server_id, online=False) and is_offline(now, last_seen, interval, threshold):
                fire("host_offline", server_id, "", offline_text(name, now, last_seen, interval), since=last_seen)
    elif kind == "gpu_health":
        if builtin is None:
            builtin = evaluate(conn, now, cfg)
        for key, alert in builtin.items():
            if alert["rule"] in HEALTH_RULES and covered(alert["server_id"]):
                fire(alert["rule"], alert["server_id"], alert["subject"], alert["message"], since=alert["since"])
    elif kind == "disk_full":
        cond = "total_bytes > 0 AND 100.0 * used_bytes / total_bytes >= ?"
        where, params = _scope_sql(rule, "s.id")
        for server_id, mount, percent in conn.execute(
                "SELECT d.server_id, d.mountpoint, 100.0 * d.used_bytes / d.total_bytes FROM servers s"
                " JOIN disk_samples d ON d.server_id = s.id AND d.ts = s.last_ts"
                f" WHERE d.total_bytes > 0 AND 100.0 * d.used_bytes / d.total_bytes >= ?{where}", (threshold, *params)):
            key = ("server_id = ? AND mountpoint = ?", (server_id, mount))
            if not covered(server_id) or (seconds and not held_for(conn, "disk_samples", *key, cond, (threshold,),
                                                                    now, seconds)):
                continue
            fire("disk_full", server_id, mount, f"{servers[server_id][1]}: {mount} is {percent:.0f} % full"
                 + (f" for {rule['duration_minutes']} min" if seconds else ""),
                 since=lambda key=key: streak_start(conn, "disk_samples", *key, cond, (threshold,), now))
    elif kind in _GPU_CONDITIONS:
        cond, params = _GPU_CONDITIONS[kind]
        idle_mib = cfg.get("idle_min_mib") or 1024
        model = " AND name LIKE ? ESCAPE '\\'" if rule.get("gpu_model") else ""
        where, scope_params = _scope_sql(rule, "server_id")
        current = cond if kind != "gpu_memory" else "memory_total_mib > 0 AND 100.0 * memory_used_mib / memory_total_mib >= ?"
        for gpu_id, server_id, index, gpu_name, total, temp, used, util in conn.execute(
                "SELECT id, server_id, gpu_index, name, memory_total_mib, temperature_gpu_c, memory_used_mib,"
                f" utilization_gpu FROM gpus WHERE present AND status != 'maintenance' AND {current}{model}{where}",
                (*(params(threshold, idle_mib, 0) if kind != "gpu_memory" else (threshold,)),
                 *((_like(rule["gpu_model"]),) if model else ()), *scope_params)):
            if not covered(server_id):
                continue
            cond_params = params(threshold, idle_mib, total or 0)
            key = ("gpu_id = ?", (gpu_id,))
            if seconds and not held_for(conn, "gpu_samples", *key, cond, cond_params, now, seconds):
                continue
            what = {"gpu_temperature": f"at {temp} °C (≥ {threshold:g} °C)",
                    "gpu_memory": f"memory {used} of {total} MiB used (≥ {threshold:g} %)",
                    "gpu_idle_held": f"held idle: {used} MiB, utilization.gpu {util} % (< {threshold:g} %)"}[kind]
            fire(kind, server_id, f"gpu{gpu_id}", f"{servers[server_id][1]}: GPU {index} ({gpu_name}) {what}"
                 + (f" for {rule['duration_minutes']} min" if seconds else ""),
                 since=lambda key=key, cond_params=cond_params: streak_start(conn, "gpu_samples", *key, cond,
                                                                            cond_params, now))
    return out


def _listed(found, servers, now):
    """Alerts of :func:`evaluate`/:func:`evaluate_rule` as the dry run shows them (see :func:`dry_run`)."""
    out = []
    for alert in found:
        out.append({"rule": alert["rule"], "severity": alert["severity"], "server_id": alert["server_id"],
                    "server": servers[alert["server_id"]][1], "subject": alert["subject"], "message": alert["message"],
                    "started_at": onset(alert["since"], now), "targets": alert.get("targets")})
    return sorted(out, key=lambda a: (str(a["server"]).lower(), a["server_id"], a["message"]))


def dry_run(conn, now, cfg, rule):
    """What ``rule`` (a dict as :func:`evaluate_rule` takes) would raise now, sending nothing:
    ``[{"rule", "severity", "server_id", "server", "subject", "message", "started_at", "targets"}]``
    ordered by server name and message. ``started_at``: the condition's onset from history.
    Hosts are offline by the built-in host_offline threshold as overridden (as in the alert thread)."""
    servers = _servers(conn)
    cfg = builtin_overrides.apply(cfg, builtin_overrides.all_overrides(conn))
    return _listed(evaluate_rule(conn, now, cfg, rule, servers=servers).values(), servers, now)


def dry_run_builtin(conn, now, cfg, name):
    """What built-in rule ``name`` (:data:`server_monitor.storage.builtin_overrides.BUILTINS`)
    would raise now with its override applied (threshold, minutes, severity, targets), sending
    nothing; a disabled one as if it were enabled. Rows as :func:`dry_run`'s. Runs every
    built-in rule once (:func:`evaluate`) and keeps that one's alerts."""
    overrides = builtin_overrides.all_overrides(conn)
    if name in overrides:
        overrides[name] = dict(overrides[name], enabled=True)
    servers = _servers(conn)
    found = evaluate(conn, now, cfg, overrides=overrides)
    return _listed([alert for alert in found.values() if alert["rule"] == name], servers, now)


def _num(value):
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _builtin_what(name, cfg):
    """Built-in rule ``name``'s condition in words, with the thresholds of ``cfg``."""
    return {
        "host_offline": f"no report for {_num(cfg['host_offline_minutes'])} min (and at least {OFFLINE_INTERVALS} of the"
                        " host's reporting intervals)",
        "gpu_failure": "nvidia-smi / NVML fails (driver mismatch, no devices, …)",
        "collection_stale": "nvidia-smi hangs or times out",
        "gpu_lost": "a GPU is lost or missing from the report",
        "gpu_ecc": "uncorrectable ECC errors, row remapping failed or pending, page retirement pending, reset required",
        "gpu_xid": f"a critical XID ({', '.join(map(str, sorted(CRITICAL_XIDS)))}) in the last {cfg['xid_minutes']} min",
        "gpu_throttle": "hardware slowdown (thermal, power brake)",
        "gpu_pcie_degraded": "busy GPU on a degraded PCIe link",
        "gpu_temperature": f"temperature.gpu ≥ {_num(cfg['gpu_temperature_c'])} °C for {cfg['gpu_temperature_minutes']} min",
        "disk_full": f"a mount point ≥ {_num(cfg['disk_percent'])} % full",
        "host_identity": "a host's name or identity changed",
    }[name]


def builtin_rules(cfg, overrides=None):
    """The built-in rules (config.yaml's ``alerts`` section, as overridden on /admin/rules), in
    the order of :data:`~server_monitor.storage.builtin_overrides.BUILTINS`: ``[{"rule",
    "severity", "what", "enabled", "targets", "config_severity", "config_what", "override",
    "threshold", "minutes"}]``. ``what``/``severity``/``enabled``/``targets``: what the alert
    thread uses now; ``config_what``/``config_severity``: config.yaml's alone; ``override``: the
    row of ``overrides`` (:func:`~server_monitor.storage.builtin_overrides.all_overrides`; None:
    no overrides) or None; ``threshold``/``minutes``: None where the rule has none, else its
    bounds (``key``, ``label``, ``unit``, ``min``, ``max``) plus ``config`` (config.yaml's
    value) and ``value`` (the override's, or None)."""
    overrides = overrides or {}
    effective = builtin_overrides.apply(cfg, overrides)
    out = []
    for name, spec in builtin_overrides.BUILTINS.items():
        override = overrides.get(name)
        rule = {"rule": name, "config_severity": spec["severity"], "config_what": _builtin_what(name, cfg),
                "what": _builtin_what(name, effective), "override": override,
                "severity": (override and override["severity"]) or spec["severity"],
                "enabled": override["enabled"] if override else True,
                "targets": override["targets"] if override else None}
        for key in ("threshold", "minutes"):
            rule[key] = spec[key] and dict(spec[key], config=cfg[spec[key]["key"]],
                                           value=override[key] if override else None)
        out.append(rule)
    return out


IDENTITY_TEXT = {
    "renamed": "{hostname}: the host name changed from {previous} (same machine id)",
    "name_taken": "{hostname}: a second server (another machine id) reports the name of server #{other}",
    "look_alike": "{hostname}: the name looks like {previous}, the name of server #{other}",
}


# The alert's text, shown to every viewer whose scope has the server: it names no other server
# (a viewer of the look-alike host must not learn the name or id of one out of their scope, I-2).
SCOPED_IDENTITY_TEXT = dict(IDENTITY_TEXT, name_taken="{hostname}: a second server (another machine id) reports "
                            "this name", look_alike="{hostname}: the name looks like another server's name")


def identity_text(kind, hostname, previous, other, scoped=False):
    """One line about a ``host_identity_events`` row (see docs/security.md L10). ``scoped``: the
    alert's wording, which names no other server (I-2); else the admin page's, which does."""
    return (SCOPED_IDENTITY_TEXT if scoped else IDENTITY_TEXT).get(kind, "{hostname}: host identity changed ({kind})"
                                                                   ).format(hostname=hostname, previous=previous,
                                                                            other=other, kind=kind)


# Delivery (Apprise, webhooks, e-mail, routing, failure records) is jobs/notify.py's; the name
# stays importable here for older callers.
Notifier = notify.Notifier


# An alert younger than this (s) has its onset read again on every pass: history that arrives
# after it fired (a spool replay after an outage, the demo's backfill) moves its start back.
ONSET_RECHECK_S = 900


def onset(since, now):
    """``started_at`` of a new alert: its ``since`` (a number, a function returning one, or None)
    as integer epoch seconds, never after ``now``; ``now`` when history does not tell."""
    value = since() if callable(since) else since
    return now if value is None else min(int(value), int(now))


class AlertEngine:
    """Keeps the ``alerts`` table in step with :func:`evaluate` and sends the notices."""

    def __init__(self, db_path, cfg, notifier=None):
        self.db_path = db_path
        self.cfg = cfg
        self.notifier = notifier or Notifier(cfg)
        # The targets a firing alert named (``alert["targets"]``, jobs/notify.py), by key, for its
        # resolved notice (the alerts table does not keep them; after a restart: by severity).
        self._targets = {}

    def run_once(self, now=None):
        """One evaluation; returns ``{"fired": [...], "repeated": [...], "resolved": [...]}`` (keys)."""
        now = int(time.time() if now is None else now)
        conn = schema.connect(self.db_path, timeout=30)
        begin = getattr(self.notifier, "begin_pass", None)
        if begin is not None:  # deliveries of this pass share one time budget (jobs/notify.py)
            begin()
        try:
            rules = alert_rules.all_rules(conn, enabled_only=True)
            overrides = builtin_overrides.all_overrides(conn)  # the built-in rules' overrides, once a pass
            firing = evaluate(conn, now, self.cfg, rules, overrides)
            disabled = {name for name, override in overrides.items() if not override["enabled"]}
            targets = {rule["id"]: rule["targets"] for rule in rules}
            active = {row[1]: row for row in conn.execute(
                "SELECT id, key, rule, severity, server_id, subject, message, started_at, last_notified_at,"
                " notifications, EXISTS (SELECT 1 FROM alert_acks k WHERE k.alert_id = alerts.id), rule_id"
                " FROM alerts WHERE resolved_at IS NULL")}
            silences = conn.execute("SELECT server_id, rule FROM silences WHERE ended_at IS NULL AND until > ?",
                                    (now,)).fetchall()

            def silenced(alert):
                return any((sid is None or sid == alert["server_id"]) and (rule is None or rule == alert["rule"])
                           for sid, rule in silences)
            result = {"fired": [], "repeated": [], "resolved": []}
            repeat = self.cfg["repeat_minutes"] * 60
            for key, alert in firing.items():
                since = alert.pop("since", None)
                if alert.get("targets"):
                    self._targets[key] = list(alert["targets"])
                if key not in active:
                    # The alert starts when the condition did (stored history), not when this
                    # hub first looked: after a restart a GPU missing for 5 h is not "lost for 10 s".
                    started = onset(since, now)
                    cur = conn.execute(
                        "INSERT INTO alerts (key, rule, severity, server_id, subject, message, started_at, rule_id)"
                        " VALUES (?,?,?,?,?,?,?,?)",
                        (key, alert["rule"], alert["severity"], alert["server_id"], alert["subject"], alert["message"],
                         started, alert.get("rule_id")))
                    if not silenced(alert):
                        self._notify(conn, cur.lastrowid, "firing", dict(alert, started_at=started), now)
                    result["fired"].append(key)
                else:
                    row = active[key]
                    if alert["message"] != row[6]:  # live text (e.g. how long a host is offline)
                        conn.execute("UPDATE alerts SET message = ? WHERE id = ?", (alert["message"], row[0]))
                    if alert["severity"] != row[3]:  # its rule's severity was edited
                        conn.execute("UPDATE alerts SET severity = ? WHERE id = ?", (alert["severity"], row[0]))
                    if since is not None and row[7] >= now - ONSET_RECHECK_S:
                        # Reports stored after the alert (an agent replaying its spool, the demo's
                        # backfill) can show an earlier onset: a young alert moves back to it.
                        earlier = onset(since, now)
                        if earlier < row[7]:
                            conn.execute("UPDATE alerts SET started_at = ? WHERE id = ?", (earlier, row[0]))
                    # Acknowledged: no reminders. Silenced: nothing until the silence ends.
                    quiet = silenced(alert) or (row[10] and row[8] is not None)
                    if not quiet and (row[8] is None or now - row[8] >= repeat):
                        self._notify(conn, row[0], "reminder" if row[8] else "firing", dict(alert, started_at=row[7]), now)
                        result["repeated"].append(key)
            for key, row in active.items():
                if key not in firing:
                    conn.execute("UPDATE alerts SET resolved_at = ? WHERE id = ?", (now, row[0]))
                    alert = {"rule": row[2], "severity": row[3], "server_id": row[4], "subject": row[5],
                             "message": row[6], "started_at": row[7], "resolved_at": now}
                    if row[11] is not None:
                        alert["rule_id"] = row[11]
                    # The rule named its targets: the resolved notice goes there too (the rule's
                    # targets now, else those the alert carried when it fired).
                    named = (targets.get(row[11]) if row[11] is not None else None) or self._targets.get(key)
                    if named:
                        alert["targets"] = list(named)
                    self._targets.pop(key, None)
                    # No "resolved" for what was never announced, nor for the alerts of a rule
                    # an admin disabled or deleted, built-in rules included (the condition did
                    # not clear: the rule went).
                    gone = (row[11] not in targets) if row[11] is not None else row[2] in disabled
                    if row[9] and not gone and not silenced(alert):
                        self.notifier.send("resolved", alert)
                    result["resolved"].append(key)
            return result
        finally:
            conn.close()

    def _notify(self, conn, alert_id, event, alert, now):
        if self.notifier.send(event, alert):
            conn.execute("UPDATE alerts SET last_notified_at = ?, notifications = notifications + 1 WHERE id = ?",
                         (now, alert_id))


class AlertThread(threading.Thread):
    """Runs :meth:`AlertEngine.run_once` every ``interval_s`` seconds.

    A failing pass (any exception) is logged and retried on the next tick; it never ends the
    thread (see docs/security.md M3). ``last_error`` holds the last failure's text (None after a good pass),
    ``last_pass_at`` the epoch seconds of the last good pass; ``/-/health`` reports both.
    """

    def __init__(self, engine):
        super().__init__(name="alerts", daemon=True)
        self.engine = engine
        self.stopped = threading.Event()
        self.last_error = None
        self.last_pass_at = None

    def run(self):
        while not self.stopped.wait(self.engine.cfg["interval_s"]):
            try:
                result = self.engine.run_once()
                self.last_error, self.last_pass_at = None, time.time()
                if any(result.values()):
                    log.info("alerts: %s", result)
            except Exception as exc:  # keep alerting whatever one pass hit (see docs/security.md M3)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("alert evaluation failed, will retry")
