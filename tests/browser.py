"""Playwright driving Debian's chromium (``/usr/bin/chromium``) for the browser tests.

When chromium or Playwright is missing the tests are skipped with a loud reason, except
under ``CI=true`` where a missing browser is a failure (scripts/test.sh installs it).
"""

import os
import re
import shutil

import pytest

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


@pytest.fixture
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def login(page, base_url, username, password):
    page.goto(base_url + "/")
    assert re.search(r"/login", page.url)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/")
