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


def test_builtin_override_browser_admin_edits_a_builtin_rule(page, hub_process, hub_config):
    """The built-in gpu_temperature rule (config.yaml: 85 °C for 5 min) edited to 80 °C in the page:
    the row says what fires now, config's value beside it and who changed it; Test applies the
    override; a bad threshold names the field; Reset to config brings config.yaml's back."""
    now = time.time()
    for t in range(int(now) - 360, int(now) + 1, 60):  # 83 °C for 6 min: longer than the rule's 5 min
        report = hot("warm-a.lab", ["rack-1"], 83)
        report["sample_time"], report["sent_at"] = t, now  # (sent now: a spool replay)
        push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin/rules")
    row = "#builtin-gpu_temperature"
    assert "temperature.gpu ≥ 85 °C for 5 min" in page.inner_text(row)
    page.click(f"{row} >> text=Edit")
    page.wait_for_selector("#builtin-form")
    assert page.get_attribute("#builtin-form input[name=threshold]", "placeholder") == "config: 85"
    page.fill("#builtin-form input[name=threshold]", "80")
    page.select_option("#builtin-form select[name=severity]", "critical")
    page.click("#builtin-form button[type=submit]")
    page.wait_for_selector(f"{row}.builtin-row >> text=Reset to config")
    text = page.inner_text(row)
    assert "temperature.gpu ≥ 80 °C for 5 min" in text and "temperature.gpu ≥ 85 °C for 5 min" in text
    assert "critical" in text and f"by {hub_config.get('auth.username')}" in text
    page.click(f"{row} button[value=test]")
    page.wait_for_selector("#dry-run")
    assert "1 alert would fire" in page.inner_text("#dry-run-count")
    assert "warm-a.lab" in page.inner_text("#dry-run table") and "critical" in page.inner_text("#dry-run table")
    # A bad threshold: the page names the field and keeps the override as it was.
    page.click(f"{row} >> text=Edit")
    page.fill("#builtin-form input[name=threshold]", "hot")
    page.click("#builtin-form button[type=submit]")
    assert page.inner_text("#rule-error").startswith("threshold:")
    assert "temperature.gpu ≥ 80 °C" in page.inner_text(row)
    page.click(f"{row} button[value=reset]")
    page.wait_for_selector(f"{row} >> text=none (config.yaml)")
    assert "temperature.gpu ≥ 85 °C for 5 min" in page.inner_text(row) and "warning" in page.inner_text(row)
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


def test_F25_builtin_edit_error_marks_its_own_field(page, hub_process, hub_config):
    """Newcomer run 2, finding 5: threshold "nan" in the built-in gpu_temperature form: the red
    aria-invalid mark is on that form's Threshold field, not on the New rule form's."""
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin/rules?edit_builtin=gpu_temperature")
    page.fill("#builtin-form input[name=threshold]", "nan")
    page.click("#builtin-form button[type=submit]")
    assert page.inner_text("#rule-error") == "threshold: 'nan' is not a number"
    assert page.get_attribute("#builtin-form input[name=threshold]", "aria-invalid") == "true"
    assert page.input_value("#builtin-form input[name=threshold]") == "nan"  # the form keeps what was typed
    assert page.locator("#rule-form [aria-invalid]").count() == 0
    # And the other way round: an error of the New rule form marks only its own field.
    page.fill("#rule-form input[name=name]", "Broken")
    page.fill("#rule-form input[name=threshold]", "hot")
    page.click("#rule-form button[type=submit]")
    assert page.inner_text("#rule-error").startswith("threshold:")
    assert page.get_attribute("#rule-form input[name=threshold]", "aria-invalid") == "true"
    assert page.locator("#builtin-form").count() == 0
    assert [e for e in page.console_errors if "status of 400" not in e] == []  # the 400s are those answers


def test_F28_rules_page_fits_a_390_px_phone(browser, hub_process, hub_config):
    """Newcomer run 2, finding 8: /admin/rules at 390 px scrolled sideways (the "What" select of the
    New rule form was 558 px wide, the page 594 px): the page, a rule and the built-in edit form
    fit the phone's width."""
    push(hub_process, hub_config, hot("rack1-a.lab", ["rack-1"], 84))
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    width = "() => [document.documentElement.scrollWidth, document.body.scrollWidth]"
    page.goto(hub_process.base_url + "/admin/rules")
    assert max(page.evaluate(width)) <= 390, page.evaluate(width)
    page.fill("#rule-form input[name=name]", "Rack 1 warm, a rule name long enough to wrap on a phone")
    page.select_option("#rule-form select[name=kind]", "gpu_idle_held")
    page.fill("#rule-form input[name=threshold]", "5")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules-table .rule-row")
    assert max(page.evaluate(width)) <= 390, page.evaluate(width)
    page.goto(hub_process.base_url + "/admin/rules?edit_builtin=gpu_temperature")
    assert max(page.evaluate(width)) <= 390, page.evaluate(width)
    context.close()
