"""On-disk spool of reports the hub has not acknowledged yet.

One gzip JSON file per report, named ``<time_ns>-<report_id>.json.gz`` so that name order
is spool order, written to a temporary name and renamed (a crash never leaves half a
report). Bounded by total bytes and by age: the oldest reports are dropped first, and
every drop is counted in ``state.json`` so the hub can show that data was lost.
"""

import fcntl
import gzip
import json
import logging
import os
import time

log = logging.getLogger("server_monitor.agent.spool")
SUFFIX = ".json.gz"


class SpoolInUse(RuntimeError):
    """Another agent process already uses this spool directory."""


class Spool:
    """A directory of pending reports.

    ``max_bytes``: total size of spooled files (default 64 MiB). ``max_age_s``: reports
    spooled longer ago than this are dropped (default 7 days).
    """

    def __init__(self, directory, max_bytes=64 * 1024 * 1024, max_age_s=7 * 86400):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # One agent per spool: another's reports would be sent under this agent's token.
        self._lock = open(os.path.join(directory, "lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SpoolInUse(f"spool {directory} is in use by another agent; give each agent its own spool_dir")
        self._state_path = os.path.join(directory, "state.json")
        self.state = {"dropped": 0, "rejected": 0}
        try:
            with open(self._state_path, encoding="utf-8") as fp:
                self.state.update(json.load(fp))
        except (OSError, ValueError):
            pass
        self._clean_temporaries()

    def close(self):
        """Release the directory (another Spool may then open it)."""
        self._lock.close()

    def _clean_temporaries(self):
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError:
                    pass

    def _save_state(self):
        tmp = self._state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fp:
            json.dump(self.state, fp)
        os.replace(tmp, self._state_path)

    def count(self, key, n=1):
        """Add ``n`` to a persisted counter (``dropped``, ``rejected``)."""
        self.state[key] = self.state.get(key, 0) + n
        self._save_state()

    def files(self):
        """Spooled report files, oldest first: list of ``(path, size)``."""
        entries = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(SUFFIX):
                path = os.path.join(self.directory, name)
                try:
                    entries.append((path, os.path.getsize(path)))
                except OSError:
                    continue
        return entries

    def __len__(self):
        return len(self.files())

    def stats(self):
        """``{"spool_depth", "spool_bytes", "spool_dropped", "rejected"}`` for the report."""
        files = self.files()
        return {
            "spool_depth": len(files),
            "spool_bytes": sum(size for _, size in files),
            "spool_dropped": self.state.get("dropped", 0),
            "rejected": self.state.get("rejected", 0),
        }

    def append(self, report):
        """Store ``report`` at the end of the spool, then enforce the limits."""
        name = "%020d-%s%s" % (time.time_ns(), report["report_id"], SUFFIX)
        path = os.path.join(self.directory, name)
        data = gzip.compress(json.dumps(report, separators=(",", ":")).encode("utf-8"), compresslevel=6)
        with open(path + ".tmp", "wb") as fp:
            fp.write(data)
        os.replace(path + ".tmp", path)
        self.enforce_limits()

    def enforce_limits(self, now=None):
        """Drop the oldest reports beyond ``max_bytes`` or older than ``max_age_s``; returns drops."""
        now = time.time() if now is None else now
        files = self.files()
        total = sum(size for _, size in files)
        dropped = 0
        for path, size in files:
            too_big = total > self.max_bytes
            too_old = False
            if not too_big:
                try:
                    ns = int(os.path.basename(path).split("-", 1)[0])
                    too_old = now - ns / 1e9 > self.max_age_s
                except ValueError:
                    too_old = True
            if not (too_big or too_old):
                break
            self.remove([path])
            total -= size
            dropped += 1
        if dropped:
            log.warning("spool full or too old: dropped %d oldest report(s)", dropped)
            self.count("dropped", dropped)
        return dropped

    def load(self, path):
        """The report in ``path``, or None (file removed and counted) when unreadable."""
        try:
            with gzip.open(path, "rb") as fp:
                return json.loads(fp.read().decode("utf-8"))
        except (OSError, ValueError, EOFError):
            log.error("spooled report %s is unreadable; dropping it", path)
            self.remove([path])
            self.count("dropped")
            return None

    def remove(self, paths):
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
