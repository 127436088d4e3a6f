"""Newcomer findings of 2026-12-07 (F2, F11, F12, F13) in a real browser (Playwright + chromium)."""

import re

import pytest
from browser import login

pytestmark = [pytest.mark.browser]

UTC_TEXT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$")


def _users(hub_config):
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.auth import sso
    from server_monitor.auth.accounts import Accounts

    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("alice", sso.NO_PASSWORD, "viewer", servers=[], created_by="sso")
    accounts.create_user("erin", hash_password("erin-password-1", iterations=1000), "viewer", created_by="admin")
    return accounts


def test_F13_no_password_reset_for_sso_users_one_date_format_and_account_inputs_alike(page, hub_process, hub_config):
    """Newcomer finding 13: /admin offered "Reset password" for a user the sign-on proxy created
    (who has no password; a reset would open a way in around the proxy), /admin and /account
    wrote dates two ways, and /account's nudge inputs looked unlike the others."""
    from playwright.sync_api import expect

    _users(hub_config)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    # An API token for the admin: a date on /account and on /admin.
    page.goto(hub_process.base_url + "/account")
    page.fill("#token-name", "report")
    page.click("#create-token button[type=submit]")
    account_created = page.locator("#api-token-table tbody tr").first.locator("td").nth(3).inner_text()
    page.goto(hub_process.base_url + "/admin#users")
    alice = page.locator("#user-table tbody tr", has_text="alice")
    erin = page.locator("#user-table tbody tr", has_text="erin")
    assert alice.locator("button[value=reset]").count() == 0
    expect(alice).to_contain_text("signs in through the sign-on proxy")
    assert erin.locator("button[value=reset]").count() == 1
    # The server refuses it too (a crafted form).
    status = page.evaluate("""async () => {
        const body = new URLSearchParams({csrftoken: document.querySelector("input[name=csrftoken]").value,
                                          action: "reset"});
        return (await fetch("/admin/users/alice", {method: "POST", body})).status; }""")
    assert status == 400
    assert page.console_errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    page.console_errors.clear()
    # One date format: /admin's epoch cells (rendered by admin.js) and /account's token dates.
    cells = page.locator("td.epoch")
    texts = [cells.nth(i).inner_text() for i in range(cells.count())]
    assert texts and all(UTC_TEXT.match(t) for t in texts), texts
    assert UTC_TEXT.match(account_created) and account_created in texts
    # /account: the nudge inputs look like the password/token inputs.
    page.goto(hub_process.base_url + "/account")
    style = """(sel) => { const s = getComputedStyle(document.querySelector(sel));
        return [s.width, s.paddingLeft, s.backgroundColor, s.borderTopColor, s.fontSize]; }"""
    reference = page.evaluate(style, "#token-name")
    assert page.evaluate(style, "#contact-email") == reference
    assert page.evaluate(style, "#contact-url") == reference
    assert page.console_errors == []


def test_F2_admin_edit_form_shows_the_holders_saved_contact_and_keeps_it(page, hub_process, hub_config):
    """Newcomer finding 2 in the browser: erin saves her contact on /account; the admin's Edit
    shows it (the URL hidden), a URL-only change keeps her e-mail and digest."""
    from playwright.sync_api import expect

    from server_monitor.auth.contacts import NotifyStore

    _users(hub_config)
    login(page, hub_process.base_url, "erin", "erin-password-1")
    page.goto(hub_process.base_url + "/account")
    page.fill("#contact-email", "erin@example.org")
    page.fill("#contact-url", "ntfys://ntfy.sh/erin-s3cr3t")
    page.check("#contact-digest")
    page.click("#own-contact input[type=submit]")
    expect(page.locator("#contact-saved")).to_be_visible()
    page.context.clear_cookies()
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin#contacts")
    page.locator("#contact-table tbody tr", has_text="erin").locator("a", has_text="Edit").click()
    form = page.locator("#contact-form")
    expect(form.locator("input[name=email]")).to_have_value("erin@example.org")
    expect(form.locator("select[name=digest]")).to_have_value("on")
    assert "s3cr3t" not in page.content()
    form.locator("input[name=url]").fill("ntfys://ntfy.sh/erin-new")
    form.locator("button[type=submit]").click()
    expect(page.locator("#contact-form input[name=email]")).to_have_value("erin@example.org")
    stored = NotifyStore(hub_config.auth_db_path).contact("erin")
    assert (stored["email"], stored["url"], stored["digest"]) == ("erin@example.org", "ntfys://ntfy.sh/erin-new", 1)
    assert page.console_errors == []
