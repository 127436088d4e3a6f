"""Reachability probes: named URLs checked in a background thread with short timeouts.

Configured in ``agent_config.yaml``::

    probes:
      - {name: domestic, url: "https://www.baidu.com"}
      - {name: international, url: "https://www.google.com", proxy: "http://proxy:3128", timeout: 5}

Each probe is a GET (no body read beyond the headers); the result is ``ok`` for any HTTP
answer below 500, with the latency to the first byte. Reports carry the latest results.
"""

import threading
import time

import urllib3


def check(url, timeout=5.0, proxy=None, pool=None):
    """One probe: ``{"ok", "latency_ms", "status", "error"}``. Never raises."""
    manager = pool or (urllib3.ProxyManager(proxy) if proxy else urllib3.PoolManager())
    start = time.monotonic()
    try:
        response = manager.request("GET", url, timeout=urllib3.Timeout(total=timeout), retries=False,
                                   preload_content=False, redirect=False)
        latency = (time.monotonic() - start) * 1000
        response.release_conn()
        return {"ok": response.status < 500, "latency_ms": round(latency, 1), "status": response.status, "error": None}
    except Exception as exc:  # any network failure is a probe result, not an agent error
        return {"ok": False, "latency_ms": None, "status": None, "error": f"{type(exc).__name__}: {exc}"[:500]}


def normalise(entries):
    """Validate the ``probes`` config list; returns list of dicts with name/url/proxy/timeout."""
    probes = []
    for i, entry in enumerate(entries or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ValueError(f"probes[{i}] needs a url")
        if not entry["url"].startswith(("http://", "https://")):
            raise ValueError(f"probes[{i}].url must be http:// or https://")
        probes.append({
            "name": str(entry.get("name") or entry["url"])[:64],
            "url": entry["url"][:1024],
            "proxy": entry.get("proxy"),
            "timeout": float(entry.get("timeout", 5)),
        })
    return probes[:32]


class Prober:
    """Runs every probe each ``interval`` seconds in a daemon thread."""

    def __init__(self, probes, interval=60.0):
        self.probes = probes
        self.interval = interval
        self._results = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._pools = {}

    def _pool(self, proxy):
        if proxy not in self._pools:
            self._pools[proxy] = urllib3.ProxyManager(proxy) if proxy else urllib3.PoolManager()
        return self._pools[proxy]

    def run_once(self):
        for probe in self.probes:
            result = check(probe["url"], probe["timeout"], probe["proxy"], self._pool(probe["proxy"]))
            result.update(name=probe["name"], url=probe["url"], checked_at=time.time())
            with self._lock:
                self._results[probe["name"]] = result

    def _loop(self):
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def start(self):
        if self.probes and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="probes", daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()

    def results(self):
        """Latest result of each probe (list of dicts), in config order."""
        with self._lock:
            return [dict(self._results[p["name"]]) for p in self.probes if p["name"] in self._results]
