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


def _hub_with(hub_config, request, **notifications):
    import yaml

    data = yaml.safe_load(open(hub_config.path))
    data["notifications"] = notifications
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    return request.getfixturevalue("hub_process")


def _idle_for(hub, hub_config, name, minutes, util=0):
    """Reports of ``name`` every minute for ``minutes`` up to now: GPU 0 holds 30 GB at ``util`` %."""
    import time

    from browser import push
    from reports import sample_report

    now = time.time()
    for i in range(minutes, -1, -1):
        report = sample_report(name, gpus=1, processes=1, sample_time=now - i * 60)
        report["gpus"][0].update({"utilization.gpu": util, "memory.used": 30000})
        for key in ("utilization.encoder", "utilization.decoder"):
            report["gpus"][0][key] = 0
        push(hub, hub_config, report)


def test_F11_idle_panel_lists_what_nudges_are_about_and_the_link_lands_below_the_header(browser, request,
                                                                                       hub_config):
    """Newcomer finding 11: with nudge_after_hours 0.25 a GPU idle for 30 min was nudged while
    the panel (its own 2 h window) stayed hidden, and its toolbar link did nothing. Now one
    threshold lists it in the panel and for the nudges, and on a phone the jump lands below the
    sticky header."""
    import sqlite3

    from playwright.sync_api import expect

    from server_monitor.core import config as config_mod
    from server_monitor.jobs import nudge

    hub = _hub_with(hub_config, request, nudge_after_hours=0.25, quiet_hours=None)
    _idle_for(hub, hub_config, "idle-node", 30)
    _idle_for(hub, hub_config, "busy-node", 5, util=80)
    config = config_mod.load(hub_config.path)
    conn = sqlite3.connect(hub_config.db_path)
    nudged_about = {r["server"] for r in nudge.idle_gpus(conn, config, config_mod.idle_hours(config))}
    assert nudged_about == {"idle-node"}
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub.base_url, hub_config.get("auth.username"), hub_config.password)
    expect(page.locator("#idle-body tr")).to_have_count(1)
    expect(page.locator("#idle-body")).to_contain_text("GPU 0")
    expect(page.locator("#idle-note")).to_contain_text("for 15 min or more")
    page.locator("a.legend-link[href='#idle']").click()
    page.wait_for_timeout(500)
    header = page.locator(".topbar").bounding_box()
    title = page.locator("#idle-title").bounding_box()
    assert title["y"] >= header["y"] + header["height"], (title, header)
    assert title["y"] < 800
    assert errors == []
    context.close()


def test_F11_F12_empty_idle_panel_still_answers_the_link_and_says_nudges_wait_for_quiet_hours(browser, request,
                                                                                              hub_config):
    """Newcomer findings 11 and 12: with no GPU held idle the panel was hidden and the link did
    nothing; inside quiet hours nudges were held back without a sign. Now the panel says there is
    none (and its rule), and it and /admin say "nudges held for quiet hours until HH:MM (hub time)"."""
    import time

    from playwright.sync_api import expect

    hour = time.localtime().tm_hour
    hub = _hub_with(hub_config, request, quiet_hours=[hour, (hour + 2) % 24])
    _idle_for(hub, hub_config, "busy-node", 3, util=80)
    page = browser.new_page()  # (the page fixture would start the hub before its config is written)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub.base_url, hub_config.get("auth.username"), hub_config.password)
    expect(page.locator("#grid")).to_contain_text("busy-node")
    page.locator("a.legend-link[href='#idle']").click()
    expect(page.locator("#idle")).to_be_visible()
    note = page.locator("#idle-note")
    expect(note).to_contain_text("No GPU held idle (1024 MiB or more at under 5 % utilization) for 2 h or more")
    until = f"{(hour + 2) % 24:02d}:00"
    expect(note).to_contain_text(f"nudges held for quiet hours until {until} (hub time)")
    assert page.locator("#idle-table").is_hidden()
    page.goto(hub.base_url + "/admin#contacts")
    expect(page.locator("#nudge-quiet")).to_contain_text(f"nudges held for quiet hours until {until} (hub time)")
    assert errors == []
    page.close()
