"""The fleet document behind the dashboard's grid: ``GET /api/fleet`` (``plugins/sm_fleet.py``).

One compact JSON document per viewer scope answers "which GPUs are free, who holds them,
what is broken" for the whole fleet in one call: servers, every GPU as a short array, the
processes holding each GPU, the who-is-using-now aggregate and the firing problems. It is
built from the ``fleet_servers``, ``fleet_gpus``, ``fleet_processes`` and ``alerts_active``
canned queries in one read transaction, and kept (JSON and gzip) until the database or the
clock bucket changes:

* the version key is ``PRAGMA data_version`` read on one dedicated read-only connection (it
  changes whenever any other connection, in any process, commits) plus ``now // bucket_s``
  (liveness states depend on the hub's clock);
* documents are cached per scope (all servers or a list, processes visible or not);
* the ``ETag`` is a hash of the content without ``generated_at``, so a rebuild that changes
  nothing keeps the ETag and the client gets ``304 Not Modified``.

Shape (``v`` 1; times are UTC epoch seconds, memory MiB, power W, temperature °C)::

    {"v": 1, "generated_at": 1764633600, "processes": true,
     "strings": ["alice", "lxc:lab-1", "python", ...],        # users, containers, names
     "gpu_fields": [...GPU_FIELDS], "proc_fields": [...PROC_FIELDS],
     "servers": [{"id", "name", "state", "admin_status", "note", "last_seen", "interval_s",
                  "gpu_state", "gpu_message", "cpu_percent", "mem_percent", "models",
                  "gpus": [[id, index, state, util, mem_used, mem_total, temp, power,
                            bus, model, [[pid, user, container, mib, name], ...], vendor], ...]}],
     "who": [{"user", "gpus", "mib", "hosts", "idle", "containers": [...]}],
     "problems": [{"id", "rule", "severity", "server_id", "server", "subject", "message",
                   "since", "acked_by", "acked_at", "ack_note", "silenced_until"}],
     "counts": {"servers": {state: n}, "gpus": {state: n}}}

``user``/``container``/``name``/``model`` in the arrays are indexes into ``strings``
(null when unknown). GPU ``state`` is one of :data:`GPU_STATES`; ``vendor`` is ``amd`` or
``intel``, null for NVIDIA (the common case, kept out of the document).
"""

import asyncio
import gzip
import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict

from .queries import QUERIES, scope_params

GPU_FIELDS = ["id", "index", "state", "util", "mem_used_mib", "mem_total_mib", "temp_c", "power_w",
              "bus", "model", "procs", "vendor"]
PROC_FIELDS = ["pid", "user", "container", "mib", "name"]
# free, busy, idle (held: processes but utilization under features.idle_max_util), mig,
# lost (missing from the latest report), error (collection failing or marked fault),
# offline / stale (host not reporting), maint (GPU or host in maintenance).
GPU_STATES = ("free", "busy", "idle", "mig", "lost", "error", "offline", "stale", "maint")
# gpu_state values of a host whose GPU collection fails (see server_monitor.alerts).
FAILING = frozenset(("driver_mismatch", "no_devices", "driver_not_loaded", "insufficient_permissions", "error",
                     "timeout", "busy"))


def gpu_state(server, gpu, idle_max_util):
    """One of :data:`GPU_STATES` for a ``fleet_gpus`` row of a ``fleet_servers`` row."""
    if gpu["status"] == "maintenance" or server["admin_status"] == "maintenance":
        return "maint"
    if not gpu["present"]:
        return "lost"
    if server["state"] in ("offline", "stale"):
        return server["state"]
    if gpu["status"] == "fault" or server["gpu_state"] in FAILING:
        return "error"
    if gpu["mig_mode"] == 1:
        return "mig"
    if gpu["process_count"]:
        return "idle" if (gpu["utilization_gpu"] or 0) < idle_max_util else "busy"
    return "busy" if gpu["busy"] else "free"


def _rows(conn, name, params):
    cursor = conn.execute(QUERIES[name]["sql"], params)
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def build(conn, actor, idle_max_util=5, now=None):
    """The fleet document (a dict, shape in the module docstring) for ``actor``'s scope.

    ``conn``: a ``sqlite3`` connection to monitor.db (read in one transaction).
    ``idle_max_util``: utilization.gpu % under which a held GPU counts as idle.
    """
    params = scope_params(actor)
    see_processes = bool(params["_scope_processes"])
    conn.execute("BEGIN")
    try:
        servers = _rows(conn, "fleet_servers", params)
        gpus = _rows(conn, "fleet_gpus", params)
        procs = _rows(conn, "fleet_processes", params) if see_processes else []
        alerts = _rows(conn, "alerts_active", params)
    finally:
        conn.execute("COMMIT")
    strings, index = [], {}

    def intern(text):
        if text is None or text == "":
            return None
        found = index.get(text)
        if found is None:
            found = index[text] = len(strings)
            strings.append(text)
        return found

    procs_by_gpu = {}
    for p in procs:
        container = p["container"]
        if container and p["container_kind"]:
            container = f"{p['container_kind']}:{container}"
        user = p["user"] if p["user"] is not None else (f"uid {p['uid']}" if p["uid"] is not None else None)
        procs_by_gpu.setdefault(p["gpu_id"], []).append(
            [p["pid"], intern(user), intern(container), p["used_gpu_memory_mib"], intern(p["process_name"])])
    by_server = {}
    for g in gpus:
        by_server.setdefault(g["server_id"], []).append(g)
    who, counts_s, counts_g, out = {}, {}, {}, []
    for s in servers:
        counts_s[s["state"]] = counts_s.get(s["state"], 0) + 1
        cells = []
        known_bus = set()
        for g in by_server.get(s["id"], ()):
            state = gpu_state(s, g, idle_max_util)
            counts_g[state] = counts_g.get(state, 0) + 1
            known_bus.add(g["pci_bus_id"])
            holders = procs_by_gpu.get(g["id"], [])
            cells.append([g["id"], g["gpu_index"], state, g["utilization_gpu"], g["memory_used_mib"],
                          g["memory_total_mib"], g["temperature_gpu_c"],
                          None if g["power_draw_w"] is None else round(g["power_draw_w"]),
                          g["pci_bus_id"], intern(g["name"]), holders,
                          g["vendor"] if g["vendor"] != "nvidia" else None])
            if state in ("offline", "stale", "lost"):
                continue
            for pid, user, container, mib, _ in holders:
                entry = who.setdefault(user, {"user": strings[user] if user is not None else None, "gpus": set(),
                                              "mib": 0, "hosts": set(), "idle": set(), "containers": set()})
                entry["mib"] += mib or 0
                entry["hosts"].add(s["id"])
                entry["gpus"].add(g["id"])
                if state == "idle":
                    entry["idle"].add(g["id"])
                if container is not None:
                    entry["containers"].add(strings[container])
        # GPUs the driver reports as lost (nvidia-smi "Unable to determine the device handle")
        # that have no row of their own: a lost cell each, named by PCI bus id.
        if s["gpu_lost"]:
            try:
                lost = json.loads(s["gpu_lost"])
            except ValueError:
                lost = []
            for item in lost if isinstance(lost, list) else []:
                bus = item.get("pci.bus_id") if isinstance(item, dict) else None
                if bus and bus not in known_bus:
                    counts_g["lost"] = counts_g.get("lost", 0) + 1
                    cells.append([None, None, "lost", None, None, None, None, None, bus, None, [], None])
        out.append({
            "id": s["id"], "name": s["name"], "state": s["state"], "admin_status": s["admin_status"],
            "note": s["status_note"], "last_seen": s["last_seen"], "interval_s": s["interval_s"],
            "gpu_state": s["gpu_state"], "gpu_message": s["gpu_message"],
            "cpu_percent": None if s["cpu_percent"] is None else round(s["cpu_percent"]),
            "mem_percent": (round(100 * s["memory_used_bytes"] / s["memory_total_bytes"])
                            if s["memory_used_bytes"] is not None and s["memory_total_bytes"] else None),
            "models": s["gpu_models"], "gpus": cells,
        })
    who_list = sorted(
        ({"user": e["user"], "gpus": len(e["gpus"]), "mib": e["mib"], "hosts": len(e["hosts"]),
          "idle": len(e["idle"]), "containers": sorted(e["containers"])} for e in who.values()),
        key=lambda e: (-e["gpus"], -e["mib"], e["user"] or ""))
    problems = [{
        "id": a["id"], "rule": a["rule"], "severity": a["severity"], "server_id": a["server_id"],
        "server": a["server"], "subject": a["subject"], "message": a["message"],
        "since": a["last_seen"] if a["rule"] == "host_offline" and a["last_seen"] else a["started_at"],
        "acked_by": a["acked_by"], "acked_at": a["acked_at"], "ack_note": a["ack_note"],
        "silenced_until": a["silenced_until"],
    } for a in alerts]
    return {
        "v": 1, "generated_at": int(time.time() if now is None else now), "processes": see_processes,
        "strings": strings, "gpu_fields": GPU_FIELDS, "proc_fields": PROC_FIELDS,
        "servers": out, "who": who_list, "problems": problems,
        "counts": {"servers": counts_s, "gpus": counts_g},
    }


def scope_key(actor):
    """The cache key of ``actor``'s view: ``(all servers?, server ids, processes?)``."""
    params = scope_params(actor)
    return (params["_scope_all"], params["_scope_servers"], params["_scope_processes"])


class Entry:
    """One cached document: ``version``, ``etag``, ``body`` (JSON bytes), ``gzip`` bytes."""

    __slots__ = ("version", "etag", "body", "gzip", "content")

    def __init__(self, version, etag, body, gz, content):
        self.version, self.etag, self.body, self.gzip, self.content = version, etag, body, gz, content


def encode(doc, previous=None, version=None):
    """JSON + gzip + ETag for ``doc``; reuses ``previous`` when only ``generated_at`` moved."""
    content = json.dumps(dict(doc, generated_at=0), separators=(",", ":"), ensure_ascii=False).encode()
    if previous is not None and previous.content == content:
        previous.version = version
        return previous
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    etag = '"' + hashlib.blake2b(content, digest_size=12).hexdigest() + '"'
    return Entry(version, etag, body, gzip.compress(body, compresslevel=5), content)


class FleetCache:
    """Fleet documents per viewer scope, rebuilt once per change of ``monitor.db``.

    ``db_path``: monitor.db. ``bucket_s``: documents also expire when ``now // bucket_s``
    moves (offline/stale states follow the clock). Holds at most ``max_entries`` scopes.
    """

    def __init__(self, db_path, bucket_s=10, max_entries=32):
        self.db_path = db_path
        self.bucket_s = bucket_s
        self.max_entries = max_entries
        self.entries = OrderedDict()
        self._probe = None
        self._probe_lock = threading.Lock()
        self._locks = {}

    def version(self, now=None):
        """``(PRAGMA data_version, clock bucket)``: changes when anyone commits or time moves on."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
            data_version = self._probe.execute("PRAGMA data_version").fetchone()[0]
        return (data_version, int((time.time() if now is None else now) // self.bucket_s))

    async def get(self, key, build_fn):
        """The :class:`Entry` for scope ``key``; ``build_fn()`` is awaited for a new document."""
        version = self.version()
        entry = self.entries.get(key)
        if entry is not None and entry.version == version:
            return entry
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self.entries.get(key)
            version = self.version()
            if entry is not None and entry.version == version:
                return entry
            doc = await build_fn()
            entry = encode(doc, entry, version)
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_entries:
                old, _ = self.entries.popitem(last=False)
                self._locks.pop(old, None)
            return entry
