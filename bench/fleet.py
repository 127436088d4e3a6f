"""The dashboard's data path: ``GET /api/fleet`` beside the per-table calls it replaced.

    .venv/bin/python -m bench fleet [--servers 1000] [--processes 10000] [--runs 30]

A hub (``server-monitor serve``, its own maintenance and alert threads running) on a fleet
grown through ``store_report`` (``bench/fleet_fixture.py``: ``--servers`` × 8 GPUs,
``--processes`` processes, 40 users). Measured over HTTP on loopback as the logged-in admin:

* ``/api/fleet`` when the data changed: one report is POSTed to ``/api/report`` before
  each fetch, so every fetch rebuilds the document (median and p95 ms, gzip bytes);
* ``/api/fleet`` unchanged: ``If-None-Match`` with the last ETag → ``304`` (median ms);
* the ``ba1fb60`` dashboard's refresh: its nine canned-query JSON calls, each in full.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from bench.common import HTTP, Hub, login, sample_report, timed
from bench.fleet_fixture import grow, host_name

OLD_QUERIES = ["servers", "gpus", "processes", "disks", "containers", "probes", "announcements", "alerts_active",
               "idle_holders"]


def run(servers=1000, processes=10000, runs=30, workdir=None):
    """Start a hub on a grown fleet and time the calls; returns a dict of figures."""
    work = workdir or tempfile.mkdtemp(prefix="sm-bench-fleet-")
    os.makedirs(work, exist_ok=True)
    hub = Hub(work)
    t0 = time.time()
    grow(hub.config.db_path, servers=servers, processes=processes, n_users=40)
    grown = time.time() - t0
    hub.start(workers=1)
    try:
        _, cookies = login(hub)
        token = hub.config.get("agent.token")
        gz = dict(cookies, **{"Accept-Encoding": "gzip"})
        changed, sizes, raw_sizes = [], [], []
        etag = None
        for i in range(runs + 1):
            report = sample_report(host_name(i % servers), gpus=8, processes=2, sample_time=time.time())
            post = HTTP.request("POST", hub.url + "/api/report", body=json.dumps(report).encode(),
                                headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            assert post.status in (200, 201), post.data[:200]
            response, body, ms = timed("GET", hub.url + "/api/fleet", headers=gz)
            assert response.status == 200 and response.headers.get("content-encoding") == "gzip"
            assert response.headers["etag"] != etag
            etag = response.headers["etag"]
            if i:  # the first one also warms the hub's caches
                changed.append(ms)
                sizes.append(len(body))
        import gzip as gzip_mod

        raw_sizes.append(len(gzip_mod.decompress(body)))
        unchanged = []
        for _ in range(runs * 3):
            response, body, ms = timed("GET", hub.url + "/api/fleet", headers=dict(gz, **{"If-None-Match": etag}))
            assert response.status == 304, response.status
            unchanged.append(ms)
        old = {}
        for name in OLD_QUERIES:
            times, size = [], 0
            for _ in range(max(3, runs // 6)):
                response, body, ms = timed("GET", f"{hub.url}/monitor/{name}.json?_shape=objects", headers=cookies)
                assert response.status == 200, (name, response.status)
                times.append(ms)
                size = len(body)
            old[name] = (statistics.median(times), size)
    finally:
        hub.stop()
    return {
        "servers": servers, "processes": processes, "grown_s": grown,
        "changed_ms": (statistics.median(changed), sorted(changed)[int(len(changed) * 0.95) - 1]),
        "wire_bytes": statistics.median(sizes), "json_bytes": raw_sizes[0],
        "not_modified_ms": (statistics.median(unchanged), sorted(unchanged)[int(len(unchanged) * 0.95) - 1]),
        "old": old,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    r = run(args.servers, args.processes, args.runs, args.workdir)
    print(f"fleet of {r['servers']} servers × 8 GPUs, {r['processes']} processes, 40 users "
          f"(grown through store_report in {r['grown_s']:.0f} s)")
    print(f"  GET /api/fleet, data changed:   median {r['changed_ms'][0]:6.1f} ms  p95 {r['changed_ms'][1]:6.1f} ms  "
          f"{r['wire_bytes'] / 1024:6.0f} KiB gzip on the wire ({r['json_bytes'] / 1024:.0f} KiB JSON)")
    print(f"  GET /api/fleet, 304 unchanged: median {r['not_modified_ms'][0]:6.1f} ms  p95 {r['not_modified_ms'][1]:6.1f} ms")
    total_ms = sum(ms for ms, _ in r["old"].values())
    total_b = sum(b for _, b in r["old"].values())
    print(f"  ba1fb60 dashboard refresh: {len(r['old'])} calls, {total_ms:.0f} ms summed, {total_b / 1024:.0f} KiB:")
    for name, (ms, size) in r["old"].items():
        print(f"    /monitor/{name}.json  {ms:7.1f} ms  {size / 1024:8.0f} KiB")
    print(f"  ratio: {total_ms / r['changed_ms'][0]:.0f}× less server time, {total_b / r['wire_bytes']:.0f}× fewer bytes")
    return r


if __name__ == "__main__":
    main()
