"""Background maintenance of ``monitor.db``: tiered roll-ups, retention, WAL checkpoints.

Tiers (defaults, configurable in ``data.*``):

* raw ``host_samples`` / ``gpu_samples`` / ``disk_samples`` / ``temperature_samples`` / ``gpu_processes``:
  ``retention_days`` (7);
* 5-minute ``*_5m`` (samples, and per column avg, max or min as ``schema.HOST_ROLLUP``,
  ``schema.GPU_ROLLUP``, ``schema.GPU_ROLLUP_DEPTH``, ``schema.DISK_ROLLUP`` (per mount point)
  and ``schema.TEMPERATURE_ROLLUP`` (per sensor chip) list): ``rollup_5m_days`` (90);
* hourly ``*_1h``: ``rollup_1h_days`` (730);
* ``xid_events`` (rare, and the record of a GPU's faults): as long as the hourly tier.

An hour is rolled up once it is complete plus :data:`LAG` seconds; ``maintenance_state``
holds the watermark ``rolled_until``. Hours that receive raw data later (spool replays,
marked in ``rollup_dirty`` by ingest) are recomputed from raw while raw still covers them;
a sample older than the published raw cutoff ``raw_deleted_before`` is merged into its
buckets by ingest itself (:func:`merge_late_sample`), since its hour's raw rows are gone.

Nothing here holds the write lock for long: aggregates are computed on a separate read
connection (WAL readers do not block ingest) and written, and old rows deleted, in
transactions of at most :attr:`Maintenance.batch` rows, with a short pause between them.
A first run after a long outage therefore catches up in many small steps.
"""

import fcntl
import logging
import os
import sqlite3
import threading
import time

from . import schema
from .instance import LockedWriter, WriterLock, open_lock_file

log = logging.getLogger("server_monitor.rollup")

LAG = 600  # seconds after an hour ends before it is rolled up
TIERS = (("5m", 300), ("1h", 3600))
SOURCES = (
    # raw table, key column(s), rolled-up columns
    ("host_samples", "server_id", schema.HOST_ROLLUP),
    ("gpu_samples", "gpu_id", schema.GPU_ROLLUP + schema.GPU_ROLLUP_DEPTH),
    ("disk_samples", "server_id, mountpoint", schema.DISK_ROLLUP),
    ("temperature_samples", "server_id, sensor", schema.TEMPERATURE_ROLLUP),
)
# Default for features.idle_max_util: a held GPU under this utilization.gpu (%) counts as idle.
IDLE_MAX_UTIL = 5


def _aggregate_sql(table, key, columns, bucket, source_tier=None):
    """SELECT aggregating ``table`` rows in ``[?, ?)`` into ``bucket``-second buckets."""
    exprs = []
    for col, aggs in columns:
        for agg in aggs:
            if source_tier is None:
                exprs.append(f"{agg}({col})")
            elif agg == "avg":
                exprs.append(f"sum({col}_avg * samples) / nullif(sum(CASE WHEN {col}_avg IS NOT NULL THEN samples END), 0)")
            else:
                exprs.append(f"{agg}({col}_{agg})")
    count = "count(*)" if source_tier is None else "sum(samples)"
    source = table if source_tier is None else f"{table}_{source_tier}"
    return (
        f"SELECT {key}, (ts / {bucket}) * {bucket} AS bucket, {count}, {', '.join(exprs)} "
        f"FROM {source} WHERE ts >= ? AND ts < ? GROUP BY {key}, bucket"
    )


# GPU-hours per hour and owner. Each report counts for the time to the host's next report,
# at most one interval (so an offline gap adds nothing; a report with no successor yet counts
# one interval until its successor arrives); a GPU shared by k owners (distinct user +
# container) gives each 1/k of that time. Computed in Python from indexed reads, so the cost
# is linear in the rows read (the former single CTE query joined two materialised CTEs in a
# nested loop: quadratic in the reports of the window).

# Owners of the GPUs in some reports: (server_id, ts, gpu_id, user, container, vram MiB,
# utilization.gpu of that GPU in that report). {where} selects the gpu_processes rows.
OWNERS_SQL = """
SELECT p.server_id, p.ts, p.gpu_id, coalesce(p.user, '') AS user, coalesce(p.container, '') AS container,
    sum(coalesce(p.used_gpu_memory_mib, 0)), g.utilization_gpu
FROM gpu_processes p LEFT JOIN gpu_samples g ON g.gpu_id = p.gpu_id AND g.ts = p.ts
WHERE {where} AND p.gpu_id IS NOT NULL
GROUP BY p.server_id, p.ts, p.gpu_id, 4, 5
"""
NEXT_SQL = "SELECT min(ts) FROM host_samples WHERE server_id = ? AND ts > ?"
USAGE_COLUMNS = ("gpu_seconds", "vram_mib_seconds", "util_seconds", "util_known_seconds", "held_seconds",
                 "idle_seconds")


def _accumulate(totals, owners, durations, idle_max_util=IDLE_MAX_UTIL):
    """Add owner rows (from :data:`OWNERS_SQL`) to ``totals``, weighting each report by ``durations``.

    ``durations``: {(server_id, ts): seconds} (a negative value corrects an earlier
    provisional duration). ``totals``: {(hour, server_id, gpu_id, user, container): [6 sums]}
    in the order of :data:`USAGE_COLUMNS`; ``idle_seconds`` is the owner's GPU time (its 1/k
    share) while utilization.gpu was known and under ``idle_max_util`` %. Owner rows of reports not in ``durations`` are
    skipped (no host sample: the former query's inner join did the same).
    """
    by_report = {}
    for row in owners:
        by_report.setdefault((row[0], row[1]), []).append(row)
    for report, rows in by_report.items():
        dur = durations.get(report)
        if dur is None:
            continue
        shares = {}
        for row in rows:
            shares[row[2]] = shares.get(row[2], 0) + 1
        hour = report[1] // 3600 * 3600
        for server_id, _ts, gpu_id, user, container, vram, util in rows:
            acc = totals.setdefault((hour, server_id, gpu_id, user, container), [0.0] * 6)
            acc[0] += dur / shares[gpu_id]
            acc[1] += vram * dur
            if util is not None:
                acc[2] += util * dur
                acc[3] += dur
                if util < idle_max_util:
                    acc[5] += dur / shares[gpu_id]
            acc[4] += dur
    return totals


def usage_for_range(reader, start, end, idle_max_util=IDLE_MAX_UTIL):
    """GPU usage of the reports with ``start <= ts < end`` (epoch s), from raw rows.

    Returns ``(totals, provisional)``: totals as in :func:`_accumulate`; provisional maps
    the reports that have no successor yet ((server_id, ts)) to the duration they were
    counted with (their server's ``interval_s``). One indexed range read per server
    (host_samples primary key, gpu_processes (server_id, ts)): linear in the window's rows.
    """
    totals, provisional = {}, {}
    servers = reader.execute("SELECT id, interval_s FROM servers").fetchall()
    for server_id, interval in servers:
        times = [ts for (ts,) in reader.execute(
            "SELECT ts FROM host_samples WHERE server_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (server_id, start, end + 3600))]
        durations = {}
        for i, ts in enumerate(times):
            if ts >= end:
                break
            if i + 1 < len(times):
                durations[(server_id, ts)] = min(times[i + 1] - ts, interval)
            else:
                durations[(server_id, ts)] = interval
                provisional[(server_id, ts)] = interval
        if durations:
            owners = reader.execute(OWNERS_SQL.format(where="p.server_id = ? AND p.ts >= ? AND p.ts < ?"),
                                    (server_id, start, end))
            _accumulate(totals, owners, durations, idle_max_util)
    return totals, provisional


def _columns(columns):
    return [f"{col}_{agg}" for col, aggs in columns for agg in aggs]


def _merge_sql(table, key, columns):
    """UPSERT adding one raw sample (key, bucket ts, then one value per column) to a tier."""
    names = _columns(columns)
    values = []
    sets = ["samples = samples + 1"]
    for col, aggs in columns:
        for agg in aggs:
            name = f"{col}_{agg}"
            values.append(col)
            new = f"excluded.{name}"
            if agg == "avg":
                # Weighted by samples; a NULL on either side keeps the other.
                sets.append(f"{name} = CASE WHEN {new} IS NULL THEN {name} WHEN {name} IS NULL THEN {new} "
                            f"ELSE ({name} * samples + {new}) / (samples + 1) END")
            else:  # min or max; a NULL on either side keeps the other
                sets.append(f"{name} = {agg}(coalesce({name}, {new}), coalesce({new}, {name}))")
    keys = ", ".join("?" * len(key.split(",")))
    sql = (f"INSERT INTO {table} ({key}, ts, samples, {', '.join(names)}) "
           f"VALUES ({keys}, ?, 1, {', '.join('?' * len(names))}) "
           f"ON CONFLICT ({key}, ts) DO UPDATE SET {', '.join(sets)}")
    return sql, values


def merge_late_sample(conn, server_id, ts, host_row, gpu_rows, named_rows=None):
    """Add a sample older than the raw cutoff straight into the 5-minute and hourly tiers.

    Called by ingest inside its transaction when ``ts`` is before ``raw_deleted_before``
    (its hour's raw rows are gone, so a recompute from raw is no longer possible).
    ``host_row``: dict of host_samples columns; ``gpu_rows``: list of ``(gpu_id, dict)``;
    ``named_rows``: ``{"disk_samples": [(mountpoint, dict)], "temperature_samples": [(sensor, dict)]}``.
    """
    named_rows = named_rows or {}
    for table, key, columns in SOURCES:
        for tier, bucket in TIERS:
            sql, values = _merge_sql(f"{table}_{tier}", key, columns)
            bucket_ts = ts // bucket * bucket
            if table == "host_samples":
                conn.execute(sql, [server_id, bucket_ts] + [host_row.get(v) for v in values])
            elif table == "gpu_samples":
                if gpu_rows:
                    conn.executemany(sql, [[gpu_id, bucket_ts] + [row.get(v) for v in values]
                                           for gpu_id, row in gpu_rows])
            elif named_rows.get(table):
                conn.executemany(sql, [[server_id, name, bucket_ts] + [row.get(v) for v in values]
                                       for name, row in named_rows[table]])


ANALYSIS_LIMIT = 1000  # rows ANALYZE visits per index (PRAGMA analysis_limit): approximate, bounded cost
STATS_MAX_AGE = 3600  # seconds before statistics are gathered again
STATS_MIN_PAGES = 2000  # database pages (8 MiB at 4 KiB) before statistics are worth gathering
STATS_TABLES = ("servers", "gpus", "host_samples", "gpu_samples", "disk_samples", "gpu_processes")


def refresh_statistics(conn, now=None, force=False, min_pages=None):
    """Gather the query planner's statistics when missing or stale; otherwise ``PRAGMA optimize``.

    ``conn``: a writable connection (``schema.connect``). Statistics (``sqlite_stat1``) are
    gathered with ``ANALYZE`` under ``PRAGMA analysis_limit`` = :data:`ANALYSIS_LIMIT` (a
    bounded sample per index, so milliseconds even on a 30-day database) when ``force``, or,
    once the database has ``min_pages`` (default :data:`STATS_MIN_PAGES`) pages, when a table
    of :data:`STATS_TABLES` holding rows has none, when the last gathering
    (``maintenance_state.analyzed_at``, epoch s) is older than :data:`STATS_MAX_AGE`, or when
    the database file has doubled in pages since (``analyzed_pages``). Connections opened
    afterwards plan with them (SQLite reads statistics when a connection loads its schema;
    connections already open keep what they read, which is why the canned queries fix their
    join order where it matters). Returns ``"analyze"``, ``"optimize"`` or ``"skipped"`` (a database
    under ``min_pages``). Raises ``sqlite3.Error``.
    """
    now = time.time() if now is None else now
    min_pages = STATS_MIN_PAGES if min_pages is None else min_pages
    state = dict(conn.execute("SELECT name, value FROM maintenance_state WHERE name IN"
                              " ('analyzed_at', 'analyzed_pages')").fetchall())
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    has_stats = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone()
    analyzed = set()
    if has_stats:
        analyzed = {t for (t,) in conn.execute("SELECT DISTINCT tbl FROM sqlite_stat1")}
    missing = [t for t in STATS_TABLES if t not in analyzed
               and conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
    stale = (state.get("analyzed_at") or 0) < now - STATS_MAX_AGE or pages > 2 * (state.get("analyzed_pages") or 0)
    # Statistics of a nearly empty database (a fresh install) mislead more than none at all.
    if force or (pages >= min_pages and (missing or stale)):
        conn.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
        conn.execute("ANALYZE")
        conn.execute("INSERT OR REPLACE INTO maintenance_state (name, value) VALUES ('analyzed_at', ?),"
                     " ('analyzed_pages', ?)", (int(now), pages))
        return "analyze"
    if pages < min_pages:
        # Not even PRAGMA optimize: on a small database it would ANALYZE (misleading
        # statistics), and creating sqlite_stat1 changes the schema, which makes Datasette
        # re-read every table's schema under a lock that holds up every request meanwhile.
        return "skipped"
    conn.execute("PRAGMA optimize")
    return "optimize"


class Maintenance:
    """Runs roll-ups and retention on ``db_path``; :meth:`run_once` does one full pass.

    ``batch``: most rows written or deleted per transaction. ``pause``: seconds between
    transactions (lets ingest in). ``now``: clock (tests pass their own).
    """

    def __init__(self, db_path, retention_days=7, rollup_5m_days=90, rollup_1h_days=730,
                 batch=1000, pause=0.005, now=time.time, stats_min_pages=None, idle_max_util=IDLE_MAX_UTIL):
        self.db_path = db_path
        self.keep = {"raw": retention_days * 86400, "5m": rollup_5m_days * 86400, "1h": rollup_1h_days * 86400}
        self.batch = batch
        self.writer_lock = None
        self.pause = pause
        self.now = now
        self._usage_inc = None  # incremental GPU-usage state (see _current_usage)
        self.stats_min_pages = stats_min_pages
        self.idle_max_util = idle_max_util  # % utilization.gpu under which held time is idle

    @classmethod
    def from_config(cls, config):
        """Build from a hub :class:`~server_monitor.core.config.Config` (``data.*`` keys)."""
        return cls(config.db_path, retention_days=float(config.get("data.retention_days", 7)),
                   rollup_5m_days=float(config.get("data.rollup_5m_days", 90)),
                   rollup_1h_days=float(config.get("data.rollup_1h_days", 730)),
                   idle_max_util=float(config.get("features.idle_max_util", IDLE_MAX_UTIL)))

    # -- connections ----------------------------------------------------------------
    def _connect(self):
        writer = schema.connect(self.db_path, timeout=30, factory=LockedWriter)
        if self.writer_lock is None:
            self.writer_lock = WriterLock(self.db_path)
        writer.writer_lock = self.writer_lock  # its transactions queue with ingest's
        writer.execute("PRAGMA secure_delete=OFF")  # zeroing freed pages doubles delete I/O
        reader = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        return writer, reader

    def _write(self, writer, sql, rows):
        """executemany in transactions of at most ``batch`` rows."""
        for start in range(0, len(rows), self.batch):
            writer.execute("BEGIN IMMEDIATE")
            try:
                writer.executemany(sql, rows[start:start + self.batch])
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            time.sleep(self.pause)

    def _state(self, conn, name):
        row = conn.execute("SELECT value FROM maintenance_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _set_state(self, writer, name, value):
        writer.execute("INSERT OR REPLACE INTO maintenance_state (name, value) VALUES (?, ?)", (name, value))

    # -- roll-ups -------------------------------------------------------------------
    _UPSERT_USAGE = ("INSERT INTO gpu_usage_1h (hour, server_id, gpu_id, user, container, "
                     + ", ".join(USAGE_COLUMNS) + ") VALUES (?,?,?,?,?," + ",".join("?" * len(USAGE_COLUMNS)) + ")"
                     " ON CONFLICT (hour, gpu_id, user, container) DO UPDATE SET "
                     + ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COLUMNS))

    @staticmethod
    def _usage_rows(totals):
        return [key + tuple(values) for key, values in totals.items()]

    def _roll_usage(self, writer, reader, start, end):
        """(Re)compute ``gpu_usage_1h`` for the hours in ``[start, end)`` from raw rows.

        Returns ``(rows written, provisional)`` (see :func:`usage_for_range`).
        """
        totals, provisional = usage_for_range(reader, start, end, self.idle_max_util)
        rows = self._usage_rows(totals)
        self._replace_usage(writer, "hour >= ? AND hour < ?", (start, end), rows)
        return len(rows), provisional

    _INSERT_USAGE = ("INSERT OR REPLACE INTO gpu_usage_1h (hour, server_id, gpu_id, user, container, "
                     + ", ".join(USAGE_COLUMNS) + ") VALUES (?,?,?,?,?," + ",".join("?" * len(USAGE_COLUMNS)) + ")")

    def _replace_usage(self, writer, where, params, rows, epoch=None):
        """Replace the ``gpu_usage_1h`` rows matching ``where`` (an ``hour`` range) by ``rows``.

        GPU by GPU: each transaction deletes the old rows of a group of GPUs and inserts their
        new ones (at most about ``batch`` rows), so the write lock is held briefly and a reader
        never sees a GPU's hour empty, only each GPU's old or new figures. ``usage_epoch`` is
        set with the first group when ``epoch`` is given.
        """
        by_gpu = {}
        for row in rows:
            by_gpu.setdefault(row[2], []).append(row)
        gpus = sorted(set(by_gpu) | {g for (g,) in writer.execute(
            "SELECT DISTINCT gpu_id FROM gpu_usage_1h WHERE " + where, params)})
        groups, group, size = [], [], 0
        for gpu in gpus:
            group.append(gpu)
            size += len(by_gpu.get(gpu, ())) + 1
            if size >= self.batch:
                groups.append(group)
                group, size = [], 0
        if group or not groups:
            groups.append(group)
        for n, group in enumerate(groups):
            writer.execute("BEGIN IMMEDIATE")
            try:
                if group:
                    writer.execute(f"DELETE FROM gpu_usage_1h WHERE ({where}) AND gpu_id IN "
                                   f"({','.join('?' * len(group))})", tuple(params) + tuple(group))
                    writer.executemany(self._INSERT_USAGE, [r for g in group for r in by_gpu.get(g, ())])
                if epoch is not None and n == 0:
                    self._set_state(writer, "usage_epoch", epoch)
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            time.sleep(self.pause)

    def _current_usage(self, writer, reader, done, now):
        """Keep ``gpu_usage_1h`` of the hours not rolled up yet (``hour >= done``) current.

        Incremental: only the ``gpu_processes`` rows inserted since the last pass (``id``
        above the watermark this object keeps) are added, each report weighted by the time
        to its host's next report; a report without a successor yet counts one interval and
        is corrected by the difference once its successor arrives. The first pass of a
        process (or after another process recomputed these hours: ``usage_epoch`` in
        ``maintenance_state`` differs) recomputes the hours from raw. Hours are made exact
        again by the full recompute when they are rolled up (:meth:`rollup`), so reports
        delivered out of order only leave the current hours approximate until then.
        Returns rows written.
        """
        epoch = self._state(reader, "usage_epoch")
        inc = self._usage_inc
        reader.execute("BEGIN")  # one snapshot: the id watermark and the rows agree
        try:
            top = reader.execute("SELECT coalesce(max(id), 0) FROM gpu_processes").fetchone()[0]
            if inc is None or inc["epoch"] != epoch or inc["done"] > done:
                totals, provisional = usage_for_range(reader, done, int(now // 3600 * 3600) + 3600,
                                                      self.idle_max_util)
                full = True
            else:
                full = False
                totals, provisional = {}, {}
                # Reports counted with a provisional duration whose successor has arrived.
                corrections = {}
                for (server_id, ts), counted in inc["provisional"].items():
                    if ts < done:
                        continue  # its hour was recomputed from raw by rollup()
                    nxt = reader.execute(NEXT_SQL, (server_id, ts)).fetchone()[0]
                    if nxt is None:
                        provisional[(server_id, ts)] = counted
                    elif min(nxt - ts, counted) != counted:
                        corrections[(server_id, ts)] = min(nxt - ts, counted) - counted
                for (server_id, ts), delta in corrections.items():
                    owners = reader.execute(OWNERS_SQL.format(where="p.server_id = ? AND p.ts = ?"), (server_id, ts))
                    _accumulate(totals, owners, {(server_id, ts): delta}, self.idle_max_util)
                # Reports stored since the last pass.
                owners = reader.execute(OWNERS_SQL.format(where="p.id > ? AND p.id <= ? AND p.ts >= ?"),
                                        (inc["top"], top, done)).fetchall()
                intervals = dict(reader.execute("SELECT id, interval_s FROM servers"))
                durations = {}
                for server_id, ts, *_ in owners:
                    if (server_id, ts) in durations or server_id not in intervals:
                        continue
                    interval = intervals[server_id]
                    nxt = reader.execute(NEXT_SQL, (server_id, ts)).fetchone()[0]
                    if nxt is None:
                        durations[(server_id, ts)] = provisional[(server_id, ts)] = interval
                    else:
                        durations[(server_id, ts)] = min(nxt - ts, interval)
                _accumulate(totals, owners, durations, self.idle_max_util)
        finally:
            reader.execute("COMMIT")
        rows = self._usage_rows(totals)
        if full:
            epoch = time.time_ns()
            self._replace_usage(writer, "hour >= ?", (done,), rows, epoch=epoch)
        else:
            self._write(writer, self._UPSERT_USAGE, rows)
        self._usage_inc = {"epoch": epoch, "top": top, "done": done, "provisional": provisional}
        return len(rows)

    def _roll(self, writer, reader, start, end):
        """(Re)compute both tiers and GPU usage for ``[start, end)`` from raw rows."""
        written = self._roll_usage(writer, reader, start, end)[0]
        for table, key, columns in SOURCES:
            cols = ", ".join([key, "ts", "samples"] + _columns(columns))
            marks = ", ".join("?" * (len(key.split(",")) + 2 + len(_columns(columns))))
            for tier, bucket in TIERS:
                rows = reader.execute(_aggregate_sql(table, key, columns, bucket), (start, end)).fetchall()
                self._write(writer, f"INSERT OR REPLACE INTO {table}_{tier} ({cols}) VALUES ({marks})", rows)
                written += len(rows)
        return written

    def rollup(self, writer, reader):
        """Roll up every complete hour since the watermark, then the dirty hours.

        Dirty hours whose raw rows were (partly) deleted by an earlier pass (before the
        previous ``raw_deleted_before``) were merged into the roll-ups by ingest itself
        (``merge_late_sample``); the others still have all their raw rows and are
        recomputed from them. The new raw cutoff is published before retention deletes.
        """
        now = self.now()
        target = int((now - LAG) // 3600 * 3600)
        done = self._state(reader, "rolled_until")
        if done is None:
            first = reader.execute("SELECT min(ts) FROM host_samples").fetchone()[0]
            # Never before the oldest hour kept: a stray ancient timestamp must not make the first
            # pass walk millions of hours (see docs/security.md L3).
            oldest = int((now - self.keep["1h"]) // 3600 * 3600)
            done = target if first is None else max(oldest, int(first // 3600 * 3600))
        written = hours = 0
        first_hour = done
        # Retention runs after this in the same pass, so raw rows of every hour behind the
        # watermark are still there, however long the hub was down.
        while done < target:
            written += self._roll(writer, reader, done, done + 3600)
            hours += 1
            done += 3600
            self._set_state(writer, "rolled_until", done)
        previous_cutoff = self._state(reader, "raw_deleted_before") or 0
        cutoff = int(now - self.keep["raw"])
        if cutoff > previous_cutoff:
            self._set_state(writer, "raw_deleted_before", cutoff)
        dirty = [h for (h,) in reader.execute("SELECT hour FROM rollup_dirty WHERE hour < ? ORDER BY hour", (done,))]
        for hour in dirty:
            if hour + 3600 > previous_cutoff:
                written += self._roll(writer, reader, hour, hour + 3600)
            writer.execute("DELETE FROM rollup_dirty WHERE hour = ?", (hour,))
        # GPU-hours of the hours not rolled up yet are kept current too (accounting reads
        # only gpu_usage_1h, so it is at most one maintenance pass behind).
        if done < now:
            written += self._current_usage(writer, reader, done, now)
        # The per-user days of every hour gpu_usage_1h changed in: the hours rolled up, the dirty
        # ones and the current ones (usually today alone; yesterday too in the first hour of a day).
        days = set(range(int(min(first_hour, done) // 86400 * 86400), int(now) + 1, 86400))
        days.update(h // 86400 * 86400 for h in dirty)
        written += self._roll_user_days(writer, reader, sorted(days))
        return {"hours_rolled": hours, "dirty_hours": len(dirty), "rollup_rows": written}

    # Per user, UTC day, server and container, from gpu_usage_1h (the per-user page's table).
    _USER_DAY_SQL = (
        "SELECT user, ? AS day, server_id, container, sum(gpu_seconds), sum(idle_seconds), sum(vram_mib_seconds),"
        " sum(util_seconds), sum(util_known_seconds), count(DISTINCT gpu_id), min(hour), max(hour)"
        " FROM gpu_usage_1h WHERE hour >= ? AND hour < ? AND user <> '' GROUP BY user, server_id, container")
    _INSERT_USER_DAY = ("INSERT INTO gpu_usage_user_1d (user, day, server_id, container, gpu_seconds, idle_seconds,"
                        " vram_mib_seconds, util_seconds, util_known_seconds, gpus, first_hour, last_hour)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")

    def _roll_user_days(self, writer, reader, days):
        """Recompute ``gpu_usage_user_1d`` for each UTC day (epoch s of its midnight) in ``days``.

        The sums are read on the read connection (``gpu_usage_1h`` primary key range of the day:
        at 1,000 servers × 8 GPUs up to ~230,000 rows for a full day); each day's rows are then
        replaced user by user in transactions of at most about ``batch`` rows, so a reader sees
        each user's old or new day, never a user's day half written. Owners without a user name
        (``user`` '') are left out: the page is per user. Returns rows written.
        """
        written = 0
        for day in days:
            rows = reader.execute(self._USER_DAY_SQL, (day, day, day + 86400)).fetchall()
            by_user = {}
            for row in rows:
                by_user.setdefault(row[0], []).append(row)
            users = sorted(set(by_user) | {u for (u,) in reader.execute(
                "SELECT DISTINCT user FROM gpu_usage_user_1d WHERE day = ?", (day,))})
            group, size = [], 0
            for n, user in enumerate(users):
                group.append(user)
                size += len(by_user.get(user, ())) + 1
                if size < self.batch and n + 1 < len(users):
                    continue
                writer.execute("BEGIN IMMEDIATE")
                try:
                    writer.execute(f"DELETE FROM gpu_usage_user_1d WHERE day = ? AND user IN ({','.join('?' * len(group))})",
                                   [day] + group)
                    writer.executemany(self._INSERT_USER_DAY, [r for u in group for r in by_user.get(u, ())])
                    writer.execute("COMMIT")
                except BaseException:
                    writer.execute("ROLLBACK")
                    raise
                written += size - len(group)
                group, size = [], 0
                time.sleep(self.pause)
        return written

    # -- retention ------------------------------------------------------------------
    def _delete_before(self, writer, table, keys, cutoff, column="ts"):
        """Delete rows with ``column < cutoff`` in batches (via its index). Returns the count."""
        total = 0
        select = f"SELECT {keys} FROM {table} WHERE {column} < ? ORDER BY {column} LIMIT {int(self.batch)}"
        while True:
            writer.execute("BEGIN IMMEDIATE")
            try:
                cur = writer.execute(f"DELETE FROM {table} WHERE ({keys}) IN ({select})", (cutoff,))
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            total += cur.rowcount
            if cur.rowcount < self.batch:
                return total
            time.sleep(self.pause)

    def retention(self, writer, reader):
        now = self.now()
        m5, h1 = now - self.keep["5m"], now - self.keep["1h"]
        # Never past the cutoff published by rollup(): ingest merges older samples itself.
        raw = min(now - self.keep["raw"], self._state(reader, "raw_deleted_before") or 0)
        deleted = {
            "host_samples": self._delete_before(writer, "host_samples", "server_id, ts", raw),
            "gpu_samples": self._delete_before(writer, "gpu_samples", "gpu_id, ts", raw),
            "disk_samples": self._delete_before(writer, "disk_samples", "server_id, ts, mountpoint", raw),
            "temperature_samples": self._delete_before(writer, "temperature_samples", "server_id, ts, sensor", raw),
            "gpu_processes": self._delete_before(writer, "gpu_processes", "id", raw),
        }
        for table, key, _ in SOURCES:
            deleted[f"{table}_5m"] = self._delete_before(writer, f"{table}_5m", f"{key}, ts", m5)
            deleted[f"{table}_1h"] = self._delete_before(writer, f"{table}_1h", f"{key}, ts", h1)
        deleted["gpu_usage_user_1d"] = self._delete_before(writer, "gpu_usage_user_1d", "user, day, server_id, container",
                                                           h1, column="day")
        deleted["gpu_usage_1h"] = self._delete_before(writer, "gpu_usage_1h", "hour, gpu_id, user, container", h1,
                                                      column="hour")
        # XIDs are rare and are a GPU's fault history: kept as long as the longest tier.
        deleted["xid_events"] = self._delete_before(writer, "xid_events", "id", h1)
        return deleted

    def run_once(self):
        """One pass: roll-ups, retention, planner statistics, a passive WAL checkpoint. Returns stats."""
        writer, reader = self._connect()
        try:
            stats = self.rollup(writer, reader)
            stats["deleted"] = self.retention(writer, reader)
            stats["statistics"] = refresh_statistics(writer, self.now(), min_pages=self.stats_min_pages)
            stats["checkpoint"] = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return stats
        finally:
            writer.close()
            reader.close()


# A WAL longer than this many frames (64 MiB of 4 KiB pages: the size at which SQLite itself
# would checkpoint, schema.WAL_AUTOCHECKPOINT_PAGES) is brought back to its start (see
# CheckpointThread). SQLite restarts the WAL only when a writer begins while every frame is
# copied and no reader still reads from the WAL; analysts' scans run back to back (each up to
# sql.analyst_time_limit_ms) leave no such moment, and the 10-minute mixed run of
# python -m bench prove grew the WAL to 1.7 GB in 11 minutes.
RESTART_FRAMES = schema.WAL_AUTOCHECKPOINT_PAGES
# How long a restart may hold writers while the last readers move off the WAL (ms); when a
# reader takes longer the restart gives up at once and is tried again a second later.
RESTART_WAIT_MS = 100
# At most this many frames (4 MiB) are left for a restart to copy under the writer lock; with more
# left (a reader still holds an older snapshot) it tries again a second later.
RESTART_LAG_FRAMES = RESTART_FRAMES // 16
# How long a restart waits for the analysts' slots (s): past the analysts' time limit (2 s).
RESTART_SLOT_WAIT_S = 5.0


class CheckpointThread(threading.Thread):
    """Copies the WAL into ``monitor.db`` every ``interval`` seconds (``PRAGMA
    wal_checkpoint(PASSIVE)`` on a connection of its own), so that ingest's commits never do it.

    A passive checkpoint takes none of the writers' locks: reports keep being written while it
    copies and syncs, and the WAL stays a few MiB (writers restart it from the beginning once
    it is fully copied). When readers never leave the WAL (analysts' scans back to back) it
    grows instead; past :data:`RESTART_FRAMES` the thread holds the analysts' slots
    (``analyst_locks``: their lock files, so no new scan starts; the running one ends within
    its time limit), copies what that scan held back without blocking anyone, and only when
    that copied (nearly) everything takes the writer lock, copies the last frames and, with
    nothing left to copy, runs ``wal_checkpoint(RESTART)``, waiting at most
    :data:`RESTART_WAIT_MS` for readers to move off: the next writer starts the WAL from its
    beginning (``schema.connect`` trims the file to its ``journal_size_limit``). A long copy
    never happens under the writer lock (the first version did that: a 3 s ingest stall).
    Failures are logged and retried; the thread never ends by itself. ``last``: the last
    passive result ``(busy, WAL frames, frames copied)``; ``restarts``: WAL restarts done.
    """

    def __init__(self, db_path, interval=1.0, analyst_locks=()):
        super().__init__(name="wal-checkpoint", daemon=True)
        self.db_path = db_path
        self.interval = interval
        self.analyst_locks = list(analyst_locks)
        self.stopped = threading.Event()
        self.last = None
        self.restarts = 0
        self._writer_lock = None

    def run(self):
        conn = None
        while not self.stopped.wait(self.interval):
            try:
                if conn is None:
                    conn = schema.connect(self.db_path, timeout=1)
                self.last = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if self.last[1] > RESTART_FRAMES:
                    self.restart(conn)
            except (sqlite3.Error, OSError) as exc:  # a locked or replaced database: log, reconnect, retry
                log.warning("WAL checkpoint failed, will retry: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None

    def restart(self, conn):
        """Bring the WAL back to its start (see the class docstring); True when it was.
        Raises ``sqlite3.Error`` or ``OSError``."""
        held, busy = [], 1
        try:
            deadline = time.monotonic() + RESTART_SLOT_WAIT_S
            for path in self.analyst_locks:  # no new analyst scan; wait for the running one
                fd = open_lock_file(path)
                held.append(fd)
                while True:  # polled (analysts poll every 20 ms): never blocked for good, checkpoints go on
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            return False
                        time.sleep(0.005)
            # What the scans held back, copied without blocking anyone. When a reader still holds
            # an older snapshot (a long fleet-document build) not everything is copied: try again
            # later rather than copy it under the writer lock.
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames - copied > RESTART_LAG_FRAMES:
                return False
            if self._writer_lock is None:
                self._writer_lock = WriterLock(self.db_path)
            timeout_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
            with self._writer_lock:  # writers wait from here: copy the last few frames, then restart
                conn.execute("PRAGMA busy_timeout=0")
                try:
                    _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames == copied:  # nothing left to copy: RESTART only waits for readers to leave
                        conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                        busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
                finally:
                    conn.execute(f"PRAGMA busy_timeout={timeout_ms}")
        finally:
            for fd in held:
                os.close(fd)  # releases its flock
        if not busy:
            self.restarts += 1
        return not busy


class MaintenanceThread(threading.Thread):
    """Runs :meth:`Maintenance.run_once` every ``interval`` seconds, logging failures."""

    def __init__(self, maintenance, interval=60.0):
        super().__init__(name="maintenance", daemon=True)
        self.maintenance = maintenance
        self.interval = interval
        self.stopped = threading.Event()

    def run(self):
        delay = min(5.0, self.interval)  # first pass soon after start (catch up after downtime)
        while not self.stopped.wait(delay):
            delay = self.interval
            cpu = time.thread_time()
            try:
                stats = self.maintenance.run_once()
                if stats["hours_rolled"] or stats["dirty_hours"] or any(stats["deleted"].values()):
                    log.info("maintenance: %s", stats)
            except Exception:  # any failure: log it and retry next tick, never end the thread (see docs/security.md M3)
                log.exception("maintenance failed, will retry")
            self.account(time.thread_time() - cpu)

    def account(self, cpu_s):
        """Add one pass's CPU time (s, this thread: Python and SQLite) to ``maintenance_state``
        (``cpu_ms``, ``passes``), so its share of a core can be read off the database
        (``python -m bench prove`` does). Best effort: a locked database skips one pass's figure."""
        try:
            conn = schema.connect(self.maintenance.db_path, timeout=5)
            try:
                with conn:
                    for name, add in (("cpu_ms", round(cpu_s * 1000)), ("passes", 1)):
                        conn.execute("INSERT INTO maintenance_state (name, value) VALUES (?, ?) ON CONFLICT (name)"
                                     " DO UPDATE SET value = coalesce(value, 0) + excluded.value", (name, add))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning("maintenance: could not record its CPU time: %s", exc)
