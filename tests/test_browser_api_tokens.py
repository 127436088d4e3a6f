"""API tokens on /account in a real Chromium against the real hub (issue 26 item 4): a user
creates a token, sees it once, a script reads with it, the user revokes it."""

import re

import pytest
import urllib3
from browser import login, push
from datasette_auth_passwords.utils import hash_password
from reports import sample_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "correct horse battery"


def test_item4_browser_user_creates_a_token_sees_it_once_and_revokes_it(page, hub_process, hub_config):
    from server_monitor.auth.accounts import Accounts

    report = sample_report("a-1.lab", gpus=2, processes=0, state="idle")
    report["groups"] = ["team-a"]
    push(hub_process, hub_config, report)
    other = sample_report("b-1.lab", gpus=2, processes=0, state="idle")
    other["groups"] = ["team-b"]
    push(hub_process, hub_config, other)
    Accounts(hub_config.auth_db_path).create_user("tina", hash_password(PASSWORD, iterations=1000), "viewer",
                                                  servers=[], groups=["team-a"])
    base = hub_process.base_url
    login(page, base, "tina", PASSWORD)
    page.goto(base + "/account")
    assert page.inner_text("#api-token-table tbody") == "No API tokens yet."
    page.fill("#token-name", "job launcher")
    page.select_option("#token-days", "30")
    page.click("#create-token button[type=submit]")
    page.wait_for_selector("#new-api-token")
    token = page.input_value("#new-token")
    assert re.fullmatch(r"smu_[A-Za-z0-9_-]{43}", token)
    row = page.inner_text("#api-token-table tbody tr")
    assert "job launcher" in row and "live" in row and "never" in row  # last used: never
    # A script reads with it, without cookies, within tina's scope.
    http = urllib3.PoolManager(retries=False)
    fleet = http.request("GET", base + "/api/fleet?fresh=1", headers={"Authorization": "Bearer " + token})
    assert fleet.status == 200 and [s["name"] for s in fleet.json()["servers"]] == ["a-1.lab"]
    # Shown once: a reload lists it without the token, with its last use now.
    page.goto(base + "/account")
    assert token not in page.content() and page.locator("#new-api-token").count() == 0
    assert "never" not in page.inner_text("#api-token-table tbody tr td:nth-child(6)")
    assert f"smu_{token[4:12]}" in page.inner_text("#api-token-table tbody tr")
    # Revoked in the browser: the script gets 401.
    page.click("#api-token-table button[value=revoke_token]")
    page.wait_for_selector("text=revoked; scripts using it get 401 now")
    assert http.request("GET", base + "/api/fleet", headers={"Authorization": "Bearer " + token}).status == 401
    assert page.console_errors == []
