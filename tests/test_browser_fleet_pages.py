"""Issue 24 items 3 and 4 in a real Chromium: /admin search and scope by search (the scoped
viewer sees exactly the servers picked), /free paging with the search in the URL, and no
horizontal overflow at phone width (390 px, review §4 item 14)."""

import re

import pytest
from browser import login, push
from reports import sample_report
from test_fleet_pages import grow

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _no_overflow(page):
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_item3_admin_search_and_scope_by_search(browser, hub_process, hub_config):
    from playwright.sync_api import expect

    grow(hub_config.db_path, [f"rack{r}-node{i:02d}" for r in "abc" for i in range(40)], gpus=1)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin")
    assert page.locator("input[type=checkbox][name=servers]").count() == 0
    servers = page.locator("#server-table tbody tr")
    expect(servers).to_have_count(50)
    expect(page.locator("#servers .pager")).to_contain_text("1–50 of 120")
    # Server search, then the next page of the matches.
    page.fill("#server-search", "rackb")
    with page.expect_navigation():
        page.press("#server-search", "Enter")
    expect(servers).to_have_count(40)
    expect(servers.first).to_contain_text("rackb-node00")
    # The invite's scope, picked by typing: one server, then all of rack c's matching "rackc-node1".
    picker = page.locator("#invite-scope")
    picker.locator(".picker-search").fill("racka-node07")
    picker.locator(".picker-option", has_text="racka-node07").click()
    expect(picker.locator(".chip")).to_have_count(1)
    assert picker.locator("input[name=scope][value=some]").is_checked()
    picker.locator(".picker-search").fill("rackc-node1")
    expect(picker.locator(".picker-status")).to_contain_text("10 matches")
    picker.locator(".picker-all").click()
    expect(picker.locator(".chip")).to_have_count(11)
    expect(picker.locator(".chip-count")).to_have_text("11 chosen")
    picker.locator(".chip", has_text="rackc-node15").locator(".chip-remove").click()
    expect(picker.locator(".chip")).to_have_count(10)
    # Enter in the search box adds the first match and never submits the form.
    picker.locator(".picker-search").fill("rackb-node33")
    expect(picker.locator(".picker-option", has_text="rackb-node33")).to_be_visible()
    picker.locator(".picker-search").press("Enter")
    expect(picker.locator(".chip")).to_have_count(11)
    assert "/admin" in page.url and page.locator("#invite-link").count() == 0
    page.uncheck("#invite-scope input[name=see_processes]")
    with page.expect_navigation():
        page.click("#invites button[type=submit]")
    link = page.input_value("#invite-link")
    expect(page.locator("#invites table")).to_contain_text("11 servers: racka-node07, rackb-node33, rackc-node10 …")
    # The invited viewer sees exactly the eleven servers picked.
    guest = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    guest.goto(link)
    guest.fill("#username", "colleague1")
    guest.fill("#password", "a long enough password")
    guest.fill("#password2", "a long enough password")
    guest.click("input[type=submit]")
    guest.wait_for_url(re.compile(r".*/$"))
    rows = guest.evaluate("fetch('/monitor/servers.json?_shape=array').then(r => r.json())")
    expected = {"racka-node07", "rackb-node33"} | {f"rackc-node{i}" for i in range(10, 20) if i != 15}
    assert {r["name"] for r in rows} == expected
    guest.context.close()
    # The user list: search, and the scope editor shows the chosen servers as chips.
    page.goto(hub_process.base_url + "/admin?uq=colleague#users")
    expect(page.locator("#user-table tbody")).to_contain_text("11 servers: racka-node07, rackb-node33, rackc-node10 …")
    with page.expect_navigation():  # and its deferred scripts: the chips are there before them
        page.click("#user-table a:text('Edit role and scope')")
    expect(page.locator("#user-scope .chip")).to_have_count(11)
    page.locator("#user-scope .chips-clear").click()
    page.locator("#user-scope .picker-search").fill("racka-node01")
    page.locator("#user-scope .picker-option", has_text="racka-node01").click()
    with page.expect_navigation():
        page.click("#user-edit button[type=submit]")
    expect(page.locator("#user-table tbody")).to_contain_text("1 server: racka-node01")
    assert errors == []
    context.close()


def test_item3_text_typed_before_the_pickers_script_ran_is_searched(browser, hub_process, hub_config):
    """A fresh-clone run typed into the scope picker before ``admin.js`` (deferred) had attached
    it: the input event went nowhere and no match ever showed. Text already in the box (typed
    while the page loads, or put back by the browser on Back) is now searched when it attaches."""
    from playwright.sync_api import expect

    grow(hub_config.db_path, [f"early-node{i:02d}" for i in range(12)], gpus=1)
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    held = []
    page.route("**/static/admin.js", lambda route: held.append(route))  # the script waits until the text is typed
    page.goto(hub_process.base_url + "/admin", wait_until="commit")
    page.fill("#invite-scope .picker-search", "early-node07")
    while not held:
        page.wait_for_timeout(50)
    held[0].continue_()
    picker = page.locator("#invite-scope")
    expect(picker.locator(".picker-option", has_text="early-node07")).to_be_visible()
    expect(picker.locator(".picker-status")).to_have_text("1 match.")
    page.context.close()


def test_item3_item4_phone_width_has_no_horizontal_overflow(browser, hub_process, hub_config):
    """Review §4 item 14: phone /admin overflowed (scrollWidth 493 at 390); /free cut off columns."""
    grow(hub_config.db_path, [f"a-rather-long-host-name-of-the-lab-{i:03d}" for i in range(60)], gpus=2)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    for path in ("/admin", "/admin?edit=nobody", "/free"):
        page.goto(hub_process.base_url + path)
        if path == "/free":
            page.wait_for_selector("#free-table tbody tr td code.env")
        assert _no_overflow(page), (path, page.evaluate("document.documentElement.scrollWidth"))
    context.close()


def test_item4_free_pages_and_the_search_in_the_url(browser, hub_process, hub_config):
    from playwright.sync_api import expect

    grow(hub_config.db_path, [f"node-{i:03d}" for i in range(45)], gpus=2)
    push(hub_process, hub_config, sample_report("busy-node", gpus=2, processes=1))
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/free")
    rows = page.locator("#free-table tbody tr")
    expect(rows).to_have_count(20)  # a screenful, not every host
    expect(page.locator("#free-count")).to_have_text("1–20 of 45 offers")
    page.click("#free-pager button.next")
    expect(page.locator("#free-count")).to_have_text("21–40 of 45 offers")
    assert page.url.endswith("/free?page=2")
    page.click("#free-pager button.next")
    expect(rows).to_have_count(5)
    assert page.locator("#free-pager button.next").count() == 0
    page.go_back()
    expect(page.locator("#free-count")).to_have_text("21–40 of 45 offers")
    # The question goes into the URL: a shared link opens the same answer.
    page.fill("#free-form input[name=count]", "2")
    page.fill("#free-form input[name=model]", "H100")
    page.click("#free-form button[type=submit]")
    expect(page.locator("#free-count")).to_have_text("1–20 of 45 offers")
    assert re.search(r"/free\?count=2&model=H100$", page.url)
    expect(rows.first).to_contain_text("2 free: 0,1")
    shared = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    login(shared, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    shared.goto(hub_process.base_url + "/free?count=2&model=H100&page=3")
    expect(shared.locator("#free-count")).to_have_text("41–45 of 45 offers")
    assert shared.input_value("#free-form input[name=count]") == "2"
    assert shared.input_value("#free-form input[name=model]") == "H100"
    assert "count=2" in shared.inner_text("#one-liner") and "model=H100" in shared.inner_text("#one-liner")
    shared.context.close()
    context.close()


def test_item1_item3_item4_group_chip_in_the_scope_picker_and_group_on_free(browser, hub_process, hub_config):
    """Host groups (item 1) in the search-chip scope picker (item 3) and the /free form (item 4)."""
    from playwright.sync_api import expect

    grow(hub_config.db_path, [f"lab-{t}-{i:02d}" for t in "xy" for i in range(25)], gpus=1)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(hub_process.base_url + "/admin#groups")
    # The "Host groups" section puts rack x's servers in group lab-x (bulk, by pattern).
    page.fill("#group-bulk input[name=group]", "lab-x")
    page.fill("#group-bulk input[name=pattern]", "lab-x-*")
    with page.expect_navigation():
        page.click("#group-bulk button[value=add]")
    expect(page.locator("#groups [role=status]")).to_have_text("25 of 25 matching servers added to group lab-x.")
    expect(page.locator("#group-table")).to_contain_text("lab-x")
    assert page.locator("input[type=checkbox][name=servers]").count() == 0
    # The invite's scope: the group first among the matches, as a chip posting "groups".
    picker = page.locator("#invite-scope")
    picker.locator(".picker-search").fill("lab-x")
    group_option = picker.locator(".picker-option").first
    expect(group_option).to_contain_text("host group · 25 servers now")
    group_option.click()
    expect(picker.locator(".chip")).to_have_count(1)
    assert picker.locator(".chip input[type=hidden]").get_attribute("name") == "groups"
    assert picker.locator(".chip input[type=hidden]").input_value() == "lab-x"
    picker.locator(".picker-search").fill("lab-y-07")
    picker.locator(".picker-option", has_text="lab-y-07").click()
    expect(picker.locator(".chip-count")).to_have_text("2 chosen")
    with page.expect_navigation():
        page.click("#invites button[type=submit]")
    expect(page.locator("#invites table")).to_contain_text("group lab-x + 1 server: lab-y-07")
    link = page.input_value("#invite-link")
    guest = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    guest.goto(link)
    guest.fill("#username", "grouped1")
    guest.fill("#password", "a long enough password")
    guest.fill("#password2", "a long enough password")
    guest.click("input[type=submit]")
    guest.wait_for_url(re.compile(r".*/$"))
    rows = guest.evaluate("fetch('/monitor/servers.json?_shape=array').then(r => r.json())")
    assert {r["name"] for r in rows} == {f"lab-x-{i:02d}" for i in range(25)} | {"lab-y-07"}
    guest.context.close()
    # The user's edit form shows the group chip; the agent-token picker offers servers only.
    page.goto(hub_process.base_url + "/admin?edit=grouped1#user-edit")
    expect(page.locator("#user-scope .chip[data-kind=group]")).to_have_text(re.compile(r"group\s*lab-x"))
    page.locator("#tokens .picker-search").fill("lab-x")
    expect(page.locator("#tokens .picker-option").first).to_contain_text("lab-x-00")
    assert page.locator("#tokens .picker-option", has_text="host group").count() == 0
    # /free: the group in the form and in the URL, one page of that group's hosts.
    page.goto(hub_process.base_url + "/free")
    expect(page.locator("#free-count")).to_have_text("1–20 of 50 offers")
    page.fill("#free-form input[name=group]", "lab-x")
    page.click("#free-form button[type=submit]")
    expect(page.locator("#free-count")).to_have_text("1–20 of 25 offers")
    assert re.search(r"/free\?group=lab-x$", page.url)
    assert all(t.startswith("lab-x-") for t in page.locator("#free-table tbody tr td:first-child").all_inner_texts())
    assert "group=lab-x" in page.inner_text("#one-liner")
    page.goto(hub_process.base_url + "/free?group=lab-x&page=2")
    expect(page.locator("#free-count")).to_have_text("21–25 of 25 offers")
    assert page.input_value("#free-form input[name=group]") == "lab-x"
    assert errors == []
    context.close()


def test_F8_free_names_an_unknown_or_out_of_scope_group_and_lists_the_viewers_groups(browser, hub_process, hub_config):
    """/free with a group nobody has (a typo) says there is no host group of that name, and with a
    group outside the viewer's scope says so, instead of "No host has that many free GPUs" (newcomer
    finding 8); the group field offers the viewer's own groups (a datalist)."""
    import sqlite3

    from datasette_auth_passwords.utils import hash_password
    from playwright.sync_api import expect
    from server_monitor.auth.accounts import Accounts
    from server_monitor.storage import groups

    grow(hub_config.db_path, [f"node-{t}-{i}" for t in "ab" for i in range(3)], gpus=1)
    with sqlite3.connect(hub_config.db_path) as conn:
        for t in "ab":
            ids = [i for (i,) in conn.execute("select id from servers where hostname like ?", (f"node-{t}-%",))]
            groups.set_admin(conn, ids, f"cluster-{t}")
    Accounts(hub_config.auth_db_path).create_user("erin", hash_password("a long enough password", iterations=1000),
                                                  "viewer", servers=[], groups=["cluster-b"])
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub_process.base_url, "erin", "a long enough password")
    cell = page.locator("#free-table tbody td.group-problem")
    page.goto(hub_process.base_url + "/free?group=nope")
    expect(cell).to_have_text("No host group named \u201cnope\u201d. Pick one of yours: cluster-b.")
    page.goto(hub_process.base_url + "/free?group=cluster-a")
    expect(cell).to_have_text("Host group \u201ccluster-a\u201d is not in your scope. Pick one of yours: cluster-b.")
    assert page.locator("#free-table tbody tr td:first-child a").count() == 0
    # The field's list: the viewer's groups only.
    assert page.eval_on_selector_all("#group-list option", "os => os.map(o => o.value)") == ["cluster-b"]
    assert page.get_attribute("#free-form input[name=group]", "list") == "group-list"
    # Their own group: its hosts, no complaint.
    page.goto(hub_process.base_url + "/free?group=cluster-b")
    expect(page.locator("#free-count")).to_have_text("1–3 of 3 offers")
    assert cell.count() == 0 and errors == []
    # The admin sees every group in the list, and a typo is still named as one.
    admin = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    login(admin, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    admin.goto(hub_process.base_url + "/free?group=cluster-c")
    expect(admin.locator("#free-table tbody td.group-problem")).to_have_text(
        "No host group named \u201ccluster-c\u201d. Pick one of yours: cluster-a, cluster-b.")
    assert admin.eval_on_selector_all("#group-list option", "os => os.map(o => o.value)") == ["cluster-a", "cluster-b"]
