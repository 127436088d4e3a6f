"""Acknowledge and silence from the dashboard's problem strip stop notifications (real hub,
real Chromium, a webhook receiver on loopback)."""

import time

import pytest
import yaml
from browser import login, push
from reports import sample_report
from test_alerts import Receiver
from test_browser_pages import refresh_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def noisy_hub(hub_config, request):
    """The real hub evaluating alerts every second, reminding every 3 s, posting to a local receiver."""
    receiver = Receiver()
    data = yaml.safe_load(open(hub_config.path))
    data["alerts"] = {"interval_s": 1, "repeat_minutes": 0.05,
                      "webhooks": [{"url": receiver.url + "/hook", "format": "generic"}]}
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    hub = request.getfixturevalue("hub_process")
    hub.receiver = receiver
    yield hub
    receiver.server.shutdown()


def sent_for(receiver, server_id):
    return [b for b in receiver.of("/hook") if b["server_id"] == server_id]


def test_acknowledge_and_silence_stop_notifications(noisy_hub, page, hub_config):
    from playwright.sync_api import expect

    receiver = noisy_hub.receiver
    for name in ("broken-a", "broken-b", "broken-c"):
        report = sample_report(name, gpus=0, processes=0)
        report["gpu_status"] = {"state": "driver_mismatch", "lost": [], "stale": False,
                                "message": "Failed to initialize NVML: Driver/library version mismatch"}
        push(noisy_hub, hub_config, report)
    login(page, noisy_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    refresh_until(page, "doc && doc.problems.length === 3")
    deadline = time.time() + 20
    while not all(len(sent_for(receiver, s)) >= 2 for s in (1, 2, 3)):  # firing + a reminder each
        assert time.time() < deadline, receiver.received
        time.sleep(0.5)
    # Acknowledge broken-a with a note.
    row_a = page.locator("#problems li.problem", has_text="broken-a")
    row_a.locator("button[data-ack]").click()
    page.fill("#problems .note-input", "reboot at 18:00")
    page.click("#problems .problem-form button[type=submit]")
    expect(page.locator("#problems li.problem", has_text="broken-a")).to_contain_text(
        "acknowledged by " + hub_config.get("auth.username"))
    expect(page.locator("#problems li.problem", has_text="broken-a")).to_contain_text("reboot at 18:00")
    # Silence broken-b (this server, every rule) for an hour.
    row_b = page.locator("#problems li.problem", has_text="broken-b")
    row_b.locator("button[data-silence]").click()
    page.select_option("#problems .problem-form select[aria-label='What to silence']", "host")
    page.select_option("#problems .problem-form select[aria-label='For how long']", "60")
    page.click("#problems .problem-form button[type=submit]")
    expect(page.locator("#problems li.problem", has_text="broken-b")).to_contain_text("silenced until")
    assert "1 problem" not in page.inner_text("#problems .problems-title")
    expect(page.locator("#problems .problems-title")).to_contain_text("2 acknowledged or silenced")
    time.sleep(1.5)  # an evaluation already under way may still send one
    before = {s: len(sent_for(receiver, s)) for s in (1, 2, 3)}
    time.sleep(8)  # more than two reminder periods
    deadline = time.time() + 12  # a loaded machine may stretch the 1 s passes: wait for broken-c's reminders
    while len(sent_for(receiver, 3)) < before[3] + 2 and time.time() < deadline:
        time.sleep(0.5)
    after = {s: len(sent_for(receiver, s)) for s in (1, 2, 3)}
    assert after[1] == before[1] and after[2] == before[2], (before, after)
    assert after[3] >= before[3] + 2, (before, after)  # the engine kept reminding about the one left alone
    assert page.console_errors == [] and page.dialogs == []
    assert page.locator("#problems button[data-ack]").count() == 2  # broken-b (silenced only) and broken-c
