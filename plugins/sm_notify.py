"""Notification targets, delivery failures and people's contacts on ``/admin`` and ``/account``.

* ``POST /admin/notify/targets``: add (``name``, Apprise ``url``, ``severities`` repeated),
  edit (``action=update``, ``name``, ``new_name``, ``severities``, ``url``: empty keeps the stored
  URL, which the page never shows back) or delete (``action=delete``, ``name``) a target kept in
  ``auth.db``. ``GET /admin?nedit=<name>#notify-edit`` shows the edit form.
* ``POST /admin/notify/test``: send a test notice to the target ``name`` now (any target: config,
  ``alerts.webhooks``/``alerts.smtp`` or admin-made); the answer says whether it arrived, a
  failure is also in the failure list.
* ``POST /admin/notify/contacts``: set any holder's contact (e-mail, any Apprise URL, digest,
  time zone), changing only the parts given (:func:`admin_contact`);
  ``GET /admin?cedit=<holder>#contact-form`` fills the form with the stored values (the URL hidden).
* ``POST /account/contact``: a user sets their own contact (holder = their user name; the URL
  only of a kind in ``notifications.contact_schemes``, so nobody makes the hub post inside the lab;
  ``tz`` an IANA time zone name, which the page fills in from the browser when none is stored).
  An unknown time zone is a 400 naming the field (``contacts.check_tz``).

Every form carries Datasette's CSRF token; the admin routes answer 403 to anyone but an admin.
The ``/admin`` and ``/account`` pages get their data from :func:`extra_template_vars`.
"""

import asyncio
import time
from html import escape
from urllib.parse import parse_qs, urlencode

from datasette import hookimpl
from datasette.utils.asgi import Response

from server_monitor.auth.contacts import KEEP, SEVERITIES, ContactError, known_tz, time_zones
from server_monitor.jobs import alerts, notify, nudge
from server_monitor.serving import hub
from server_monitor.serving.queries import DATABASE
from server_monitor.serving.web import page_number, pager
from server_monitor.storage import alert_rules, builtin_overrides

# Contacts per page of /admin's contact list (like its users: search ``cq``, page ``cp``).
CONTACTS_PAGE = 50


def _notifier(ctx):
    """A notifier over the hub's config (targets and failures in auth.db); built per request, cheap."""
    cfg = alerts.settings(ctx.config)
    notifier = notify.Notifier(cfg, notify.settings(ctx.config), ctx.notify_store)
    notifier.public_url = ctx.config.get("server.public_url")
    return notifier


async def _form(request):
    return parse_qs((await request.post_body()).decode("utf-8", "replace"), keep_blank_values=True)


def _first(form, key):
    return (form.get(key) or [""])[0]


def _refused(message, back):
    return Response.html("<!DOCTYPE html><title>Not saved</title><link rel=stylesheet href=/static/dashboard.css>"
                         f"<main><h1>Not saved</h1><p role=alert class=message-error>{escape(message)}</p>"
                         f"<p><a href=\"{back}\">Back</a></p></main>", status=400)


def admin_post(handler):
    """``handler(request, datasette, ctx, form)`` as a route for admins' POSTs only: 403 to anyone
    else, 405 to another method; ``form``: the parsed body (lists of values)."""
    async def route(request, datasette):
        if (request.actor or {}).get("role") != "admin":
            return Response.html("<!DOCTYPE html><title>Forbidden</title><main><h1>Forbidden</h1>"
                                 "<p>This page is for admins.</p></main>", status=403)
        if request.method != "POST":
            return Response.text("Method not allowed: use the forms on /admin", status=405, headers={"allow": "POST"})
        return await handler(request, datasette, hub.context(datasette), await _form(request))
    route.__doc__ = handler.__doc__
    return route


@admin_post
async def targets(request, datasette, ctx, form):
    name = _first(form, "name").strip()
    db = datasette.get_database(DATABASE)
    if _first(form, "action") == "delete":
        # A target that alert rules name stays until they are edited: deleting it would leave
        # their alerts going nowhere.
        users = await db.execute_fn(lambda conn: alert_rules.rules_naming_target(conn, name)
                                    + builtin_overrides.naming_target(conn, name))
        if users:
            return _refused(f"Alert rules send to {name}: {', '.join(users[:10])}. Edit them on /admin/rules first.",
                            "/admin#notifications")
        ctx.notify_store.delete_target(name)
        return Response.redirect("/admin#notifications")
    if _first(form, "action") == "update":
        new_name = _first(form, "new_name").strip()
        try:
            url = notify.check_url(_first(form, "url")) if _first(form, "url").strip() else None
            ctx.notify_store.update_target(name, new_name, url, form.get("severities") or [])
        except ContactError as exc:
            return _refused(str(exc), "/admin?" + urlencode({"nedit": name}) + "#notify-edit")
        if new_name and new_name != name:  # the rules that named it follow the rename
            def rename(conn):
                with conn:
                    return (alert_rules.rename_target(conn, name, new_name, request.actor["id"])
                            + builtin_overrides.rename_target(conn, name, new_name, request.actor["id"]))
            await db.execute_write_fn(rename, block=True)
        return Response.redirect("/admin#notifications")
    try:
        url = notify.check_url(_first(form, "url"))
        ctx.notify_store.add_target(name, url, form.get("severities") or [], created_by=request.actor["id"])
    except ContactError as exc:
        return _refused(str(exc), "/admin#notifications")
    return Response.redirect("/admin#notifications")


@admin_post
async def test_target(request, datasette, ctx, form):
    """Send ``[TEST] [info] …`` to the target ``name`` (in a thread: delivery waits up to the timeout)."""
    notifier = _notifier(ctx)
    target = {t.name.lower(): t for t in notifier.targets()}.get(_first(form, "name").lower())
    if target is None:
        return _refused("No target of this name.", "/admin#notifications")
    alert = {"rule": "test", "severity": "info", "server_id": None, "subject": "",
             "message": f"Test notice from Server Monitor, sent by {request.actor['id']} from /admin"}
    ok = await asyncio.get_running_loop().run_in_executor(None, notifier.deliver, target, "test", alert)
    return Response.redirect("/admin?" + urlencode({"ntest": "ok" if ok else "failed", "nt": target.name})
                             + "#notifications")


@admin_post
async def admin_contact(request, datasette, ctx, form):
    """Set a holder's contact, changing only what the admin gave: an empty e-mail field keeps the
    stored address unless the form showed it (``shown`` = the holder whose values were filled
    in: then empty clears it), an empty URL keeps the stored URL (``remove_url`` clears it),
    ``digest`` ``on``/``off`` sets the opt-in and anything else keeps it, an empty time zone
    (``tz``) keeps the stored one unless the form showed it (then empty means hub time). So an
    admin never silently wipes what the holder saved on /account."""
    holder = _first(form, "holder").strip()
    shown = _first(form, "shown").strip().lower() == holder.lower() != ""
    email = _first(form, "email").strip() or (None if shown else KEEP)
    digest = {"on": True, "off": False}.get(_first(form, "digest"), KEEP)
    tz = _first(form, "tz").strip() or (None if shown else KEEP)
    try:
        url = notify.check_url(_first(form, "url")) if _first(form, "url").strip() else (
            None if _first(form, "remove_url") == "on" else KEEP)
        ctx.notify_store.edit_contact(holder, email, url, digest, updated_by=request.actor["id"], tz=tz)
    except ContactError as exc:
        return _refused(str(exc), "/admin#contacts")
    return Response.redirect("/admin?" + urlencode({"cedit": holder}) + "#contact-form")


async def own_contact(request, datasette):
    actor = request.actor
    if not actor:
        return Response.redirect("/login?next=/account")
    if request.method != "POST":
        return Response.text("Method not allowed: use the form on /account", status=405, headers={"allow": "POST"})
    ctx = hub.context(datasette)
    form = await _form(request)
    schemes = set(notify.settings(ctx.config)["contact_schemes"] or ())
    try:
        # An empty URL field keeps the stored URL (it is never sent back to the page); the
        # "remove" box removes it.
        url = notify.check_url(_first(form, "url"), schemes) if _first(form, "url").strip() else (
            None if _first(form, "remove_url") == "on" else (ctx.notify_store.contact(actor["id"]) or {}).get("url"))
        kept = ctx.notify_store.set_contact(actor["id"], _first(form, "email"), url,
                                            digest=_first(form, "digest") == "on", updated_by=actor["id"],
                                            tz=_first(form, "tz"))
    except ContactError as exc:
        return _refused(str(exc), "/account")
    # What the page then says: "saved" (an address), "zone" (only the time zone: nothing is
    # sent until an address is added) or "removed" (nothing given: nothing kept).
    return Response.redirect("/account?" + urlencode({"contact": {"address": "saved"}.get(kept, kept)}) + "#contact")


def _admin_vars(ctx, request):
    notifier = _notifier(ctx)
    status = ctx.notify_store.status()
    shown = []
    for t in notifier.targets():
        state = status.get(t.name) or {}
        shown.append({"name": t.name, "url": t.shown_url(), "source": t.source, "problem": t.problem,
                      "severities": ", ".join(t.severities) if t.severities else "all",
                      "last_ok_at": state.get("last_ok_at"), "last_failure_at": state.get("last_failure_at"),
                      "deletable": t.source == "admin"})
    names = {t["name"] for t in shown}
    test = None
    if request.args.get("ntest") in ("ok", "failed") and request.args.get("nt") in names:
        test = {"ok": request.args["ntest"] == "ok", "name": request.args["nt"]}
    # The edit form of an admin-made target: name and severities filled in, the URL only as its
    # shortened form (its secrets never go back to the page; an empty URL field keeps it).
    edit = None
    if request.args.get("nedit"):
        stored = ctx.notify_store.target(request.args["nedit"])
        if stored:
            edit = {"name": stored["name"], "severities": stored["severities"] or [],
                    "shown_url": notify.Target(stored["name"], stored["url"]).shown_url()}
    # The contact form filled with a holder's stored values (?cedit=<holder>): e-mail and digest
    # shown, the URL only as its shortened form.
    contact_edit = None
    if request.args.get("cedit"):
        stored = ctx.notify_store.contact(request.args["cedit"][:64])
        contact_edit = dict(stored, shown_url=notify.Target(stored["holder"], stored["url"]).shown_url()
                            if stored["url"] else None) if stored else {"holder": request.args["cedit"][:64],
                                                                        "new": True}
    cq = request.args.get("cq", "").strip()[:200]
    cp = page_number(request.args, "cp")
    contacts, total = ctx.notify_store.contacts_page(cq, CONTACTS_PAGE, (cp - 1) * CONTACTS_PAGE)
    ncfg, now = notify.settings(ctx.config), time.time()
    for c in contacts:  # "nudges held for quiet hours until 07:00 Europe/Zurich" on the holder's clock
        c["quiet_note"] = nudge.quiet_note(ncfg, now, c["tz"]) if c.get("tz") else None
        # A stored name this hub does not list (restored auth.db, hand edit): nudges use hub time.
        c["tz_unknown"] = bool(c.get("tz")) and not known_tz(c["tz"])
    return {"no_smtp": no_smtp(ctx.config),
            "notify_targets": shown, "notify_failures": ctx.notify_store.failures(20), "notify_edit": edit, "contact_edit": contact_edit,
            "notify_contacts": contacts, "contacts_pager": pager(request.args, "/admin", "cp", cp, total, CONTACTS_PAGE,
                                                                 "#contacts"), "cq": cq,
            "notify_severities": SEVERITIES, "notify_test": test, "notify_when": when,
            "nudge_quiet": nudge.quiet_note(ncfg, now), "quiet_hours": ncfg.get("quiet_hours"),
            "time_zones": time_zones()}


def no_smtp(config):
    """True when this hub sends no e-mail (no ``alerts.smtp`` server): an e-mail contact then gets
    nothing, every nudge to it fails (``contact:<holder>:email`` under Delivery failures), so
    /account and /admin say so next to the e-mail field and on each such contact."""
    return not alerts.settings(config).get("smtp")


def when(epoch):
    """``YYYY-MM-DD HH:MM UTC`` of ``epoch`` (s), or ``–``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch)) if epoch else "–"


@hookimpl
def extra_template_vars(template, request, datasette):
    if request is None or template not in ("admin.html", "sm_account.html"):
        return {}
    ctx = hub.context(datasette)
    actor = request.actor or {}
    if template == "admin.html":
        return _admin_vars(ctx, request) if actor.get("role") == "admin" else {}
    if not actor.get("id"):
        return {}
    return {"my_contact": ctx.notify_store.contact(actor["id"]) or {}, "notify_when": when,
            "contact_schemes": sorted(notify.settings(ctx.config)["contact_schemes"] or ()), "time_zones": time_zones(),
            "contact_saved": request.args.get("contact") if request.args.get("contact") in ("saved", "zone", "removed")
            else None, "no_smtp": no_smtp(ctx.config)}


@hookimpl
def register_routes():
    return [
        (r"^/admin/notify/targets$", targets),
        (r"^/admin/notify/test$", test_target),
        (r"^/admin/notify/contacts$", admin_contact),
        (r"^/account/contact$", own_contact),
    ]
