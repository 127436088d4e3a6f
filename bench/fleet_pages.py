"""/admin and /free at fleet size (issue 24 items 3, 4): server time and browser load.

    .venv/bin/python -m bench fleet-pages [--servers 10000] [--processes 60000] [--users 400]
        [--db PATH] [--port 8200] [--runs 5] [--screenshots DIR]

Grows ``--servers`` × 8 GPUs through ``bench/fleet_fixture.py`` (contract-validated reports
written by ``store_report``, the ingest path without HTTP, topo -m included) into ``--db`` (kept
when it exists), starts the hub (``server-monitor serve``) on ``--port`` over it and measures,
logged in as the admin:

* **server**: wall time of the request (urllib3, session cookie) for ``/admin``,
  ``/admin?sq=…`` (a search), ``/admin/scope-options?q=…`` (the picker while typing) and
  ``/monitor/free_gpus.json`` (one page, count 1 and 4, first and a late page); median of ``--runs``;
* **browser** (Debian chromium, 1440×900): navigation start → DOMContentLoaded for /admin,
  and → the first page of hosts drawn for /free (``#free-count`` filled); DOM nodes and page
  height.

The fixture writes every report with the received time ``--ahead`` seconds (default 900) in
the future so that all hosts stay "online" (a host is stale 70 s after its last report) for
the whole measurement: at a real hub the agents keep reporting; /free offers online hosts only.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import urllib3

from bench import common, fleet_fixture
from bench.common import ROOT

HTTP = urllib3.PoolManager(retries=False)


def start_hub(config, port, log):
    proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", config, "--port", str(port)],
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if HTTP.request("GET", base + "/login", timeout=1).status == 200:
                return proc, base
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("hub did not start: " + open(log).read()[-2000:])


def serve(db, port):
    """A fresh hub config beside ``db`` (its ``data.path`` set to ``db``) and the hub started on it at
    ``port`` (logging to ``hub.log`` there); returns ``(process, base_url, config, admin password)``."""
    from server_monitor.core import config as config_mod

    directory = os.path.dirname(os.path.abspath(db))
    config_path = os.path.join(directory, "config.yaml")
    if os.path.exists(config_path):
        os.remove(config_path)
    cfg, password = config_mod.create(config_path)
    text = open(config_path).read().replace("path: monitor.db", f"path: {os.path.abspath(db)}", 1)
    open(config_path, "w").write(text)
    print(common.machine())
    proc, base = start_hub(config_path, port, os.path.join(directory, "hub.log"))
    return proc, base, cfg, password


def admin_cookie(base, cfg, password):
    """Log in as the config's admin through the form; returns the ``Cookie`` header value."""
    login = HTTP.request("GET", base + "/login")
    csrf = login.data.decode().split('name="csrftoken" value="')[1].split('"')[0]
    cookie = "; ".join(c.split(";")[0] for c in login.headers.getlist("set-cookie"))
    answer = HTTP.request("POST", base + "/login", fields={"username": cfg.get("auth.username"), "password": password,
                                                          "csrftoken": csrf}, encode_multipart=False,
                          headers={"Cookie": cookie}, redirect=False)
    return cookie + "; " + "; ".join(c.split(";")[0] for c in answer.headers.getlist("set-cookie"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench fleet-pages", description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=60000)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--db", default="/tmp/bench-fleet-pages/monitor.db")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ahead", type=float, default=900)
    parser.add_argument("--screenshots")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM_ARGS, chromium_path

    directory = os.path.dirname(os.path.abspath(args.db))
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(args.db):
        t0 = time.time()
        fleet_fixture.grow(args.db, args.servers, args.processes, args.users, now=time.time() + args.ahead)
        print(f"grew {args.servers} servers in {time.time() - t0:.0f} s")
    proc, base, cfg, password = serve(args.db, args.port)
    try:
        cookie = admin_cookie(base, cfg, password)
        paths = ["/admin", "/admin?sq=h200-99", "/admin?gq=dgx-h100-77&gp=2", "/admin/scope-options?q=a100-12",
                 "/admin/scope-options?q=dgx&all=1", "/monitor/free_gpus.json?_shape=array",
                 "/monitor/free_gpus.json?_shape=array&count=4", "/monitor/free_gpus.json?_shape=array&offset=5000",
                 "/monitor/free_gpus.json?_shape=array&count=8&model=H100"]
        print(f"{'path':58} server median (min–max), bytes")
        for path in paths:
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                response = HTTP.request("GET", base + path, headers={"Cookie": cookie})
                times.append(time.perf_counter() - t)
                assert response.status == 200, (path, response.status)
            print(f"{path:58} {statistics.median(times) * 1000:7.0f} ms ({min(times) * 1000:.0f}–{max(times) * 1000:.0f})"
                  f"  {len(response.data):,}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            for width, height, tag in ((1440, 900, "desk"), (390, 844, "phone")):
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.goto(base + "/login")
                page.fill("#username", cfg.get("auth.username"))
                page.fill("#password", password)
                page.click("input[type=submit]")
                page.wait_for_url(base + "/")
                for path, ready in (("/admin", None), ("/free", "#free-count:not(:empty)"),
                                    ("/free?count=4&page=3", "#free-count:not(:empty)")):
                    loads = []
                    for _ in range(args.runs):
                        page.goto(base + path, wait_until="domcontentloaded")
                        if ready:
                            page.wait_for_selector(ready)
                            loads.append(page.evaluate("performance.now()"))
                        else:
                            loads.append(page.evaluate("performance.timing.domContentLoadedEventEnd"
                                                       " - performance.timing.navigationStart"))
                    stats = page.evaluate("({nodes: document.getElementsByTagName('*').length,"
                                          " height: document.documentElement.scrollHeight,"
                                          " overflow: document.documentElement.scrollWidth > innerWidth})")
                    print(f"browser {tag} {path:24} {statistics.median(loads):6.0f} ms"
                          f" ({min(loads):.0f}–{max(loads):.0f}) {stats}")
                    if args.screenshots:
                        os.makedirs(args.screenshots, exist_ok=True)
                        name = path.strip("/").split("?")[0] + ("-p3" if "page=3" in path else "")
                        page.screenshot(path=os.path.join(args.screenshots, f"{name}-{tag}.png"))
                page.context.close()
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
