"""Issue 26 items 3 and 1 in a real Chromium against the real hub: the admin adds an Apprise
target on /admin and its "Send test" button reaches an HTTP sink on loopback; a user edits
their own contact on /account."""

import email
import re
import email.policy
import time

import pytest
import yaml
from browser import login, push
from test_alerts import Receiver, SmtpSink
from test_browser_answers import _held

from server_monitor.auth.accounts import Accounts
from server_monitor.auth.contacts import NotifyStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def sink_hub(hub_config, request):
    """The real hub with one user (erin), an HTTP sink and an SMTP sink (``alerts.smtp``) on loopback."""
    from datasette_auth_passwords.utils import hash_password

    receiver, sink = Receiver(), SmtpSink()
    data = yaml.safe_load(open(hub_config.path))
    data["notifications"] = {"timeout_s": 3, "quiet_hours": None}
    data["alerts"] = {"smtp": {"host": "127.0.0.1", "port": sink.port, "from": "monitor@example.org", "to": "admins@example.org"}}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    Accounts(hub_config.auth_db_path).create_user("erin", hash_password("erin-password-1", iterations=1000), "viewer")
    hub = request.getfixturevalue("hub_process")
    hub.receiver, hub.sink = receiver, sink
    yield hub
    receiver.server.shutdown()
    sink.sock.close()


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


def test_item1_idle_panel_says_who_was_nudged_when(sink_hub, page, hub_config):
    """A GPU held idle for 3 h: its holder (with a contact) is nudged by e-mail through the SMTP
    sink, and the dashboard's Idle holders panel names them and how long ago."""
    from playwright.sync_api import expect

    from server_monitor.core import config as config_mod
    from server_monitor.jobs import alerts, notify, nudge

    now = int(time.time())
    for t in range(now - 3 * 3600, now + 1, 600):
        push(sink_hub, hub_config, _held("idler", t, ["jchristensen", None]))
    NotifyStore(hub_config.auth_db_path).set_contact("jchristensen", "jc@example.org")
    # One nudge pass over the hub's own databases (the hub's thread runs the same every 5 min).
    config = config_mod.load(hub_config.path)
    cfg = alerts.settings(config)
    assert nudge.Nudger(config, cfg, notify.Notifier.from_config(config, cfg)).run_once()["nudged"] == ["jchristensen"]
    mail = email.message_from_string(sink_hub.sink.messages[0], policy=email.policy.default)
    assert mail["To"] == "jc@example.org" and mail["Subject"] == "[IDLE GPU] jchristensen: 1 GPU held idle on idler"
    login(page, sink_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    rows = page.locator("#idle-body tr")
    expect(rows).to_have_count(1)
    nudged = rows.first.locator("td.idle-nudged")
    expect(nudged).to_have_text(re.compile(r"^jchristensen · (\d+ s|\d+ min) ago$"))
    assert "last nudge" in nudged.get_attribute("title")
    assert page.console_errors == []


def test_item2_admin_edits_a_target_and_pages_and_searches_contacts(sink_hub, page, hub_config):
    """On /admin in Chromium: Edit opens the target's form with its name and severities and an empty
    URL field (the stored URL only as a shortened placeholder); saving renames it, keeps the URL
    ("Send test" still reaches the sink) and changes its severities. The contacts list shows 50 of
    60 with a Next link; the search finds one holder, linked to their page."""
    from playwright.sync_api import expect

    store = NotifyStore(hub_config.auth_db_path)
    store.add_target("lab-chat", f"json://127.0.0.1:{sink_hub.receiver.server.server_port}/lab-chat-s3cr3t", ["critical"])
    for n in range(60):
        store.set_contact(f"user{n:02d}", f"u{n}@example.org")
    login(page, sink_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(sink_hub.base_url + "/admin#notifications")
    page.locator("#notify-targets tr[data-target=lab-chat] a", has_text="Edit").click()
    form = page.locator("#notify-edit")
    expect(form.locator("input[name=new_name]")).to_have_value("lab-chat")
    expect(form.locator("input[name=url]")).to_have_value("")
    assert "s3cr3t" not in page.content()
    expect(form.locator("input[value=critical]")).to_be_checked()
    form.locator("input[name=new_name]").fill("gpu-chat")
    form.locator("input[value=warning]").check()
    form.locator("button[type=submit]").click()
    row = page.locator("#notify-targets tr[data-target=gpu-chat]")
    expect(row).to_contain_text("critical, warning")
    expect(page.locator("#notify-targets tr[data-target=lab-chat]")).to_have_count(0)
    row.locator("button", has_text="Send test").click()
    expect(page.locator("#notify-test-result")).to_contain_text("Test notice to gpu-chat delivered")
    assert len(sink_hub.receiver.of("/lab-chat-s3cr3t")) == 1
    # Contacts: 50 a page, a Next link, a search.
    page.goto(sink_hub.base_url + "/admin#contacts")
    expect(page.locator("#contact-table tbody tr")).to_have_count(50)
    expect(page.locator("#contacts nav.pager")).to_contain_text("1–50 of 60")
    page.locator("#contacts nav.pager a[rel=next]").click()
    expect(page.locator("#contact-table tbody tr")).to_have_count(10)
    page.fill("#contact-search", "u42@")
    page.locator("#contacts form.search-form button[type=submit]").click()
    expect(page.locator("#contact-table tbody tr")).to_have_count(1)
    expect(page.locator("#contact-table a.user-link")).to_have_attribute("href", "/users/user42")
    assert page.console_errors == [] and page.dialogs == []


def test_item3_holder_names_link_everywhere_and_item1_user_page_week_matches_digest(sink_hub, page, hub_config):
    """jchristensen holds GPU 0 idle (0 %) and GPU 1 busy (40 %) for 3 h; one pass nudges him and
    sends his digest. In Chromium his name links to /users/jchristensen in the idle panel (holder and
    Nudged columns), the who panel (the name itself; ◎ highlights his GPUs) and /admin's contacts;
    his page's "last 7 days" line shows the digest's GPU-hours and idle GPU-hours."""
    from playwright.sync_api import expect

    from server_monitor.core import config as config_mod
    from server_monitor.jobs import alerts, notify, nudge
    from server_monitor.storage.rollup import Maintenance

    now = int(time.time())
    for t in range(now - 3 * 3600, now + 1, 600):
        push(sink_hub, hub_config, _held("idler", t, ["jchristensen", "jchristensen"], util=[0, 40]))
    Maintenance(hub_config.db_path, pause=0).run_once()
    NotifyStore(hub_config.auth_db_path).set_contact("jchristensen", "jc@example.org", digest=True)
    config = config_mod.load(hub_config.path)
    config.data["notifications"].update(digest_weekday=time.localtime().tm_wday, digest_hour=0)
    cfg = alerts.settings(config)
    assert nudge.Nudger(config, cfg, notify.Notifier.from_config(config, cfg)).run_once() == {
        "nudged": ["jchristensen"], "digests": ["jchristensen"]}
    mails = [email.message_from_string(m, policy=email.policy.default) for m in sink_hub.sink.messages]
    digest = [m for m in mails if m["Subject"].startswith("[DIGEST]")][0].get_content()
    gpu_hours, idle_hours = re.search(r"GPU-hours[^:\n]*: ([\d.]+) \(idle GPU-hours: ([\d.]+)\)", digest).groups()
    assert float(idle_hours) > 0 and float(gpu_hours) > float(idle_hours)
    login(page, sink_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    href = "/users/jchristensen"
    expect(page.locator("#idle-body td.idle-user a.user-link")).to_have_attribute("href", href)
    nudged = page.locator("#idle-body td.idle-nudged a.user-link")
    expect(nudged).to_have_text("jchristensen")
    expect(nudged).to_have_attribute("href", href)
    name = page.locator("#who-body tr[data-user='jchristensen'] td.who-name a.user-link")
    expect(name).to_have_text("jchristensen")
    expect(name).to_have_attribute("href", href)
    page.click("#who-body button.who-user[data-user='jchristensen']")
    expect(page.locator("#grid .cell.hl")).to_have_count(2)
    page.goto(sink_hub.base_url + "/admin#contacts")
    expect(page.locator("#contact-table a.user-link", has_text="jchristensen")).to_have_attribute("href", href)
    page.goto(sink_hub.base_url + "/")
    page.locator("#idle-body td.idle-nudged a.user-link").click()
    page.wait_for_url(sink_hub.base_url + href)
    week = page.locator("#week-total")
    expect(week).to_contain_text(f"{gpu_hours} GPU-hours, {idle_hours} of them idle")
    assert (week.get_attribute("data-gpu-hours"), week.get_attribute("data-idle-gpu-hours")) == (gpu_hours, idle_hours)
    assert page.console_errors == [] and page.dialogs == []


def _tz_context(browser, zone):
    """A Chromium context whose clock is in the IANA zone ``zone`` (what Intl reports to the page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id=zone)
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    return context, page


def test_tz_account_prefills_the_browsers_zone_and_saves_it(sink_hub, browser, hub_config):
    """A browser in Asia/Shanghai opens /account with no zone stored: the field holds the browser's
    zone (Intl) and says so, nothing is stored until the user saves; after saving it is stored and
    shown, and the admin's contact list shows it."""
    from playwright.sync_api import expect

    context, page = _tz_context(browser, "Asia/Shanghai")
    login(page, sink_hub.base_url, "erin", "erin-password-1")
    page.goto(sink_hub.base_url + "/account")
    expect(page.locator("#contact-tz")).to_have_value("Asia/Shanghai")
    expect(page.locator("#contact-tz-note")).to_contain_text("Filled in from your browser (Asia/Shanghai)")
    assert NotifyStore(hub_config.auth_db_path).contact("erin") is None
    page.fill("#contact-email", "erin@example.org")
    page.click("#own-contact input[type=submit]")
    expect(page.locator("#contact-saved")).to_contain_text("Contact saved")
    expect(page.locator("#contact-tz")).to_have_value("Asia/Shanghai")
    expect(page.locator("#contact-tz-note")).to_be_hidden()
    assert NotifyStore(hub_config.auth_db_path).contact("erin")["tz"] == "Asia/Shanghai"
    assert page.console_errors == []
    context.close()
    # The admin, in another zone, sees it in the contacts list; a stored zone is never replaced
    # by the viewer's browser zone.
    context, page = _tz_context(browser, "Europe/Zurich")
    login(page, sink_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(sink_hub.base_url + "/admin?cedit=erin#contact-form")
    expect(page.locator("#contact-table tr", has_text="erin").locator("td.contact-tz")).to_have_text("Asia/Shanghai")
    expect(page.locator("#contact-form input[name=tz]")).to_have_value("Asia/Shanghai")
    assert page.console_errors == []
    context.close()


def test_tz_idle_panel_says_whose_clock_holds_a_nudge(hub_config, request, browser):
    """Quiet hours are the next two hours on Shanghai's clock: the Idle holders panel's row of a
    holder whose contact is in Asia/Shanghai says "held until HH:00 Asia/Shanghai"; a holder
    without a zone (hub time, outside quiet hours there) gets no such note."""
    import datetime
    import zoneinfo

    from playwright.sync_api import expect

    hour = datetime.datetime.now(zoneinfo.ZoneInfo("Asia/Shanghai")).hour
    hub_hour = time.localtime().tm_hour
    assert hub_hour not in (hour, (hour + 1) % 24), "the hub runs on a clock near Shanghai's: pick other zones"
    data = yaml.safe_load(open(hub_config.path))
    data["notifications"] = {"quiet_hours": [hour, (hour + 2) % 24]}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    hub = request.getfixturevalue("hub_process")
    now = int(time.time())
    for t in range(now - 3 * 3600, now + 1, 600):
        push(hub, hub_config, _held("idler", t, ["liwei", "jchristensen"]))
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("liwei", "liwei@example.org", tz="Asia/Shanghai")
    store.set_contact("jchristensen", "jc@example.org")
    context, page = _tz_context(browser, "Europe/Zurich")
    login(page, hub.base_url, hub_config.get("auth.username"), hub_config.password)
    rows = page.locator("#idle-body tr")
    expect(rows).to_have_count(2)
    held = f"held until {(hour + 2) % 24:02d}:00 Asia/Shanghai"
    expect(page.locator("#idle-body tr", has_text="liwei").locator("td.idle-nudged")).to_contain_text("liwei: " + held)
    expect(page.locator("#idle-body tr", has_text="jchristensen").locator("td.idle-nudged")).to_have_text("–")
    assert page.console_errors == []
    context.close()
