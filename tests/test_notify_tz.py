"""Per-contact time zones (issue 26 item 1, lab across time zones): quiet hours, the digest's day
and the times in a nudge follow each holder's own IANA zone (hub time without one), through the
real notification sinks of tests/test_notify.py (SMTP ``SmtpSink`` on loopback); the zone is
checked with zoneinfo (an unknown one is a 400), old auth.db files gain the column in place, and
an admin's edit keeps the zone the user saved."""

import datetime
import email
import email.policy
import re
import sqlite3
import time
import zoneinfo

from test_fleet_views import host
from test_hub_datasette import Client
from test_notify import _csrf, _nudger, notify_hub  # noqa: F401  (fixture)

from server_monitor.auth.accounts import Accounts
from server_monitor.auth.contacts import NotifyStore
from server_monitor.jobs import nudge
from server_monitor.serving import hub

ZURICH, SHANGHAI = "Europe/Zurich", "Asia/Shanghai"


def _idle(admin, server, user, hours=3):
    """``server`` (new) whose GPU 0 ``user`` holds (30 GB) at 0 % for ``hours`` h."""
    now = int(time.time())
    host(admin, server, 1, used_mib={0: 30000}, busy=(0,), util=0)
    conn = sqlite3.connect(admin.db)
    (sid,) = conn.execute("select id from servers where hostname = ?", (server,)).fetchone()
    conn.execute("update gpu_processes set user = ? where server_id = ?", (user, sid))
    (gpu,) = conn.execute("select id from gpus where server_id = ?", (sid,)).fetchone()
    conn.executemany("insert or ignore into gpu_samples (gpu_id, ts, utilization_gpu, memory_used_mib) values (?,?,?,?)",
                     [(gpu, now - i * 60, 0, 30000) for i in range(1, hours * 60)])
    conn.commit()


def _mails(sink):
    return {m["To"]: m for m in (email.message_from_string(raw, policy=email.policy.default) for raw in sink.messages)}


def _user(hub_config, name):
    from datasette_auth_passwords.utils import hash_password

    Accounts(hub_config.auth_db_path).create_user(name, hash_password(f"{name}-password-1", iterations=1000), "viewer")


def test_tz_quiet_hours_follow_the_holders_zone(notify_hub, hub_config):  # noqa: F811
    """alice (Europe/Zurich) and bob (Asia/Shanghai, 6-7 h ahead) each hold a GPU idle; quiet
    hours are the next two hours on Zurich's clock. At that same instant only bob is nudged,
    through the SMTP sink, and his nudge gives its time on his clock with his zone's name."""
    admin = notify_hub
    _idle(admin, "zrhnode", "alice")
    _idle(admin, "shanode", "bob")
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("alice", "alice@example.org", tz=ZURICH)
    store.set_contact("bob", "bob@example.org", tz=SHANGHAI)
    now = time.time()
    hour = datetime.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(ZURICH)).hour
    quiet = [hour, (hour + 2) % 24]
    assert nudge.quiet(now, quiet, ZURICH) and not nudge.quiet(now, quiet, SHANGHAI)
    assert _nudger(hub_config, quiet_hours=quiet).run_once()["nudged"] == ["bob"]
    mails = _mails(admin.sink)
    assert list(mails) == ["bob@example.org"]
    body = mails["bob@example.org"].get_content()
    since = re.search(r"\(since (\d{4}-\d\d-\d\d \d\d:\d\d) Asia/Shanghai\)", body)
    assert since, body
    held_since = datetime.datetime.strptime(since.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=zoneinfo.ZoneInfo(SHANGHAI))
    assert abs(held_since.timestamp() - (now - 3 * 3600)) < 1800
    # /admin (the hub's config now with these quiet hours) says whose clock holds alice's
    # nudges back: "until HH:00 Europe/Zurich".
    hub.context(admin.ds).config.data.setdefault("notifications", {})["quiet_hours"] = quiet
    page = admin.get("/admin").text
    row = page[page.index('data-holder="alice"'):page.index("</tr>", page.index('data-holder="alice"'))]
    assert f"nudges held for quiet hours until {quiet[1]:02d}:00 Europe/Zurich" in row
    bob_row = page[page.index('data-holder="bob"'):page.index("</tr>", page.index('data-holder="bob"'))]
    assert SHANGHAI in bob_row and "nudges held" not in bob_row


def test_tz_digest_day_follows_the_holders_zone(notify_hub, hub_config):  # noqa: F811
    """Pacific/Kiritimati (UTC+14) and Pacific/Pago_Pago (UTC-11) are always on different
    weekdays: with digest_weekday = Kiritimati's weekday now (from hour 0), only the holder on
    Kiritimati's clock gets the digest at this instant."""
    admin = notify_hub
    store = NotifyStore(hub_config.auth_db_path)
    store.set_contact("kiri", "kiri@example.org", digest=True, tz="Pacific/Kiritimati")
    store.set_contact("pago", "pago@example.org", digest=True, tz="Pacific/Pago_Pago")
    weekday = datetime.datetime.now(zoneinfo.ZoneInfo("Pacific/Kiritimati")).weekday()
    assert _nudger(hub_config, nudges=False, digest_weekday=weekday, digest_hour=0).run_once()["digests"] == ["kiri"]
    assert list(_mails(admin.sink)) == ["kiri@example.org"]


def test_tz_unknown_zone_is_400(notify_hub, hub_config):  # noqa: F811
    """An unknown or hostile time zone on /account or /admin is a 400 that names the field, shows
    the text escaped, and stores nothing; a known one is stored."""
    _user(hub_config, "dave")
    user = Client(notify_hub.ds)
    assert user.login("dave", "dave-password-1").status_code == 302
    token = _csrf(user, "/account")
    store = NotifyStore(hub_config.auth_db_path)
    for bad in ("Mars/Olympus_Mons", "<script>alert(1)</script>", "Europe/Zurich\r\nX-Injected: 1", "../../etc/passwd",
                "localtime", "EST5EDT,M3.2.0,M11.1.0"):
        refused = user.post("/account/contact", data={"csrftoken": token, "email": "dave@example.org", "tz": bad})
        assert refused.status_code == 400, bad
        assert "Time zone" in refused.text and "<script>alert" not in refused.text
        assert "x-injected" not in {k.lower() for k in refused.headers}
        assert store.contact("dave") is None
    assert user.post("/account/contact", data={"csrftoken": token, "email": "dave@example.org",
                                               "tz": " Asia/Shanghai "}).status_code == 302
    assert store.contact("dave")["tz"] == SHANGHAI
    admin = notify_hub
    refused = admin.post("/admin/notify/contacts", data={"csrftoken": _csrf(admin), "holder": "dave",
                                                         "tz": "Atlantis/<b>Capital</b>"})
    assert refused.status_code == 400 and "Time zone" in refused.text and "<b>Capital" not in refused.text
    assert store.contact("dave")["tz"] == SHANGHAI


def test_tz_old_auth_db_upgrades_in_place(tmp_path):
    """An auth.db from before time zones (notify_contacts without ``tz``, as main created it)
    gains the column when the hub opens it: every contact kept, on hub time, and a zone can be set."""
    path = str(tmp_path / "auth.db")
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE notify_contacts (holder TEXT PRIMARY KEY COLLATE NOCASE, email TEXT, url TEXT,
            digest INTEGER NOT NULL DEFAULT 0, digest_sent_at INTEGER, updated_at INTEGER NOT NULL, updated_by TEXT);
        INSERT INTO notify_contacts VALUES ('alice', 'alice@example.org', 'ntfys://ntfy.sh/alice', 1, 1700000000, 1699990000, 'alice');
        INSERT INTO notify_contacts VALUES ('bob', NULL, 'ntfys://ntfy.sh/bob', 0, NULL, 1699990001, 'admin');
    """)
    conn.commit()
    conn.close()
    store = NotifyStore(path)
    assert [(c["holder"], c["email"], c["url"], c["digest"], c["digest_sent_at"], c["tz"]) for c in store.contacts()] == [
        ("alice", "alice@example.org", "ntfys://ntfy.sh/alice", 1, 1700000000, None),
        ("bob", None, "ntfys://ntfy.sh/bob", 0, None, None)]
    NotifyStore(path)  # a second process opening it: nothing to add, nothing lost
    assert store.edit_contact("alice", tz=ZURICH)["tz"] == ZURICH
    assert store.contact("alice")["email"] == "alice@example.org" and store.contact("bob")["tz"] is None


def test_tz_admin_edit_keeps_user_zone(notify_hub, hub_config):  # noqa: F811
    """The user saves their zone on /account; an admin who saves that holder from the blank
    /admin form (a new URL only) keeps it; the list shows it; Edit shows it, and in the shown form
    the admin can change it or clear it to hub time."""
    _user(hub_config, "erin")
    user = Client(notify_hub.ds)
    assert user.login("erin", "erin-password-1").status_code == 302
    assert user.post("/account/contact", data={"csrftoken": _csrf(user, "/account"), "email": "erin@example.org",
                                               "digest": "on", "tz": ZURICH}).status_code == 302
    admin, store = notify_hub, NotifyStore(hub_config.auth_db_path)
    token = _csrf(admin)
    saved = admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "erin",
                                                       "url": "json://127.0.0.1:9/erin", "digest": "keep", "tz": ""})
    assert saved.status_code == 302
    stored = store.contact("erin")
    assert (stored["email"], stored["url"], stored["digest"], stored["tz"]) == (
        "erin@example.org", "json://127.0.0.1:9/erin", 1, ZURICH)
    page = admin.get(saved.headers["location"]).text
    row = page[page.index('data-holder="erin"'):page.index("</tr>", page.index('data-holder="erin"'))]
    assert ZURICH in row
    form = page[page.index('id="contact-form"'):page.index("</form>", page.index('id="contact-form"'))]
    assert 'name="tz" list="tz-list"' in form and f'value="{ZURICH}"' in form
    assert admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "erin", "shown": "erin",
                                                      "email": "erin@example.org", "digest": "on",
                                                      "tz": SHANGHAI}).status_code == 302
    assert store.contact("erin")["tz"] == SHANGHAI
    assert admin.post("/admin/notify/contacts", data={"csrftoken": token, "holder": "erin", "shown": "erin",
                                                      "email": "erin@example.org", "digest": "on",
                                                      "tz": ""}).status_code == 302
    assert store.contact("erin")["tz"] is None
    # The user's own page shows what is stored: no zone now (the browser will offer its own).
    field = re.search(r'<input type="text" id="contact-tz"[^>]*>', user.get("/account").text).group(0)
    assert 'value=""' in field and 'data-stored="0"' in field


def test_tz_quiet_period_across_a_dst_change_in_zurich_ends_at_the_right_utc_instant():
    """Quiet hours 22-07 in Europe/Zurich: the night the clocks go forward (2026-03-29, 02:00 CET
    -> 03:00 CEST) the period ends at 07:00 CEST = 05:00 UTC, 8 h after 23:00 CET (not 9); the
    night they go back (2026-10-25, 03:00 CEST -> 02:00 CET) at 07:00 CET = 06:00 UTC, 10 h after
    23:00 CEST. The note says 07:00 on Zurich's clock both times."""
    zurich, utc = zoneinfo.ZoneInfo(ZURICH), datetime.timezone.utc
    spring = datetime.datetime(2026, 3, 28, 23, 0, tzinfo=zurich).timestamp()
    assert nudge.quiet_until(spring, [22, 7], ZURICH) == datetime.datetime(2026, 3, 29, 5, 0, tzinfo=utc).timestamp()
    autumn = datetime.datetime(2026, 10, 24, 23, 0, tzinfo=zurich).timestamp()
    assert nudge.quiet_until(autumn, [22, 7], ZURICH) == datetime.datetime(2026, 10, 25, 6, 0, tzinfo=utc).timestamp()
    # Inside the repeated hour (02:30 CET, the second time round) it is still quiet until 07:00 CET.
    repeated = datetime.datetime(2026, 10, 25, 1, 30, tzinfo=utc).timestamp()
    assert nudge.quiet(repeated, [22, 7], ZURICH)
    assert nudge.quiet_until(repeated, [22, 7], ZURICH) == datetime.datetime(2026, 10, 25, 6, 0, tzinfo=utc).timestamp()
    # One second before the end still quiet, at the end not.
    end = datetime.datetime(2026, 3, 29, 5, 0, tzinfo=utc).timestamp()
    assert nudge.quiet(end - 1, [22, 7], ZURICH) and not nudge.quiet(end, [22, 7], ZURICH)
    ncfg = {"nudges": True, "quiet_hours": [22, 7]}
    assert nudge.quiet_note(ncfg, spring, ZURICH) == "nudges held for quiet hours until 07:00 Europe/Zurich"
    assert nudge.quiet_note(ncfg, autumn, ZURICH) == "nudges held for quiet hours until 07:00 Europe/Zurich"


def test_tz_dashboard_carries_holders_zones_only_to_viewers_who_see_every_holder(notify_hub, hub_config):  # noqa: F811
    """The Idle holders panel's zones map (data-zones) names holders of every server: an admin's
    dashboard has it, a viewer scoped to one server or without holder names gets an empty map."""
    from datasette_auth_passwords.utils import hash_password

    admin = notify_hub
    _idle(admin, "zrhnode", "alice")
    NotifyStore(hub_config.auth_db_path).set_contact("alice", "alice@example.org", tz=ZURICH)
    (sid,) = sqlite3.connect(admin.db).execute("select id from servers").fetchone()
    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("scoped", hash_password("scoped-password-1", iterations=1000), "viewer", servers=[sid])
    accounts.create_user("blind", hash_password("blind-password-1", iterations=1000), "viewer", see_processes=False)

    def zones(client):
        return re.search(r'data-zones="([^"]*)"', client.get("/").text).group(1)

    assert zones(admin) == "{&#34;alice&#34;: &#34;Europe/Zurich&#34;}"
    for name in ("scoped", "blind"):
        viewer = Client(admin.ds)
        assert viewer.login(name, f"{name}-password-1").status_code == 302
        assert zones(viewer) == "{}", name
