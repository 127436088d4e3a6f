#!/usr/bin/env python3
"""Render the README's screenshots from the demo, in headless Debian chromium (Playwright).

Starts a throw-away demo hub (its own config and database in a temporary folder, a free
loopback port), feeds it with ``scripts/demo_feed.py`` (the demo fleet and its history
through ``POST /api/report``), lets the hub's own maintenance and alert jobs run, then
writes into ``docs/screenshots/`` (or ``--out``):

* ``fleet-dark.png``, ``fleet-light.png``: the fleet grid at 1440×900;
* ``phone.png``: the dashboard at 390×844 (phone width), dark;
* ``history.png``: a busy server's history page (holder timeline, heatmap), 1440 wide;
* ``free.png``: the free-GPU finder;
* ``disk-history.png``: that server's disk use per mount point and host temperatures (history page);
* ``user.png``: the per-user page of the user holding the most GPUs (GPUs now, GPU-hours per day, jobs);
* ``api-token.png``: `/account` right after creating an API token (shown once);
* ``notifications.png``: the Notifications section of ``/admin`` with a target added through its form;
* ``nudges.png``: ``/account``'s idle-GPU nudge and weekly digest contact (with the holder's time
  zone), saved through its form;
* ``rules.png``: ``/admin/rules`` with two rules made through its form and the dry run of one;
* ``builtin-rules.png``: its built-in rules (config.yaml) after overriding ``gpu_temperature``
  through the Edit form, with that form open again.

Usage: ``scripts/screenshots.py [--out DIR] [--hosts 25] [--hours 24] [--wait-offline]``.
``--wait-offline`` waits (about 3 minutes) until the demo's offline host is shown offline.
Needs the dev requirements (Playwright) and ``/usr/bin/chromium``; exits 1 with one line
when something is missing or the hub does not start.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


CHROMIUM_ARGS = [  # as tests/browser.py
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHOTS = ("fleet-dark.png", "fleet-light.png", "phone.png", "history.png", "free.png", "disk-history.png", "user.png",
         "api-token.png", "notifications.png", "nudges.png", "rules.png", "builtin-rules.png")

# The rules rules.png shows, made through /admin/rules' form as an admin would (field -> value).
DEMO_RULES = [
    {"name": "Idle GPUs (10 min)", "kind": "gpu_idle_held", "threshold": "5", "duration_minutes": "10",
     "severity": "info", "scope": "all", "targets": ""},
    {"name": "Hot H100s in cluster-a", "kind": "gpu_temperature", "threshold": "80", "duration_minutes": "5",
     "severity": "critical", "scope": "group", "scope_group": "cluster-a", "gpu_model": "H100",
     "targets": "oncall-ntfy"},
]

# The override builtin-rules.png shows (config.yaml's default: 85 °C for 5 min, warning).
BUILTIN_OVERRIDE = {"threshold": "88", "minutes": "3"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo_hub(folder, password, maintenance_s=5, alerts_s=5):
    """Create a config in ``folder`` and start ``server-monitor serve`` on a free port.

    Returns ``(process, base_url, config)``. Maintenance and alerts run every few seconds so
    roll-ups and problems appear quickly. Raises RuntimeError when the hub does not answer.
    """
    import urllib3
    import yaml

    from server_monitor.core import config as config_mod

    path = os.path.join(folder, "config.yaml")
    config_mod.create(path, password=password)
    with open(path) as fp:
        data = yaml.safe_load(fp)
    data["data"]["maintenance_interval_s"] = maintenance_s
    data["alerts"] = {"interval_s": alerts_s}
    with open(path, "w") as fp:
        yaml.safe_dump(data, fp)
    os.chmod(path, 0o600)
    cfg = config_mod.load(path)
    port = _free_port()
    log = open(os.path.join(folder, "hub.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", path, "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    http = urllib3.PoolManager(retries=False)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http.request("GET", base + "/login", timeout=1).status == 200:
                return proc, base, cfg
        except urllib3.exceptions.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError("the demo hub did not start; see " + os.path.join(folder, "hub.log"))


def stop(proc):
    """Stop a hub started by :func:`start_demo_hub`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def render(base_url, username, password, out, history_server=None, browser=None):
    """Log in at ``base_url`` and write :data:`SHOTS` into ``out``; returns their paths.

    ``history_server``: the server id whose history page is shot (default: the first in the
    fleet document with most GPUs). ``browser``: a Playwright Browser (else one is launched
    from ``/usr/bin/chromium``). Raises RuntimeError when a page logs a script error.
    """
    os.makedirs(out, exist_ok=True)
    if browser is not None:
        return _render(browser, base_url, username, password, out, history_server)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise RuntimeError("Debian chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            return _render(browser, base_url, username, password, out, history_server)
        finally:
            browser.close()


def _page(browser, base_url, username, password, width, height, theme, errors):
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    context.add_init_script(f"try {{ localStorage.setItem('sm-theme', '{theme}'); }} catch (e) {{}}")
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(base_url + "/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/")
    return context, page


def _settle(page):
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(600)  # a last paint after the data arrived


def _make_rule(page, rule):
    """Fill and submit /admin/rules' form with ``rule`` (field -> value); waits for the list."""
    form = "#rule-form"
    page.fill(f"{form} input[name=name]", rule["name"])
    page.select_option(f"{form} select[name=kind]", rule["kind"])
    page.select_option(f"{form} select[name=severity]", rule["severity"])
    page.check(f"{form} input[name=scope][value={rule['scope']}]")
    for field in ("threshold", "duration_minutes", "scope_group", "gpu_model", "targets"):
        if field in rule:
            page.fill(f"{form} input[name={field}]", rule[field])
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(f"#rules-table .rule-row:has-text('{rule['name']}')")


def _render(browser, base_url, username, password, out, history_server):
    errors, written = [], []

    def shot(page, name, full_page=False):
        path = os.path.join(out, name)
        page.screenshot(path=path, full_page=full_page)
        written.append(path)

    for theme in ("dark", "light"):
        context, page = _page(browser, base_url, username, password, 1440, 900, theme, errors)
        page.wait_for_selector("#grid .cell, #grid [role=gridcell], #grid > *")
        _settle(page)
        shot(page, f"fleet-{theme}.png")
        if theme == "dark":
            if history_server is None:
                history_server = page.evaluate("""async () => {
                    const r = await fetch('/monitor/servers.json?_shape=array', {credentials: 'same-origin'});
                    const rows = await r.json();
                    rows.sort((a, b) => (b.gpu_count || 0) - (a.gpu_count || 0) || a.server_id - b.server_id);
                    return rows.length ? rows[0].server_id : 1; }""")
            page.goto(f"{base_url}/servers/{history_server}/history?hours=24")
            page.wait_for_selector("figure.heatmap canvas")
            _settle(page)
            page.set_viewport_size({"width": 1440, "height": 1300})
            shot(page, "history.png")
            page.set_viewport_size({"width": 1440, "height": 900})
            # The disk and temperature charts just under the sticky header.
            page.evaluate("window.scrollTo(0, document.querySelector('figure.disk-history').getBoundingClientRect().top"
                          " + window.scrollY - document.querySelector('header').offsetHeight - 12)")
            page.wait_for_timeout(300)
            shot(page, "disk-history.png")
            page.goto(base_url + "/")
            page.wait_for_selector("#who-body a.who-page")
            page.locator("#who-body a.who-page").first.click()
            page.wait_for_selector("#user-daily .uplot canvas")
            _settle(page)
            shot(page, "user.png", full_page=True)
            page.goto(base_url + "/free")
            _settle(page)
            shot(page, "free.png")
            # /account after creating an API token: the token shown once (issue 26 item 4; this demo hub's token
            # dies with it).
            page.goto(base_url + "/account")
            page.fill("#token-name", "job launcher")
            page.click("#create-token button[type=submit]")
            page.wait_for_selector("#new-api-token")
            page.set_viewport_size({"width": 1100, "height": 900})
            shot(page, "api-token.png")
            page.set_viewport_size({"width": 1440, "height": 900})
            # /admin's Notifications: a target added through the form (nothing is sent).
            page.goto(base_url + "/admin#notifications")
            form = page.locator("#notify-add")
            form.locator("input[name=name]").fill("oncall-ntfy")
            form.locator("input[name=url]").fill("ntfys://ntfy.sh/lab-gpus-oncall")
            form.locator("input[value=critical]").check()
            form.locator("button[type=submit]").click()
            page.wait_for_selector("#notify-targets tr[data-target=oncall-ntfy]")
            _settle(page)
            path = os.path.join(out, "notifications.png")
            page.locator("#notifications").screenshot(path=path)
            written.append(path)
            # /admin/rules after the target above exists (a rule may name only known targets).
            page.goto(base_url + "/admin/rules")
            for rule in DEMO_RULES:
                _make_rule(page, rule)
            page.click("#rules-table .rule-row:has-text('Idle GPUs') button[value=test]")
            page.wait_for_selector("#dry-run")
            _settle(page)
            page.set_viewport_size({"width": 1440, "height": 1100})
            shot(page, "rules.png")
            # The built-in gpu_temperature rule overridden through its Edit form, then opened again.
            page.goto(base_url + "/admin/rules?edit_builtin=gpu_temperature#builtin-form")
            for field, value in BUILTIN_OVERRIDE.items():
                page.fill(f"#builtin-form input[name={field}]", value)
            page.select_option("#builtin-form select[name=severity]", "critical")
            page.click("#builtin-form button[type=submit]")
            page.wait_for_selector("#builtin-gpu_temperature >> text=Reset to config")
            page.goto(base_url + "/admin/rules?edit_builtin=gpu_temperature#builtin-form")
            _settle(page)
            path = os.path.join(out, "builtin-rules.png")
            page.locator("#builtin").screenshot(path=path)
            written.append(path)
            # /account: where idle-GPU nudges and the weekly digest go, saved through the form (nothing is sent).
            page.goto(base_url + "/account#contact")
            page.fill("#contact-email", "alice@example.org")
            page.fill("#contact-url", "ntfys://ntfy.sh/alice-gpus")
            page.check("#contact-digest")
            # The time zone field holds the browser's zone when none is stored; alice's is Zurich.
            page.fill("#contact-tz", "Europe/Zurich")
            page.click("#own-contact input[type=submit]")
            page.wait_for_selector("#contact-saved")
            page.set_viewport_size({"width": 1100, "height": 900})
            page.evaluate("window.scrollTo(0, document.getElementById('contact').getBoundingClientRect().top"
                          " + window.scrollY - document.querySelector('header').offsetHeight - 12)")
            _settle(page)
            shot(page, "nudges.png")
            page.set_viewport_size({"width": 1440, "height": 900})
        context.close()
    context, page = _page(browser, base_url, username, password, 390, 844, "dark", errors)
    page.wait_for_selector("#grid > *")
    _settle(page)
    shot(page, "phone.png")
    context.close()
    if errors:
        raise RuntimeError("a page logged errors: " + "; ".join(errors[:5]))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "screenshots"))
    parser.add_argument("--hosts", type=int, default=25)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--wait-offline", action="store_true", help="wait until the offline demo host shows offline")
    args = parser.parse_args(argv)
    password = "screenshots-" + os.urandom(6).hex()
    with tempfile.TemporaryDirectory(prefix="sm-screenshots-") as folder:
        try:
            proc, base, cfg = start_demo_hub(folder, password)
        except (RuntimeError, OSError) as exc:
            print(f"screenshots: {exc}", file=sys.stderr)
            return 1
        feeder = None
        try:
            log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
            # The real feeder, live: backfill first, then a report per host every interval.
            feeder = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "scripts", "demo_feed.py"), "--url", base,
                 "--token", cfg.get("agent.token"), "--hosts", str(args.hosts), "--hours", str(args.hours)],
                stderr=subprocess.PIPE, text=True)
            for line in feeder.stderr:
                log(line.rstrip())
                if "reports stored" in line:
                    break
            else:
                raise RuntimeError("the demo feeder stopped before the backfill was done")
            if args.wait_offline:
                log("waiting for the offline host to be marked offline (about 3 minutes)")
                time.sleep(200)
            time.sleep(12)  # a maintenance pass (roll-ups, GPU-hours) and an alert pass
            for path in render(base, cfg.get("auth.username"), password, args.out):
                log(f"wrote {os.path.relpath(path)}")
        except Exception as exc:  # one line for the operator
            print(f"screenshots: {exc}", file=sys.stderr)
            return 1
        finally:
            if feeder is not None and feeder.poll() is None:
                feeder.terminate()
                feeder.wait(timeout=15)
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
