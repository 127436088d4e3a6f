"""Issue 26 items 3 and 1 in a real Chromium against the real hub: the admin adds an Apprise
target on /admin and its "Send test" button reaches an HTTP sink on loopback; a user edits
their own contact on /account."""

import pytest
import yaml
from browser import login
from test_alerts import Receiver

from server_monitor.auth.accounts import Accounts
from server_monitor.auth.contacts import NotifyStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def sink_hub(hub_config, request):
    """The real hub with one user (erin) and an HTTP sink on loopback."""
    from datasette_auth_passwords.utils import hash_password

    receiver = Receiver()
    data = yaml.safe_load(open(hub_config.path))
    data["notifications"] = {"timeout_s": 3}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    Accounts(hub_config.auth_db_path).create_user("erin", hash_password("erin-password-1", iterations=1000), "viewer")
    hub = request.getfixturevalue("hub_process")
    hub.receiver = receiver
    yield hub
    receiver.server.shutdown()


def test_item3_admin_adds_a_target_and_sends_a_test_from_admin(sink_hub, page, hub_config):
    from playwright.sync_api import expect

    login(page, sink_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(sink_hub.base_url + "/admin#notifications")
    form = page.locator("#notify-add")
    form.locator("input[name=name]").fill("lab-chat")
    form.locator("input[name=url]").fill(f"json://127.0.0.1:{sink_hub.receiver.server.server_port}/lab-chat")
    form.locator("input[value=critical]").check()
    form.locator("button[type=submit]").click()
    row = page.locator("#notify-targets tr[data-target=lab-chat]")
    expect(row).to_contain_text("critical")
    row.locator("button", has_text="Send test").click()
    expect(page.locator("#notify-test-result")).to_contain_text("Test notice to lab-chat delivered")
    assert [b["title"] for b in sink_hub.receiver.of("/lab-chat")] == [
        "[TEST] [info] Test notice from Server Monitor, sent by " + hub_config.get("auth.username") + " from /admin"]
    expect(page.locator("#notify-targets tr[data-target=lab-chat] td").nth(4)).to_contain_text(" UTC")  # last sent
    assert page.console_errors == [] and page.dialogs == []


def test_item1_user_edits_their_contact_on_account(sink_hub, page, hub_config):
    from playwright.sync_api import expect

    login(page, sink_hub.base_url, "erin", "erin-password-1")
    page.goto(sink_hub.base_url + "/account")
    page.fill("#contact-email", "erin@example.org")
    page.fill("#contact-url", "ntfys://ntfy.sh/erin-gpus")
    page.check("#contact-digest")
    page.click("#own-contact input[type=submit]")
    expect(page.locator("#contact-saved")).to_contain_text("Contact saved")
    expect(page.locator("#contact-email")).to_have_value("erin@example.org")
    expect(page.locator("#contact-digest")).to_be_checked()
    stored = NotifyStore(hub_config.auth_db_path).contact("erin")
    assert (stored["email"], stored["url"], stored["digest"]) == ("erin@example.org", "ntfys://ntfy.sh/erin-gpus", 1)
    assert "erin-gpus" not in page.content()  # the stored URL is never sent back
    assert page.console_errors == [] and page.dialogs == []
