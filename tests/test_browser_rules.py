"""Alert rules in /admin (issue 26 item 2) in a real Chromium against the real hub: an admin
creates a rule scoped to a host group and sees its dry run; the history page's outage markers
follow the agent's reporting interval."""

import time

import pytest
from browser import login, push
from reports import sample_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def hot(hostname, groups, temperature):
    report = sample_report(hostname, gpus=1, processes=0)
    report["groups"] = groups
    report["gpus"][0]["temperature.gpu"] = temperature
    return report


def test_item2_browser_admin_creates_a_group_rule_and_sees_its_dry_run(page, hub_process, hub_config):
    push(hub_process, hub_config, hot("rack1-a.lab", ["rack-1"], 84))
    push(hub_process, hub_config, hot("rack2-a.lab", ["rack-2"], 84))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin")
    page.click("text=Alert rules")
    page.wait_for_selector("#rule-form")
    assert "gpu_temperature" in page.inner_text("#builtin-table")  # config.yaml's rules, read-only
    page.fill("#rule-form input[name=name]", "Rack 1 warm")
    page.select_option("#rule-form select[name=kind]", "gpu_temperature")
    page.fill("#rule-form input[name=threshold]", "80")
    page.select_option("#rule-form select[name=severity]", "critical")
    page.check("#rule-form input[name=scope][value=group]")
    page.fill("#rule-form input[name=scope_group]", "rack-1")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules-table .rule-row")
    row = page.inner_text("#rules-table .rule-row")
    assert "Rack 1 warm" in row and "group rack-1" in row and "80 °C" in row and "enabled" in row
    page.click("#rules-table .rule-row button[value=test]")
    page.wait_for_selector("#dry-run")
    assert "1 alert would fire" in page.inner_text("#dry-run-count")
    results = page.inner_text("#dry-run table")
    assert "rack1-a.lab" in results and "rack2-a.lab" not in results and "84 °C" in results
    # A bad threshold: the page says which field, the rule list is unchanged.
    page.fill("#rule-form input[name=name]", "Broken")
    page.fill("#rule-form input[name=threshold]", "hot")
    page.click("#rule-form button[type=submit]")
    assert page.inner_text("#rule-error").startswith("threshold:")
    assert page.locator("#rules-table .rule-row").count() == 1
    assert [e for e in page.console_errors if "status of 400" not in e] == []  # the 400 is that answer


def test_item2_browser_history_has_no_outage_between_a_slow_agents_reports(page, hub_process, hub_config):
    now = time.time()
    for k in range(6, -1, -1):  # every 300 s for 30 min, as an agent with interval 300 reports
        report = sample_report("slow.lab", gpus=1, processes=0, sample_time=now - 300 * k)
        report["interval"] = 300
        push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/servers/1/history")
    page.wait_for_selector("#server-name:has-text('slow.lab')")
    page.wait_for_selector(".chart")  # alertList() ran before the charts were drawn
    # The alert/outage list shows an outage only when there is one: none for 300 s between reports.
    listed = page.locator("#alert-list")
    assert listed.is_hidden() or "no reports for" not in listed.inner_text(), listed.inner_text()
    assert page.console_errors == []
