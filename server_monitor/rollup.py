"""Background maintenance of ``monitor.db``: tiered roll-ups, retention, WAL checkpoints.

Tiers (defaults, configurable in ``data.*``):

* raw ``host_samples`` / ``gpu_samples`` / ``disk_samples`` / ``gpu_processes``:
  ``retention_days`` (7);
* 5-minute ``*_5m`` (samples, avg, max): ``rollup_5m_days`` (90);
* hourly ``*_1h``: ``rollup_1h_days`` (730).

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

import logging
import sqlite3
import threading
import time

from . import schema

log = logging.getLogger("server_monitor.rollup")

LAG = 600  # seconds after an hour ends before it is rolled up
TIERS = (("5m", 300), ("1h", 3600))
SOURCES = (
    # raw table, key column, rolled-up columns
    ("host_samples", "server_id", schema.HOST_ROLLUP),
    ("gpu_samples", "gpu_id", schema.GPU_ROLLUP),
)


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
                exprs.append(f"max({col}_max)")
    count = "count(*)" if source_tier is None else "sum(samples)"
    source = table if source_tier is None else f"{table}_{source_tier}"
    return (
        f"SELECT {key}, (ts / {bucket}) * {bucket} AS bucket, {count}, {', '.join(exprs)} "
        f"FROM {source} WHERE ts >= ? AND ts < ? GROUP BY {key}, bucket"
    )


# GPU-hours per hour and owner from raw rows in [?1, ?2). Each report counts for the time
# to the host's next report, at most one interval (so an offline gap adds nothing); a GPU
# shared by k owners (distinct user + container) gives each 1/k of that time.
USAGE_SQL = """
WITH h AS (
    SELECT hs.server_id, hs.ts,
        min(coalesce(lead(hs.ts) OVER (PARTITION BY hs.server_id ORDER BY hs.ts), hs.ts + s.interval_s) - hs.ts,
            s.interval_s) AS dur
    FROM host_samples hs JOIN servers s ON s.id = hs.server_id
    WHERE hs.ts >= ?1 AND hs.ts < ?2 + 3600
),
owners AS (
    SELECT server_id, ts, gpu_id, coalesce(user, '') AS user, coalesce(container, '') AS container,
        sum(coalesce(used_gpu_memory_mib, 0)) AS vram
    FROM gpu_processes
    WHERE ts >= ?1 AND ts < ?2 AND gpu_id IS NOT NULL
    GROUP BY server_id, ts, gpu_id, 4, 5
),
shares AS (
    SELECT o.*, count(*) OVER (PARTITION BY o.gpu_id, o.ts) AS k FROM owners o
)
SELECT (sh.ts / 3600) * 3600 AS hour, sh.server_id, sh.gpu_id, sh.user, sh.container,
    sum(h.dur * 1.0 / sh.k), sum(sh.vram * h.dur),
    sum(coalesce(g.utilization_gpu, 0) * h.dur), sum(CASE WHEN g.utilization_gpu IS NOT NULL THEN h.dur ELSE 0 END),
    sum(h.dur)
FROM shares sh
JOIN h ON h.server_id = sh.server_id AND h.ts = sh.ts
LEFT JOIN gpu_samples g ON g.gpu_id = sh.gpu_id AND g.ts = sh.ts
GROUP BY 1, 2, 3, 4, 5
"""


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
            else:
                sets.append(f"{name} = max(coalesce({name}, {new}), coalesce({new}, {name}))")
    sql = (f"INSERT INTO {table} ({key}, ts, samples, {', '.join(names)}) "
           f"VALUES (?, ?, 1, {', '.join('?' * len(names))}) "
           f"ON CONFLICT ({key}, ts) DO UPDATE SET {', '.join(sets)}")
    return sql, values


def merge_late_sample(conn, server_id, ts, host_row, gpu_rows):
    """Add a sample older than the raw cutoff straight into the 5-minute and hourly tiers.

    Called by ingest inside its transaction when ``ts`` is before ``raw_deleted_before``
    (its hour's raw rows are gone, so a recompute from raw is no longer possible).
    ``host_row``: dict of host_samples columns; ``gpu_rows``: list of ``(gpu_id, dict)``.
    """
    for table, key, columns in SOURCES:
        for tier, bucket in TIERS:
            sql, values = _merge_sql(f"{table}_{tier}", key, columns)
            bucket_ts = ts // bucket * bucket
            if table == "host_samples":
                conn.execute(sql, [server_id, bucket_ts] + [host_row.get(v) for v in values])
            elif gpu_rows:
                conn.executemany(sql, [[gpu_id, bucket_ts] + [row.get(v) for v in values] for gpu_id, row in gpu_rows])


class Maintenance:
    """Runs roll-ups and retention on ``db_path``; :meth:`run_once` does one full pass.

    ``batch``: most rows written or deleted per transaction. ``pause``: seconds between
    transactions (lets ingest in). ``now``: clock (tests pass their own).
    """

    def __init__(self, db_path, retention_days=7, rollup_5m_days=90, rollup_1h_days=730,
                 batch=5000, pause=0.005, now=time.time):
        self.db_path = db_path
        self.keep = {"raw": retention_days * 86400, "5m": rollup_5m_days * 86400, "1h": rollup_1h_days * 86400}
        self.batch = batch
        self.pause = pause
        self.now = now

    @classmethod
    def from_config(cls, config):
        """Build from a hub :class:`~server_monitor.config.Config` (``data.*`` keys)."""
        return cls(config.db_path, retention_days=float(config.get("data.retention_days", 7)),
                   rollup_5m_days=float(config.get("data.rollup_5m_days", 90)),
                   rollup_1h_days=float(config.get("data.rollup_1h_days", 730)))

    # -- connections ----------------------------------------------------------------
    def _connect(self):
        writer = schema.connect(self.db_path, timeout=30)
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
    def _roll_usage(self, writer, reader, start, end):
        """(Re)compute ``gpu_usage_1h`` for the hours in ``[start, end)`` from raw rows."""
        rows = reader.execute(USAGE_SQL, (start, end)).fetchall()
        writer.execute("BEGIN IMMEDIATE")
        try:
            writer.execute("DELETE FROM gpu_usage_1h WHERE hour >= ? AND hour < ?", (start, end))
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise
        self._write(writer, "INSERT OR REPLACE INTO gpu_usage_1h (hour, server_id, gpu_id, user, container,"
                            " gpu_seconds, vram_mib_seconds, util_seconds, util_known_seconds, held_seconds)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        return len(rows)

    def _roll(self, writer, reader, start, end):
        """(Re)compute both tiers and GPU usage for ``[start, end)`` from raw rows."""
        written = self._roll_usage(writer, reader, start, end)
        for table, key, columns in SOURCES:
            cols = ", ".join([key, "ts", "samples"] + _columns(columns))
            marks = ", ".join("?" * (3 + len(_columns(columns))))
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
            # pass walk millions of hours (L3).
            oldest = int((now - self.keep["1h"]) // 3600 * 3600)
            done = target if first is None else max(oldest, int(first // 3600 * 3600))
        written = hours = 0
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
            written += self._roll_usage(writer, reader, done, int(now // 3600 * 3600) + 3600)
        return {"hours_rolled": hours, "dirty_hours": len(dirty), "rollup_rows": written}

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
            "gpu_processes": self._delete_before(writer, "gpu_processes", "id", raw),
        }
        for table, key, _ in SOURCES:
            deleted[f"{table}_5m"] = self._delete_before(writer, f"{table}_5m", f"{key}, ts", m5)
            deleted[f"{table}_1h"] = self._delete_before(writer, f"{table}_1h", f"{key}, ts", h1)
        deleted["gpu_usage_1h"] = self._delete_before(writer, "gpu_usage_1h", "hour, gpu_id, user, container", h1,
                                                      column="hour")
        return deleted

    def run_once(self):
        """One pass: roll-ups, then retention, then a passive WAL checkpoint. Returns stats."""
        writer, reader = self._connect()
        try:
            stats = self.rollup(writer, reader)
            stats["deleted"] = self.retention(writer, reader)
            stats["checkpoint"] = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return stats
        finally:
            writer.close()
            reader.close()


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
            try:
                stats = self.maintenance.run_once()
                if stats["hours_rolled"] or stats["dirty_hours"] or any(stats["deleted"].values()):
                    log.info("maintenance: %s", stats)
            except Exception:  # any failure: log it and retry next tick, never end the thread (M3)
                log.exception("maintenance failed, will retry")
