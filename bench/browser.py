"""Browser benchmark: today's dashboard beside the ba1fb60 one, same fleet, same run.

    .venv/bin/python -m bench browser [--servers 200] [--processes 2000] [--users 40]
        [--old-rev ba1fb60] [--screenshots DIR]

Each dashboard runs on its own hub (``server-monitor serve`` of that revision, with its own
maintenance and alert threads) over its own database, grown through that revision's own
``store_report`` by ``bench/fleet_fixture.py`` (``--servers`` × 8 GPUs, ``--processes``
processes of ``--users`` users). The old revision is checked out with ``git worktree add``
into a temporary directory. Debian's chromium (Playwright, CDP) on a 1440×900 viewport,
logged in, measures:

* **visible**: navigation start → every GPU of the fleet is on screen in the page's own
  layout (new: one grid cell per GPU; old: the per-server GPU rows), from ``performance.now()``;
* **refresh**: the 30 s refresh after every server reported once more (all 200 re-grown, as in
  30 s of a real fleet): main-thread scripting (CDP ``ScriptDuration``) and layout + style
  (``LayoutDuration`` + ``RecalcStyleDuration``) from ``Performance.getMetrics``; and the same
  with nothing changed (new: a ``304``);
* **DOM nodes** (``Nodes``) and **JS heap** used after a forced garbage collection.

``--screenshots DIR`` also writes the new dashboard at 1440×900 (dark and light) and at
390 px (phone) for a look.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench import common
from bench.common import ROOT, free_port

PY = sys.executable
# The config module in the new layout (server_monitor/core/) or the flat one of older revisions.
CONFIG_MODULE = ("importlib.import_module('server_monitor.core.config' if importlib.util.find_spec("
                 "'server_monitor.core') else 'server_monitor.config')")


class Hub(common.Hub):
    """The shared hub (:class:`bench.common.Hub`) running the checkout at ``root`` (another
    revision, on ``PYTHONPATH`` so that the plugins import its ``server_monitor``, not the one
    installed editable in the virtualenv), its config made by that revision's own code."""

    ready_path = "/login"  # older revisions have no /-/health

    def __init__(self, root, work):  # not common.Hub.__init__: that would make the config with this checkout
        self.root, self.workdir = root, work
        self.env = dict(os.environ, PYTHONPATH=root)
        os.makedirs(work, exist_ok=True)
        self.config_path = os.path.join(work, "config.yaml")
        code = (f"import sys, importlib, importlib.util; c = {CONFIG_MODULE}; _, pw = c.create(sys.argv[1]);"
                " print(pw); print(c.load(sys.argv[1]).db_path)")
        out = subprocess.run([PY, "-c", code, self.config_path], cwd=root, check=True, capture_output=True, text=True,
                             env=self.env)
        self.password = out.stdout.split()[-2]
        import yaml

        with open(self.config_path) as fp:
            data = yaml.safe_load(fp)
        self.db_path = os.path.join(work, "monitor.db")
        data["data"]["path"], data["data"]["auth_path"] = self.db_path, os.path.join(work, "auth.db")
        with open(self.config_path, "w") as fp:
            yaml.safe_dump(data, fp)
        shutil.copy(os.path.join(ROOT, "bench", "fleet_fixture.py"), os.path.join(work, "fleet_fixture.py"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = self.log = None
        self.samples = []

    def grow(self, servers, processes, users, seed=1):
        """Write one report per host through this revision's store_report."""
        code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests', sys.argv[2]];"
                " import fleet_fixture as f;"
                " f.grow(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))")
        subprocess.run([PY, "-c", code, self.root, self.workdir, self.db_path, str(servers), str(processes), str(users),
                        str(seed)], cwd=self.root, check=True, env=self.env)


# Per page: how to tell that every GPU of the fleet is rendered.
READY = {
    "new": "document.querySelectorAll('#grid .cell').length >= {gpus}",
    "old": "document.querySelectorAll('#servers .gpu').length >= {gpus}",
}
# Checked on every animation frame; the first frame it holds is kept as the "visible" time.
WATCH = "() => { if ({ready}) { window.__visible = window.__visible || performance.now(); return true; } return false; }"


def metrics(cdp):
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def login(page, hub):
    page.goto(hub.url + "/login")
    page.fill("#username", "admin")
    page.fill("#password", hub.password)
    page.press("#password", "Enter")
    page.wait_for_url(hub.url + "/", timeout=120000)


def measure(browser, hub, kind, gpus, servers, processes, users, shots=None):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    login(page, hub)
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    ready = WATCH.replace("{ready}", READY[kind].replace("{gpus}", str(gpus)))
    page.goto(hub.url + "/")  # performance.now() counts from this navigation's start
    page.wait_for_function(ready, timeout=120000, polling="raf")
    visible_ms = page.evaluate("window.__visible")
    timing = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
        const api = performance.getEntriesByType('resource').filter((r) => /api\\/fleet|servers\\.json/.test(r.name));
        return [n.responseEnd, n.domContentLoadedEventEnd, api.length ? Math.max(...api.map((r) => r.responseEnd)) : null]; }""")
    time.sleep(1.0)

    def refresh_cost():
        before_update = page.evaluate("lastUpdate")
        m0 = metrics(cdp)
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        page.wait_for_function(f"() => lastUpdate !== {before_update}", timeout=120000)
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        time.sleep(0.3)
        m1 = metrics(cdp)
        return ((m1["ScriptDuration"] - m0["ScriptDuration"]) * 1000,
                (m1["LayoutDuration"] - m0["LayoutDuration"] + m1["RecalcStyleDuration"] - m0["RecalcStyleDuration"]) * 1000)

    unchanged = refresh_cost()
    hub.grow(servers, processes, users, seed=2)  # every server reports again, other holders and loads
    changed = refresh_cost()
    cdp.send("HeapProfiler.collectGarbage")
    m = metrics(cdp)
    result = {"visible_ms": visible_ms, "html_ms": timing[0], "dcl_ms": timing[1], "data_ms": timing[2],
              "refresh_changed": changed, "refresh_unchanged": unchanged,
              "nodes": int(m["Nodes"]), "heap_mb": m["JSHeapUsedSize"] / 2**20,
              "page_height": page.evaluate("document.documentElement.scrollHeight")}
    if shots:
        for theme in ("dark", "light"):
            page.evaluate(f"localStorage.setItem('sm-theme', '{theme}')")
            page.reload()
            page.wait_for_function(ready, timeout=120000)
            page.screenshot(path=os.path.join(shots, f"{kind}-1440-{theme}.png"))
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        tab = phone.new_page()
        login(tab, hub)
        tab.wait_for_function(ready, timeout=120000)
        tab.screenshot(path=os.path.join(shots, f"{kind}-390.png"))
        result["phone_overflow_px"] = tab.evaluate("document.documentElement.scrollWidth") - 390
        phone.close()
    context.close()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2000)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--old-rev", default="ba1fb60")
    parser.add_argument("--screenshots")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    work = args.workdir or tempfile.mkdtemp(prefix="sm-bench-browser-")
    old_tree = os.path.join(work, "old-tree")
    subprocess.run(["git", "worktree", "add", "--detach", old_tree, args.old_rev], cwd=ROOT, check=True,
                   capture_output=True)
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)
    hubs = {"new": Hub(ROOT, os.path.join(work, "new")), "old": Hub(old_tree, os.path.join(work, "old"))}
    results = {}
    try:
        for kind, hub in hubs.items():
            hub.grow(args.servers, args.processes, args.users)
            hub.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            for kind, hub in hubs.items():
                results[kind] = measure(browser, hub, kind, args.servers * 8 - 8 - 1, args.servers, args.processes,
                                        args.users, args.screenshots if kind == "new" else None)
            browser.close()
    finally:
        for hub in hubs.values():
            if getattr(hub, "proc", None):
                hub.stop()
        subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT, capture_output=True)
    new, old = results["new"], results["old"]
    print(f"{args.servers} servers × 8 GPUs, {args.processes} processes, {args.users} users; chromium 1440×900")
    print(f"{'':34}{'today':>12}{args.old_rev:>12}{'ratio':>8}")
    rows = [
        ("every GPU visible after navigation", "visible_ms", "ms", lambda r: r["visible_ms"]),
        ("refresh, data changed: scripting", "rc", "ms", lambda r: r["refresh_changed"][0]),
        ("refresh, data changed: layout+style", "rl", "ms", lambda r: r["refresh_changed"][1]),
        ("refresh, unchanged: scripting", "ru", "ms", lambda r: r["refresh_unchanged"][0]),
        ("DOM nodes", "nodes", "", lambda r: r["nodes"]),
        ("JS heap after GC", "heap", "MB", lambda r: r["heap_mb"]),
        ("page height", "h", "px", lambda r: r["page_height"]),
    ]
    for label, _, unit, get in rows:
        a, b = get(new), get(old)
        print(f"  {label:32}{a:10.1f}{unit:>2}{b:10.1f}{unit:>2}{(b / a if a else float('inf')):7.1f}×")
    print(f"  (today: HTML {new['html_ms']:.0f} ms, DOMContentLoaded {new['dcl_ms']:.0f} ms, /api/fleet received "
          f"{new['data_ms']:.0f} ms after navigation start)")
    if "phone_overflow_px" in new:
        print(f"  phone 390 px: horizontal overflow {new['phone_overflow_px']} px; screenshots in {args.screenshots}")
    return results


if __name__ == "__main__":
    main()
