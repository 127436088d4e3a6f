"""Playwright driving Debian's chromium (``/usr/bin/chromium``) for the browser tests.

When chromium or Playwright is missing the tests are skipped with a loud reason, except
under ``CI=true`` where a missing browser is a failure (scripts/test.sh installs it).
"""

import json
import os
import re
import shutil

import pytest
import urllib3

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser():
    """Skip (or, under CI, fail) when the browser stack is not available."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed"
    if problem is None and not chromium_path():
        problem = "Debian chromium is not installed (apt-get install chromium)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run under CI but {problem}")
        pytest.skip(f"BROWSER TESTS SKIPPED: {problem}")


def launch():
    """Generator: yields a Chromium (Playwright ``Browser``), closes it when resumed."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test file (each test opens its own context: cookies, storage and
    viewport are never shared); starting one per test cost the suite ~1 s of CPU per test.

    While it lives, Playwright's event loop runs in this thread and ``asyncio.run`` refuses to
    start: a file whose other tests use ``asyncio.run`` (Datasette's test client) overrides
    this with a per-test ``browser`` fixture built on :func:`launch`."""
    yield from launch()


def login(page, base_url, username, password):
    page.goto(base_url + "/")
    assert re.search(r"/login", page.url)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/")


def push(hub, config, report):
    """POST a report to the hub process with the agent token; it must be stored (201)."""
    response = urllib3.PoolManager(retries=False).request(
        "POST", hub.base_url + "/api/report", body=json.dumps(report).encode(),
        headers={"Authorization": "Bearer " + config.get("agent.token"), "Content-Type": "application/json"})
    assert response.status == 201, response.data


@pytest.fixture
def page(browser, hub_process):
    """A browser page; ``.dialogs`` and ``.console_errors`` collect what the page raised."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.dialogs, page.console_errors = [], []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    yield page
    context.close()
