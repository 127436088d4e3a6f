"""History charts, admin delete and hostile agent strings, in a real Chromium."""

import re
import sqlite3
import time

import pytest
from browser import login, push
from reports import sample_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "javascript:alert(3)",
    "{{7*7}}${7*7}",
    "\"><svg onload=alert(4)>",
    "</td><iframe srcdoc='<script>alert(5)</script>'>",
]


def test_history_renders_points_for_each_range(page, hub_process, hub_config):
    now = time.time()
    for i in range(20):
        report = sample_report("hist-node", gpus=2, processes=0, sample_time=now - 3000 + i * 150)
        report["cpu"]["percent"] = float(i)
        push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.click("#grid .shead")
    page.click("#server-1 .server-links")
    page.wait_for_url("**/servers/1/history")
    from playwright.sync_api import expect

    expect(page.locator("#server-name")).to_have_text("hist-node")
    for label in ("1 h", "6 h", "24 h", "7 d", "30 d"):
        page.click(f"button.range:text-is('{label}')")
        expect(page.locator(f"button.range:text-is('{label}')")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#tier")).to_contain_text("points")
        points = int(re.search(r"(\d+) points", page.inner_text("#tier")).group(1))
        assert points > 0, label
        # holders, utilization heatmap, CPU, memory, network, disk use per mount point (issue 26
        # item 7; no host temperatures in these reports, so no chart for them) + 3 GPU line charts +
        # the thermal headroom (the GPU-depth charts with nothing to show are left out: no
        # throttling, ECC error, video engine use or PCIe downgrade in these reports)
        assert page.locator("figure.chart canvas").count() == 10
        assert page.locator("figure.disk-history canvas").count() == 1
        assert page.locator("figure.temperature-history").count() == 0
        assert page.locator("figure[data-series='temperature_gpu_tlimit_c_min'] canvas").count() == 1
    page.fill("#custom-hours", "2")
    page.click("#custom-apply")
    expect(page.locator("#tier")).to_contain_text("raw samples")
    assert "hours=2" in page.url
    # Crosshair: hovering a chart shows the values in its legend.
    cpu = page.locator("figure.chart", has=page.locator("figcaption", has_text="CPU"))
    box = cpu.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
    legend = cpu.locator(".u-legend").inner_text()
    assert "%" in legend
    assert page.console_errors == [] and page.dialogs == []


def test_admin_deletes_a_server(page, hub_process, hub_config):
    push(hub_process, hub_config, sample_report("doomed", gpus=1, processes=0))
    push(hub_process, hub_config, sample_report("keeper", gpus=1, processes=0))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .shead")
    page.locator("#grid .shead").first.click()
    button = page.locator("#server-1 button.danger")
    button.click()
    from playwright.sync_api import expect

    expect(button).to_have_text("Confirm delete of doomed")
    button.click()
    expect(page.locator("#server-1")).to_have_count(0)
    expect(page.locator("#grid")).not_to_contain_text("doomed")
    # The grid was just rebuilt: its rows (content-visibility: auto) have no innerText until their
    # first frame is laid out, so wait for the text, do not read it once.
    expect(page.locator("#grid")).to_contain_text("keeper")
    assert page.dialogs == []


def refresh_until(page, expression, seconds=20):
    """Trigger dashboard refreshes until the JavaScript ``expression`` is true."""
    deadline = time.time() + seconds
    while not page.evaluate(expression):
        assert time.time() < deadline, expression
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        time.sleep(0.5)


def test_hostile_agent_strings_show_as_text(fast_hub, page, hub_config):
    for n, payload in enumerate(XSS):
        report = sample_report(f"x{n}", gpus=1, processes=1)
        report["host"]["os"] = payload
        report["gpus"][0]["name"] = payload
        report["processes"][0].update(process_name=payload, user=payload, container=payload, container_kind=payload[:32])
        report["gpu_status"] = {"state": "error", "message": payload, "lost": [], "stale": False}
        report["containers"] = [{"name": payload, "project": payload, "kind": "lxc", "type": payload[:32],
                                 "state": payload[:32], "memory_bytes": 1, "disk_bytes": 1, "cpu_seconds": 1, "ipv4": payload}]
        report["probes"] = [{"name": payload, "url": payload, "ok": False, "latency_ms": None, "status": None,
                             "error": payload, "checked_at": time.time()}]
        push(fast_hub, hub_config, report)
        # Agents may only send RFC 1123-ish host names (L10); a name stored before that rule may
        # be anything, so the page must still show it as text.
        with sqlite3.connect(hub_config.db_path) as stored:
            stored.execute("UPDATE servers SET hostname = ? WHERE hostname = ?", (payload, f"x{n}"))
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.wait_for_selector("#grid .cell")
    assert page.locator("#grid .cell").count() == len(XSS)
    refresh_until(page, f"doc && doc.problems.length === {len(XSS)}")
    page.click("#problems-more")
    problems = page.inner_text("#problems")
    who = page.inner_text("#who")
    for n, payload in enumerate(XSS):
        assert payload in problems, payload  # the host name and nvidia-smi's message
        assert payload in who, payload  # the user, and the container chip
        cell = page.locator(f"#grid .srow[data-sid='{n + 1}'] .cell")
        assert payload in cell.get_attribute("aria-label") and payload in page.locator(
            f"#grid .srow[data-sid='{n + 1}'] .shead").get_attribute("title")
        cell.hover()
        tip = page.inner_text("#tip")
        assert tip.count(payload) >= 3, (payload, tip)  # server name, model, user, container, process
    # Every string reaches the page as text: no element from the corpus exists anywhere.
    assert page.evaluate("document.querySelectorAll('img, svg, iframe, script:not([src])').length") == 0
    # The admin's own note on an acknowledgement is text too.
    page.locator("#problems li.problem").first.locator("button[data-ack]").click()
    page.fill("#problems .note-input", XSS[1])
    page.click("#problems .problem-form button[type=submit]")
    from playwright.sync_api import expect

    expect(page.locator("#problems")).to_contain_text("acknowledged by " + hub_config.get("auth.username"))
    expect(page.locator("#problems")).to_contain_text(XSS[1])
    page.locator("#grid .shead").first.click()
    page.wait_for_selector("#detail article.server .gpu")
    page.click("#detail details.containers summary")
    detail = page.inner_text("#detail")
    assert XSS[0] in detail or any(p in detail for p in XSS)
    assert page.evaluate("document.querySelectorAll('img, svg, iframe, script:not([src])').length") == 0
    page.locator("#detail .server-links").click()
    page.wait_for_url("**/history")
    page.wait_for_selector("figure.chart")
    assert page.inner_text("#server-name") in XSS
    assert page.dialogs == []
    assert page.console_errors == []
    # And in Datasette's own pages (server-rendered, autoescaped).
    page.goto(fast_hub.base_url + "/monitor/servers")
    assert XSS[1] in page.inner_text("body")
    assert page.dialogs == []


@pytest.fixture
def fast_hub(hub_config, request):
    """The real hub with alerts and maintenance every second."""
    import yaml

    data = yaml.safe_load(open(hub_config.path))
    data["alerts"] = {"interval_s": 1}
    data["data"]["maintenance_interval_s"] = 1
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    return request.getfixturevalue("hub_process")


def test_free_gpus_accounting_and_alerts_pages(browser, fast_hub, hub_config):
    from playwright.sync_api import expect

    now = time.time()
    for i in range(120):  # an hour of alice on GPU 0 of "busy-node"; GPU 1 stays free
        report = sample_report("busy-node", gpus=2, processes=1, sample_time=now - 3600 + i * 30)
        report["processes"] = report["processes"][:1]
        report["gpus"][1]["utilization.gpu"] = 0
        report["gpus"][1]["memory.used"] = 0
        push(fast_hub, hub_config, report)
    broken = sample_report("sick-node", gpus=0, processes=0)
    broken["gpu_status"] = {"state": "driver_mismatch", "lost": [], "stale": False,
                            "message": "Failed to initialize NVML: Driver/library version mismatch"}
    push(fast_hub, hub_config, broken)
    tab = browser.new_page()
    login(tab, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    time.sleep(2.5)  # the alert job runs every second here; the dashboard refreshes on visibility
    tab.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(tab.locator("#problems")).to_contain_text("driver/library version mismatch", timeout=15000)
    tab.click("nav.main-nav a:text-is('Free GPUs')")
    expect(tab.locator("#free-table tbody")).to_contain_text("busy-node")
    expect(tab.locator("#free-table tbody")).to_contain_text("CUDA_VISIBLE_DEVICES=1")
    assert "free_gpus.json" in tab.inner_text("#one-liner")
    tab.click("nav.main-nav a:text-is('GPU-hours')")
    expect(tab.locator("#hours-table tbody")).to_contain_text("user0", timeout=15000)
    hours = float(tab.locator("#hours-table tbody tr").first.locator("td").nth(1).inner_text())
    assert 0.9 <= hours <= 1.05
    assert "gpu_hours.csv" in tab.get_attribute("#csv", "href")
    tab.close()


def new_api_token(page, base_url, name="job launcher"):
    """An API token made on /account in the browser (as a user would); returns it."""
    page.goto(base_url + "/account")
    page.fill("#token-name", name)
    page.click("#create-token button[type=submit]")
    return page.input_value("#new-token")


def test_F9_free_page_teaches_the_api_token_and_its_recipe_works(page, hub_process, hub_config, tmp_path):
    """Newcomer finding 9: /free's "From a script" box taught the cookie-jar + CSRF login. Now it
    teaches the API token (Authorization: Bearer, as docs/api.md): the page's own recipe and
    one-liner, run by bash with a token made on /account, print the free GPUs; the copy button works."""
    import shutil
    import subprocess

    from playwright.sync_api import expect

    report = sample_report("free-node", gpus=3, processes=1)
    report["processes"] = report["processes"][:1]  # GPU 0 busy; 1 and 2 free
    for g in report["gpus"][1:]:
        g["utilization.gpu"], g["memory.used"] = 0, 0
    push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    token = new_api_token(page, hub_process.base_url)
    page.goto(hub_process.base_url + "/free")
    row = page.locator("#free-table tbody tr").first
    expect(row).to_contain_text("2 free: 1,2")
    assert "CUDA_VISIBLE_DEVICES=" in row.locator("code.env").inner_text()
    row.locator("button.copy").click()
    expect(row.locator("button.copy")).to_have_text(re.compile("Copied|Selected"))
    assert row.locator("a").get_attribute("href") == "/#server-1"
    box = page.locator("main").inner_text()
    assert "cookies.txt" not in box and "csrftoken" not in box and "Authorization: Bearer" in box
    assert page.locator("a[href='/account#api-tokens']").count() == 1
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    # The page's recipe (token typed at its prompt) and one-liner, run by bash against this hub.
    script = page.inner_text("#token-howto") + "\n" + page.inner_text("#one-liner")
    assert hub_process.base_url + "/monitor/free_gpus.json?" in script
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         input=token + "\n")
    assert out.stdout.startswith("free-node CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="), (out.stdout, out.stderr)
    assert page.console_errors == []


def test_admin_edits_many_gpus_at_once_and_removes_a_lost_one(page, hub_process, hub_config):
    from playwright.sync_api import expect

    now = time.time()
    push(hub_process, hub_config, sample_report("rack-a", gpus=4, processes=0, sample_time=now - 60))
    fewer = sample_report("rack-a", gpus=4, processes=0, sample_time=now)
    fewer["gpus"].pop(3)
    push(hub_process, hub_config, fewer)
    push(hub_process, hub_config, sample_report("rack-b", gpus=2, processes=0))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin#gpus")
    rows = page.locator("#gpu-table tbody tr")
    assert rows.count() == 6  # the lost GPU is listed too
    page.fill("#gpu-filter", "rack-a")
    with page.expect_navigation():  # the search runs on the hub (issue 24 item 3: one page of GPUs)
        page.press("#gpu-filter", "Enter")
    expect(page.locator("#gpu-table tbody tr")).to_have_count(4)
    page.click("#gpu-select-shown")
    expect(page.locator("#gpu-selected")).to_have_text("4 selected")
    page.select_option("#gpu-bulk select[name=status]", "maintenance")
    page.fill("#gpu-bulk input[name=status_note]", "PSU swap")
    with page.expect_navigation():
        page.click("#gpu-bulk button[type=submit]")
    page.goto(hub_process.base_url + "/admin#gpus")
    statuses = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(rows.count())]
    assert statuses.count("maintenance") == 4 and statuses.count("active") == 2  # one Save, four GPUs
    assert page.locator("#gpu-table").inner_text().count("PSU swap") == 4
    expect(page.locator("#lost-gpus")).to_contain_text("rack-a · GPU 3")
    with page.expect_navigation():
        page.click("#lost-gpus button")
    page.goto(hub_process.base_url + "/admin#gpus")
    expect(page.locator("#lost-gpus")).to_contain_text("None.")
    fleet_requests = []
    page.on("request", lambda r: fleet_requests.append(r.url) if "/api/fleet" in r.url else None)
    page.goto(hub_process.base_url + "/")
    page.wait_for_selector("#grid .cell")
    # The page's first fetch never takes a reused document (a busy hub answers refreshes with one
    # up to fleet.MAX_STALE_S old): the change just made on /admin must show.
    assert fleet_requests[0].endswith("/api/fleet?fresh=1")
    assert page.locator("#grid .srow[data-sid='1'] .cell").count() == 3  # the removed GPU's cell is gone
    assert page.locator("#grid .srow[data-sid='1'] .cell.s-maint").count() == 3
    assert page.console_errors == []
