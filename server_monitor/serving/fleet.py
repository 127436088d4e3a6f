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
     "gpu_fields": [...GPU_FIELDS], "proc_fields": [...PROC_FIELDS],
     "servers": [{"id", "name", "state", "admin_status", "note", "last_seen", "interval_s",
                  "gpu_state", "gpu_message", "cpu_percent", "mem_percent", "models", "model", "groups",
                  "gpus": [[id, index, state, util, mem_used, mem_total, temp, power,
                            bus, model, [[pid, user, container, mib, name, gi], ...], vendor,
                            health, health_reasons, xid, mig, slurm], ...]}],
     "who": [{"user", "gpus", "mib", "hosts", "idle", "containers": [...]}],
     "problems": [{"id", "rule", "severity", "server_id", "server", "subject", "message",
                   "since", "acked_by", "acked_at", "ack_note", "silenced_until"}],
     "counts": {"servers": {state: n}, "gpus": {state: n}}}

``groups`` is the server's host groups (``server_monitor.storage.groups``: agent config, Slurm
partitions, admin; any source), sorted, ``[]`` for none: the dashboard's group sections and the
overview are built from it. ``bus`` is the PCI bus id without an all-zero domain; ``model`` is null when it is the server's
``model``. ``container`` is ``kind:name`` (``lxc:lab-1``, ``docker:…``, ``slurm:job-…``), null on the host;
``user`` null when unknown; ``gi`` the MIG GPU instance id of the process (null outside MIG).
GPU ``state`` is one of :data:`GPU_STATES`; ``vendor`` is ``amd`` or
``intel``, null for NVIDIA (the common case, kept out of the document). ``health`` is ``warning`` or
``critical`` (null when ok) with ``health_reasons`` text (``server_monitor.core.gpu_health``); ``xid``
the GPU's last NVIDIA XID code; ``mig`` for a MIG-enabled GPU a list of
``[uuid, profile, gi, mem_used_mib, mem_total_mib, procs, state]`` per MIG device (:data:`MIG_FIELDS`,
``state`` from :func:`mig_states`);
``slurm`` ``[job id, user]`` of the Slurm job the GPU is allocated to (null without one). A GPU a
job holds with no process yet has state ``alloc`` and one process entry with a null pid and name,
the job's user and container ``slurm-alloc:job <id>`` (``store.SLURM_ALLOCATION_KIND``). Each server's part is
kept as JSON bytes and rebuilt only when that server's row changes (a new report, its state,
an admin change), so a refresh after a few reports costs a few servers, not the fleet.
"""

import asyncio
import gzip
import hashlib
import json
import sqlite3
import threading
import logging
import time
from collections import OrderedDict

from ..core.gpu_health import canonical_bus_id
from .queries import QUERIES, scope_params

log = logging.getLogger("server_monitor.fleet")

GPU_FIELDS = ["id", "index", "state", "util", "mem_used_mib", "mem_total_mib", "temp_c", "power_w",
              "bus", "model", "procs", "vendor", "health", "health_reasons", "xid", "mig", "slurm"]
# A MIG-enabled GPU's "mig" field: one array per MIG device, split in the grid.
MIG_FIELDS = ["uuid", "profile", "gi", "mem_used_mib", "mem_total_mib", "procs", "state"]
# A MIG device's usage older than this (seconds before its report) counts as unknown, as in free_gpus.sql.
MIG_SAMPLE_MAX_AGE_S = 300
PROC_FIELDS = ["pid", "user", "container", "mib", "name", "gi"]
# free, busy, idle (held: processes but a reported utilization under features.idle_max_util;
# a GPU that reports none is busy, never idle), mig,
# lost (missing from the latest report), error (collection failing or marked fault),
# offline / stale (host not reporting), maint (GPU or host in maintenance), alloc (allocated to a
# Slurm job that has no process on it yet: never free).
GPU_STATES = ("free", "busy", "idle", "mig", "lost", "error", "offline", "stale", "maint", "alloc")
# gpu_state values of a host whose GPU collection fails (see server_monitor.jobs.alerts).
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
        # NVENC/NVDEC at work count as use: a transcoder at 100 % encoder, 8 % SM is not idle.
        # A utilization the GPU does not report (MIG, "[N/A]": null) is unknown, not 0 %: held
        # with an unknown utilization is "busy", never "idle" (issue 22 item 9).
        if gpu["utilization_gpu"] is None:
            return "busy"
        util = max(gpu["utilization_gpu"], gpu.get("utilization_encoder") or 0, gpu.get("utilization_decoder") or 0)
        return "idle" if util < idle_max_util else "busy"
    if gpu.get("slurm_job"):
        return "alloc"
    return "busy" if gpu["busy"] else "free"


def mig_states(rows, gpu_process_count):
    """State of each MIG device of one GPU, the rule ``free_gpus`` offers by (docs/api.md).

    ``rows``: that GPU's ``fleet_mig`` rows (dicts); ``gpu_process_count``: compute processes the
    report lists on the GPU. Returns one of, per row: ``busy`` (a process in this compute
    instance), ``shared`` (idle, but a sibling compute instance of its GPU instance runs one: they
    share its memory), ``unknown`` (usage not read yet or older than :data:`MIG_SAMPLE_MAX_AGE_S`,
    or a process on the GPU that no instance holds yet), ``free``.
    """
    placed = sum(r["process_count"] for r in rows)
    busy_gi = {r["gpu_instance_id"] for r in rows if r["process_count"]}
    states = []
    for r in rows:
        if r["process_count"]:
            states.append("busy")
        elif (r["sampled_at"] is None or r["memory_total_mib"] is None or r["memory_used_mib"] is None
              or r["ts"] - r["sampled_at"] > MIG_SAMPLE_MAX_AGE_S or r["gpu_instance_id"] is None
              or gpu_process_count != placed):
            states.append("unknown")
        elif r["gpu_instance_id"] in busy_gi:
            states.append("shared")
        else:
            states.append("free")
    return states


def _rows(conn, name, params):
    cursor = conn.execute(QUERIES[name]["sql"], params)
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Fragment:
    """One server's part of the document: its JSON bytes, GPU state counts and who-uses-it."""

    __slots__ = ("sig", "json", "counts", "who", "state")

    def __init__(self, sig, server, cells, counts, who):
        self.sig, self.json, self.counts, self.who, self.state = sig, _dumps(dict(server, gpus=cells)), counts, who, server["state"]


def _bus(bus):
    """PCI bus id without the all-zero domain (``00000000:3B:00.0`` → ``3B:00.0``, as lspci)."""
    return bus[9:] if bus and bus.startswith("00000000:") else bus


def _mig_cells(rows, gpu_process_count):
    """The document's ``mig`` field of one GPU (None without MIG devices)."""
    if not rows:
        return None
    return [[r["uuid"], r["profile"], r["gpu_instance_id"], r["memory_used_mib"], r["memory_total_mib"],
             r["process_count"], state] for r, state in zip(rows, mig_states(rows, gpu_process_count or 0))]


def _fragment(sig, s, gpus, procs_by_gpu, idle_max_util, migs_by_gpu=None):
    """Build the :class:`Fragment` of server row ``s`` with its ``gpus`` rows."""
    cells, counts, who = [], {}, {}
    models = {g["name"] for g in gpus}
    model = models.pop() if len(models) == 1 else None  # said once per server when all GPUs match
    for g in gpus:
        state = gpu_state(s, g, idle_max_util)
        counts[state] = counts.get(state, 0) + 1
        procs = procs_by_gpu.get(g["id"], [])
        cells.append([g["id"], g["gpu_index"], state, g["utilization_gpu"], g["memory_used_mib"], g["memory_total_mib"],
                      g["temperature_gpu_c"], None if g["power_draw_w"] is None else round(g["power_draw_w"]),
                      _bus(g["pci_bus_id"]), None if g["name"] == model else g["name"], procs,
                      g["vendor"] if g["vendor"] != "nvidia" else None,
                      g.get("health") if g.get("health") not in (None, "ok") else None, g.get("health_reasons"),
                      g.get("xid_last"), _mig_cells((migs_by_gpu or {}).get(g["id"]), g["process_count"]),
                      [g["slurm_job"], g.get("slurm_user")] if g.get("slurm_job") else None])
        if state in ("offline", "stale", "lost"):
            continue  # a host that does not report holds nothing now
        seen = set()
        for _, user, container, mib, *_ in procs:
            entry = who.get(user)
            if entry is None:
                entry = who[user] = [0, 0, 0, set()]  # GPUs, MiB, idle GPUs, containers
            entry[1] += mib or 0
            if user not in seen:
                seen.add(user)
                entry[0] += 1
                entry[2] += state == "idle"
            if container is not None:
                entry[3].add(container)
    # GPUs the driver reports as lost (nvidia-smi "Unable to determine the device handle")
    # that have no row of their own: a lost cell each, named by PCI bus id. The lost line
    # spells the bus 0000:70:00.0 where the GPU's own row says 00000000:70:00.0: compared in
    # one spelling (core/gpu_health.py canonical_bus_id), a known GPU that goes lost stays one cell, counted once.
    if s["gpu_lost"]:
        # Only a host with lost GPUs pays for the canonical spelling (10,000 hosts: 0.7 s a cold build).
        known_bus = {canonical_bus_id(g["pci_bus_id"]) for g in gpus if g["pci_bus_id"]}
        try:
            lost = json.loads(s["gpu_lost"])
        except ValueError:
            lost = []
        for item in lost if isinstance(lost, list) else []:
            bus = item.get("pci.bus_id") if isinstance(item, dict) else None
            if bus and canonical_bus_id(bus) not in known_bus:
                counts["lost"] = counts.get("lost", 0) + 1
                cells.append([None, None, "lost", None, None, None, None, None, _bus(bus), None, [], None,
                              "critical", "lost", None, None, None])
    server = {
        "id": s["id"], "name": s["name"], "state": s["state"], "admin_status": s["admin_status"],
        "note": s["status_note"], "last_seen": s["last_seen"], "interval_s": s["interval_s"],
        "gpu_state": s["gpu_state"], "gpu_message": s["gpu_message"],
        "cpu_percent": None if s["cpu_percent"] is None else round(s["cpu_percent"]),
        "mem_percent": (round(100 * s["memory_used_bytes"] / s["memory_total_bytes"])
                        if s["memory_used_bytes"] is not None and s["memory_total_bytes"] else None),
        "models": s["gpu_models"], "model": model, "groups": s["groups"].split() if s.get("groups") else [],
    }
    return Fragment(sig, server, cells, counts, who)


def build_content(conn, actor, fragments, idle_max_util=5):
    """The fleet document's bytes without ``generated_at`` for ``actor`` (shape in the module docstring).

    ``conn``: a ``sqlite3`` connection to monitor.db (read in one transaction).
    ``fragments``: ``{(server id, processes?): Fragment}`` kept between calls; only servers
    whose row changed (new report, state, admin status) are rebuilt from the GPU and process
    tables. ``idle_max_util``: utilization.gpu % under which a held GPU counts as idle.
    """
    return build_scope(conn, scope_params(actor), fragments, idle_max_util)[0]


def scope_of(key):
    """The scope parameters (``queries.scope_params``) of a :func:`scope_key`."""
    return {"_scope_all": key[0], "_scope_servers": key[1], "_scope_processes": key[2]}


def build_scope(conn, params, fragments, idle_max_util=5):
    """:func:`build_content` for scope parameters ``params`` (``queries.scope_params``):
    ``(document bytes without generated_at, number of servers in it)``. Raises ``sqlite3.Error``."""
    see = bool(params["_scope_processes"])
    conn.execute("BEGIN")
    try:
        cursor = conn.execute(QUERIES["fleet_servers"]["sql"], params)
        columns = [c[0] for c in cursor.description]
        skip = columns.index("last_seen")
        ids, sigs, stale = [], {}, []
        for row in cursor.fetchall():
            sig = sigs[row[0]] = row[:skip] + row[skip + 1:]
            ids.append(row[0])
            known = fragments.get((row[0], see))
            if known is None or known.sig != sig:
                stale.append(dict(zip(columns, row)))
        # 500 servers at a time, their rows dropped once their fragments are built: a cold build
        # of 10,000 servers held 80,000 GPU and 80,000 process rows as dicts at once (the
        # worker's RSS stayed ~260 MB higher after it).
        for i in range(0, len(stale), 500):
            part = stale[i:i + 500]
            chunk = json.dumps([s["id"] for s in part])
            gpus = _rows(conn, "fleet_gpus", dict(params, servers=chunk))
            migs = _rows(conn, "fleet_mig", dict(params, servers=chunk))
            procs = _rows(conn, "fleet_processes", dict(params, servers=chunk)) if see else []
            procs_by_gpu, gpus_by_server, migs_by_gpu = {}, {}, {}
            for m in migs:
                migs_by_gpu.setdefault(m["gpu_id"], []).append(m)
            for p in procs:
                container = p["container"]
                if container and p["container_kind"]:
                    container = f"{p['container_kind']}:{container}"
                user = p["user"] if p["user"] is not None else (f"uid {p['uid']}" if p["uid"] is not None else None)
                procs_by_gpu.setdefault(p["gpu_id"], []).append(
                    [p["pid"], user, container, p["used_gpu_memory_mib"], p["process_name"], p["gpu_instance_id"]])
            for g in gpus:
                gpus_by_server.setdefault(g["server_id"], []).append(g)
            for s in part:
                fragments[(s["id"], see)] = _fragment(sigs[s["id"]], s, gpus_by_server.get(s["id"], ()), procs_by_gpu,
                                                      idle_max_util, migs_by_gpu)
        alerts = _rows(conn, "alerts_active", params)
    finally:
        conn.execute("COMMIT")
    if params["_scope_all"]:  # forget deleted servers
        for key in [k for k in fragments if k[0] not in sigs]:
            del fragments[key]
    parts, counts_s, counts_g, who = [], {}, {}, {}
    for server_id in ids:  # last_seen is left out of the signature: it moves with every report
        f = fragments[(server_id, see)]
        parts.append(f.json)
        counts_s[f.state] = counts_s.get(f.state, 0) + 1
        for state, n in f.counts.items():
            counts_g[state] = counts_g.get(state, 0) + n
        for user, (n, mib, idle, containers) in f.who.items():
            entry = who.get(user)
            if entry is None:
                entry = who[user] = [0, 0, 0, 0, set()]
            entry[0] += n
            entry[1] += mib
            entry[2] += 1
            entry[3] += idle
            entry[4] |= containers
    who_list = sorted(({"user": u, "gpus": e[0], "mib": e[1], "hosts": e[2], "idle": e[3],
                        "containers": sorted(e[4])} for u, e in who.items()),
                      key=lambda e: (-e["gpus"], -e["mib"], e["user"] or ""))
    problems = [{
        "id": a["id"], "rule": a["rule"], "severity": a["severity"], "server_id": a["server_id"],
        "server": a["server"], "subject": a["subject"], "message": a["message"],
        "since": a["last_seen"] if a["rule"] == "host_offline" and a["last_seen"] else a["started_at"],
        "acked_by": a["acked_by"], "acked_at": a["acked_at"], "ack_note": a["ack_note"],
        "silenced_until": a["silenced_until"],
    } for a in alerts]
    return b"".join((
        b'{"v":1,"processes":', b"true" if see else b"false",
        b',"gpu_fields":', _dumps(GPU_FIELDS), b',"proc_fields":', _dumps(PROC_FIELDS),
        b',"servers":[', b",".join(parts), b'],"who":', _dumps(who_list), b',"problems":', _dumps(problems),
        b',"counts":', _dumps({"servers": counts_s, "gpus": counts_g}), b"}")), len(ids)


def build(conn, actor, idle_max_util=5, now=None):
    """The fleet document as a dict (a fresh build; see :func:`build_content`)."""
    doc = json.loads(build_content(conn, actor, {}, idle_max_util))
    doc["generated_at"] = int(time.time() if now is None else now)
    return doc


def scope_key(actor):
    """The cache key of ``actor``'s view: ``(all servers?, server ids, processes?)``."""
    params = scope_params(actor)
    return (params["_scope_all"], params["_scope_servers"], params["_scope_processes"])


class Entry:
    """One cached document: ``version``, ``etag``, ``body`` (JSON bytes), ``gzip`` bytes."""

    __slots__ = ("version", "etag", "body", "gzip", "content")

    def __init__(self, version, etag, body, gz, content):
        self.version, self.etag, self.body, self.gzip, self.content = version, etag, body, gz, content


def encode(content, previous=None, version=None, now=None):
    """The :class:`Entry` for document ``content`` (bytes without ``generated_at``).

    Reuses ``previous`` (ETag, bytes, ``generated_at``) when the content did not change.
    """
    if previous is not None and previous.content == content:
        previous.version = version
        return previous
    etag = '"' + hashlib.blake2b(content, digest_size=12).hexdigest() + '"'
    body = content[:-1] + b',"generated_at":' + str(int(time.time() if now is None else now)).encode() + b"}"
    return Entry(version, etag, body, gzip.compress(body, compresslevel=1), content)


# A build that took longer than SLOW_BUILD_S (a large fleet, a busy hub) is not redone for a
# scope until REBUILD_FACTOR times its duration has passed (at most MAX_REUSE_S): with 1,000
# hosts reporting every 5 s the database changes 200 times a second, and rebuilding for every
# viewer's refresh took the CPU that ingest needed. After that, until MAX_STALE_S, the document
# is still answered at once while its successor is built in the background
# (stale-while-revalidate), so no viewer waits for a build of a busy fleet (0.4-0.9 s under the
# mixed load of scripts/prove.py); a document older than MAX_STALE_S is rebuilt before it is
# answered, and ``?fresh=1`` (the dashboard after an admin's change) never gets a reused one.
# Fleets of fewer than REUSE_MIN_SERVERS servers (counted as the cached server fragments, one
# per server and process visibility) stay exact whatever a build costs: a slow build there is
# a busy machine, and a reused document would only hide a change.
SLOW_BUILD_S = 0.05
REUSE_MIN_SERVERS = 100
REBUILD_FACTOR = 10
MAX_REUSE_S = 5.0
MAX_STALE_S = 15.0


class FleetCache:
    """Fleet documents per viewer scope, rebuilt once per change of ``monitor.db``.

    ``db_path``: monitor.db. ``bucket_s``: documents also expire when ``now // bucket_s``
    moves (offline/stale states follow the clock). Holds at most ``max_entries`` scopes.
    A slow build is reused for a while even after a change (see :data:`REBUILD_FACTOR`), then
    answered while its successor is built: the document answered is at most
    :data:`MAX_STALE_S` seconds old (a few seconds while viewers keep asking).
    """

    def __init__(self, db_path, bucket_s=10, max_entries=32, shelf=None):
        self.db_path = db_path
        self.shelf = shelf  # fleet_share.Shelf: documents the publisher process builds for every worker
        self.bucket_s = bucket_s
        self.max_entries = max_entries
        self.entries = OrderedDict()
        self._probe = None
        self._probe_lock = threading.Lock()
        self._locks = {}
        self.fragments = {}
        self.build_lock = threading.Lock()
        self.timing = {}  # scope key -> (monotonic time the last build finished, its duration s)
        self._background = set()  # revalidation tasks under way

    def fresh_enough(self, key, now=None):
        """True while scope ``key``'s last build was slow and recent enough to be served again."""
        built, cost = self.timing.get(key, (0.0, 0.0))
        now = time.monotonic() if now is None else now
        return (cost > SLOW_BUILD_S and len(self.fragments) >= REUSE_MIN_SERVERS
                and now - built < min(MAX_REUSE_S, REBUILD_FACTOR * cost))

    def version(self, now=None):
        """``(PRAGMA data_version, clock bucket)``: changes when anyone commits or time moves on."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
            data_version = self._probe.execute("PRAGMA data_version").fetchone()[0]
        return (data_version, int((time.time() if now is None else now) // self.bucket_s))

    def build(self, conn, actor, idle_max_util, previous=None, version=None):
        """:func:`build_content` with this cache's fragments (one build at a time), encoded:
        an :class:`Entry` (``previous`` reused when nothing changed). Runs in a worker thread."""
        with self.build_lock:
            content = build_content(conn, actor, self.fragments, idle_max_util)
        return encode(content, previous, version)

    def stale_servable(self, key, now=None):
        """True while scope ``key``'s last build was slow and its document is younger than
        :data:`MAX_STALE_S`: it may be answered while a new one is built in the background."""
        built, cost = self.timing.get(key, (0.0, 0.0))
        now = time.monotonic() if now is None else now
        return cost > SLOW_BUILD_S and len(self.fragments) >= REUSE_MIN_SERVERS and now - built < MAX_STALE_S

    async def get(self, key, build_fn, fresh=False):
        """The :class:`Entry` for scope ``key``; ``await build_fn(previous, version)`` makes a new one.

        ``fresh``: the caller needs every change a person made so far (an admin's edit on
        /admin, a viewer's acknowledgement): no document of this worker's that the database moved
        past, and a shared one only when it was current after the last such change.
        With a ``shelf``, a large fleet's document comes from the publisher process while it
        is younger than :data:`MAX_STALE_S` (``server_monitor.serving.fleet_share``)."""
        if self.shelf is not None:
            shared = self.shelf.get(key)
            # ``fresh`` (a page's first load, a viewer's own change): a shared document is good
            # when it was current after the last change a person made (fleet_share.note_write).
            if (shared is not None and shared.servers >= REUSE_MIN_SERVERS
                    and time.time() - shared.checked < MAX_STALE_S
                    and (not fresh or shared.checked > self.shelf.written())):
                self.shelf.want(key)
                return shared.entry
        version = self.version()
        entry = self.entries.get(key)
        if entry is not None and not fresh and entry.version != version:
            if self.fresh_enough(key):
                return entry
            if self.stale_servable(key):
                self._revalidate(key, build_fn)
                return entry
        if entry is not None and entry.version == version:
            return entry
        return await self._build(key, build_fn, fresh)

    def _revalidate(self, key, build_fn):
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():  # a build for this scope is under way
            return
        task = asyncio.get_running_loop().create_task(self._build(key, build_fn, False))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task):
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("building the fleet document failed", exc_info=task.exception())

    async def _build(self, key, build_fn, fresh):
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self.entries.get(key)
            version = self.version()
            if entry is not None and (entry.version == version or (not fresh and self.fresh_enough(key))):
                return entry
            started = time.monotonic()
            entry = await build_fn(entry, version)
            self.timing[key] = (time.monotonic(), time.monotonic() - started)
            if self.shelf is not None and self.fresh_enough(key):  # slow on a large fleet: build it once for all
                self.shelf.want(key)
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_entries:
                old, _ = self.entries.popitem(last=False)
                self._locks.pop(old, None)
                self.timing.pop(old, None)
            return entry
