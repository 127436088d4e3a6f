"""New-user review items: login page in the product's theme, /accounting dates and CSV."""

import csv
import io
import re
import time

import pytest
from browser import login, push
from reports import sample_report
from test_browser_pages import fast_hub  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.parametrize("theme,background", [("dark", "rgb(15, 20, 25)"), ("light", "rgb(244, 246, 248)")])
def test_login_page_uses_the_chosen_theme_and_no_datasette_menu(browser, hub_process, theme, background):
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.add_init_script(f"localStorage.setItem('sm-theme', '{theme}')")
    page = context.new_page()
    page.goto(hub_process.base_url + "/")
    assert "/login" in page.url
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background
    assert page.locator("a[href='/-/login'], a[href^='/-/']").count() == 0
    assert "Datasette" not in page.inner_text("body")
    assert page.locator("#theme-toggle").count() == 1
    context.close()


def test_accounting_dates_are_iso_and_the_csv_has_utc_hours(fast_hub, page, hub_config):  # noqa: F811
    from playwright.sync_api import expect

    now = time.time()
    for i in range(60):
        push(fast_hub, hub_config, sample_report("acct-node", gpus=1, processes=1, sample_time=now - 1800 + i * 30))
    time.sleep(2.5)  # a maintenance pass every second on this hub
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(fast_hub.base_url + "/accounting")
    expect(page.locator("#hours-table tbody")).to_contain_text("user0")
    # Per-day chart: one bar per local day of the range, the owner named in the legend and the bar's label.
    expect(page.locator("#daily-bars .daily-bar")).to_have_count(8)  # 7 days back to today, both ends shown
    assert "user0" in page.inner_text("#daily-legend")
    labels = page.eval_on_selector_all("#daily-bars .daily-bar", "els => els.map((e) => e.getAttribute('aria-label'))")
    assert any(label.startswith(time.strftime("%Y-%m-%d")) and "user0" in label for label in labels), labels
    for field in ("#since", "#until"):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", page.input_value(field)), field
    assert re.search(r"From \d{4}-\d{2}-\d{2} to \d{4}-\d{2}-\d{2}", page.inner_text("#range-text"))
    assert "whole hours" not in page.inner_text("main")
    page.fill("#since", "12/01/2026")
    page.click("#custom")
    expect(page.locator("#load-error")).to_contain_text("YYYY-MM-DD")
    today = time.strftime("%Y-%m-%d")
    page.fill("#since", today)
    page.fill("#until", today)
    page.click("#custom")
    expect(page.locator("#range-text")).to_have_text(f"From {today}, grouped by user.")
    response = page.request.get(fast_hub.base_url + page.get_attribute("#csv", "href"))
    assert response.status == 200
    rows = list(csv.DictReader(io.StringIO(response.text())))
    assert rows and {"first_hour", "last_hour", "first_hour_utc", "last_hour_utc"} <= set(rows[0])
    row = rows[0]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:00:00Z", row["first_hour_utc"])
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(row["first_hour"]))) == row["first_hour_utc"]
    assert page.console_errors == [] and page.dialogs == []
