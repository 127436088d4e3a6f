"""Alert rules on ``/admin/rules`` (issue 26 item 2): list, create, edit, enable/disable, delete
and dry-run the rules of ``alert_rules``; edit, disable/enable, reset to config and dry-run the
built-in rules of ``config.yaml`` (their overrides: ``storage/builtin_overrides.py``).

Server-rendered (``templates/admin_rules.html``). Admins only (403 for anyone else, 405 for a
GET of a write route); every form carries Datasette's CSRF token, as on ``/admin``. Bad input
answers 400 with the page and a message naming the field (:class:`RuleError`), never a 500.
The dry run (``action=test``) evaluates the rule now against the stored data with the same
code as the alert thread (``jobs.alerts.dry_run``) and sends nothing.

Routes: ``GET /admin/rules`` (``?edit=<id>`` fills the form with a rule, ``?edit_builtin=<name>``
the built-in rule's form), ``POST /admin/rules`` (create), ``POST /admin/rules/<id>`` with
``action`` = ``update``, ``enable``, ``disable``, ``delete`` or ``test``, ``POST
/admin/rules/builtin/<name>`` with ``action`` = ``update`` (threshold, minutes, severity,
targets), ``enable``, ``disable``, ``reset`` (back to config.yaml) or ``test``. An unknown
built-in name answers 400 naming ``rule``.
"""

import time

from datasette import hookimpl
from datasette.utils.asgi import Response

from server_monitor.jobs import alerts, notify
from server_monitor.serving import hub
from server_monitor.serving.queries import DATABASE
from server_monitor.storage import alert_rules, builtin_overrides
from server_monitor.storage import groups as host_groups
from server_monitor.serving.web import admin_denied as _forbidden, page, read_form

# Dry-run findings shown on the page (the count says how many there were in all).
SHOWN = 200
RECENT = 5


def _user(request):
    return (request.actor or {}).get("id") or "admin"


def _read_page(conn, cfg):
    rules = alert_rules.all_rules(conn)
    for rule in rules:
        rule["recent"] = alert_rules.recent_firings(conn, rule_id=rule["id"], limit=RECENT)
    ids = {r["scope_server_id"] for r in rules if r["scope_server_id"] is not None}
    names = {}
    if ids:
        marks = ",".join("?" * len(ids))
        names = dict(conn.execute(f"SELECT id, coalesce(display_name, hostname) FROM servers WHERE id IN ({marks})",
                                  sorted(ids)).fetchall())
    for rule in rules:
        if rule["scope"] == "server":
            rule["scope_name"] = names.get(rule["scope_server_id"], f"#{rule['scope_server_id']} (deleted)")
    builtin = alerts.builtin_rules(cfg, builtin_overrides.all_overrides(conn))
    for rule in builtin:
        rule["recent"] = alert_rules.recent_firings(conn, rule=rule["rule"], limit=RECENT)
    return rules, builtin, host_groups.summary(conn)


async def render(request, datasette, status=200, form=None, **extra):
    """The rules page; ``form``: the values to put back in the form (after an error or ``?edit``);
    ``builtin_edit``/``builtin_form`` (in ``extra``): the built-in rule whose form is open, and its values."""
    ctx = hub.context(datasette)
    cfg = alerts.settings(ctx.config)
    db = datasette.get_database(DATABASE)
    rules, builtin, group_summary = await db.execute_fn(lambda conn: _read_page(conn, cfg))
    return await page(datasette, request, "admin_rules.html", status=status, rules=rules, builtin=builtin,
                      kinds=alert_rules.KINDS, severities=alert_rules.SEVERITIES, group_summary=group_summary,
                      form=form or {}, alerts_enabled=cfg["enabled"], target_names=target_names(ctx), **extra)


def _form_values(form):
    """The submitted fields as single strings (to put back into the form after an error)."""
    return {key: (values[0] if values else "") for key, values in form.items() if key != "csrftoken"}


def _resolve_server(conn, text):
    """A server's id from ``text``: its id (``12`` or ``#12``), else its shown or host name (exact)."""
    text = (text or "").strip().lstrip("#")
    if alert_rules.row_id(text) is not None:
        row = conn.execute("SELECT id FROM servers WHERE id = ?", (alert_rules.row_id(text),)).fetchone()
    else:
        row = conn.execute("SELECT id FROM servers WHERE display_name = ? OR hostname = ? ORDER BY id LIMIT 1",
                           (text, text)).fetchone()
    return row[0] if row else None


def target_names(ctx):
    """Names of the notification targets there are now (``alerts.webhooks``/``smtp``,
    ``notifications.targets``, the admin's in auth.db), as the Notifier routes by them."""
    notifier = notify.Notifier(alerts.settings(ctx.config), notify.settings(ctx.config), ctx.notify_store)
    return [target.name for target in notifier.targets()]  # (its delivery pool starts no thread unused)


def _check_targets(datasette, fields):
    """Raise :class:`alert_rules.RuleError` (``targets``) when ``fields`` names a target there is not."""
    known = {name.lower() for name in target_names(hub.context(datasette))}
    unknown = [name for name in fields["targets"] or () if name.lower() not in known]
    if unknown:
        raise alert_rules.RuleError("targets", f"no notification target is named {unknown[0]!r} (add it on /admin"
                                    " under Notifications, or in notifications.targets)")


async def _parse(datasette, form):
    values = _form_values(form)
    if values.get("scope") == "server":
        found = await datasette.get_database(DATABASE).execute_fn(
            lambda conn: _resolve_server(conn, values.get("scope_server")))
        values["scope_server_id"] = "" if found is None else str(found)
    fields = alert_rules.parse(values)
    _check_targets(datasette, fields)
    return values, fields


async def create_rule(request, datasette):
    """``POST /admin/rules``: a new rule from the form (see :func:`alert_rules.parse`)."""
    denied = _forbidden(request)
    if denied:
        return denied
    form = await read_form(request)
    values = _form_values(form)
    try:
        values, fields = await _parse(datasette, form)

        def write(conn):
            with conn:
                return alert_rules.create(conn, fields, _user(request))
        rule_id = await datasette.get_database(DATABASE).execute_write_fn(write, block=True)
    except alert_rules.RuleError as exc:
        return await render(request, datasette, status=400, error=str(exc), error_field=exc.field, form=values)
    return Response.redirect(f"/admin/rules?saved={rule_id}#rule-{rule_id}")


async def rule_action(request, datasette):
    """``POST /admin/rules/<id>``: ``action`` = update (with the form), enable, disable, delete, test."""
    denied = _forbidden(request)
    if denied:
        return denied
    rule_id = alert_rules.row_id(request.url_vars["id"])
    form = await read_form(request)
    action = form.first("action")
    db = datasette.get_database(DATABASE)
    rule = None if rule_id is None else await db.execute_fn(lambda conn: alert_rules.get(conn, rule_id))
    if rule is None:
        return await render(request, datasette, status=404,
                            error=f"No alert rule #{request.url_vars['id'][:20]} (deleted?).")
    user = _user(request)
    if action == "test":
        cfg = alerts.settings(hub.context(datasette).config)
        found = await db.execute_fn(lambda conn: alerts.dry_run(conn, int(time.time()), cfg, rule))
        return await render(request, datasette, tested=rule, test_results=found[:SHOWN], test_total=len(found))
    if action in ("enable", "disable"):
        def write(conn):
            with conn:
                alert_rules.set_enabled(conn, rule_id, action == "enable", user)
    elif action == "delete":
        def write(conn):
            with conn:
                alert_rules.delete(conn, rule_id)
    elif action == "update":
        values = _form_values(form)
        try:
            values, fields = await _parse(datasette, form)

            def write_update(conn):
                with conn:
                    alert_rules.update(conn, rule_id, fields, user)
            await db.execute_write_fn(write_update, block=True)
        except alert_rules.RuleError as exc:
            return await render(request, datasette, status=400, error=str(exc), error_field=exc.field,
                                form=dict(values, id=str(rule_id)))
        return Response.redirect(f"/admin/rules?saved={rule_id}#rule-{rule_id}")
    else:
        return await render(request, datasette, status=400,
                            error="action: must be one of update, enable, disable, delete, test")
    await db.execute_write_fn(write, block=True)
    return Response.redirect("/admin/rules#rules")


async def builtin_action(request, datasette):
    """``POST /admin/rules/builtin/<name>``: ``action`` = update (threshold, minutes, severity,
    targets from the form), enable, disable, reset (drop the override: config.yaml again) or test
    (dry run with the override applied). 400 naming the field for bad input or an unknown rule."""
    denied = _forbidden(request)
    if denied:
        return denied
    name = request.url_vars["name"]
    form = await read_form(request)
    action = form.first("action")
    db = datasette.get_database(DATABASE)
    user = _user(request)
    try:
        builtin_overrides.check_name(name)
    except alert_rules.RuleError as exc:
        return await render(request, datasette, status=400, error=str(exc), error_field=exc.field)
    if action == "test":
        cfg = alerts.settings(hub.context(datasette).config)
        found = await db.execute_fn(lambda conn: alerts.dry_run_builtin(conn, int(time.time()), cfg, name))
        enabled = await db.execute_fn(lambda conn: builtin_overrides.all_overrides(conn).get(name, {}).get("enabled",
                                                                                                           True))
        return await render(request, datasette, tested={"name": f"{name} (built-in)", "enabled": enabled},
                            test_results=found[:SHOWN], test_total=len(found))
    if action == "update":
        values = _form_values(form)
        try:
            fields = builtin_overrides.parse(name, values)
            _check_targets(datasette, fields)
        except alert_rules.RuleError as exc:
            return await render(request, datasette, status=400, error=str(exc), error_field=exc.field,
                                builtin_edit=name, builtin_form=values)

        def write(conn):
            with conn:
                builtin_overrides.save(conn, name, fields, user)
    elif action in ("enable", "disable"):
        def write(conn):
            with conn:
                builtin_overrides.set_enabled(conn, name, action == "enable", user)
    elif action == "reset":
        def write(conn):
            with conn:
                builtin_overrides.reset(conn, name)
    else:
        return await render(request, datasette, status=400,
                            error="action: must be one of update, enable, disable, reset, test")
    await db.execute_write_fn(write, block=True)
    return Response.redirect(f"/admin/rules?saved_builtin={name}#builtin-{name}")


def _builtin_values(override):
    """A built-in rule's override (or None) as the text values of its form (empty: config.yaml's)."""
    override = override or {}
    values = {key: "" if override.get(key) is None else str(override[key]) for key in ("minutes", "severity")}
    values["threshold"] = "" if override.get("threshold") is None else f"{override['threshold']:g}"
    values["targets"] = ", ".join(override.get("targets") or [])
    return values


def _edit_values(rule):
    """A stored rule as the form's text values."""
    values = {key: "" if rule[key] is None else str(rule[key]) for key in
              ("id", "name", "kind", "duration_minutes", "severity", "scope", "scope_group", "gpu_model")}
    values["threshold"] = "" if rule["threshold"] is None else f"{rule['threshold']:g}"
    values["scope_server"] = "" if rule["scope_server_id"] is None else str(rule["scope_server_id"])
    values["targets"] = ", ".join(rule["targets"] or [])
    values["enabled"] = "on" if rule["enabled"] else ""
    return values


async def rules_page(request, datasette):
    """``GET /admin/rules`` (``?edit=<id>``: the form holds that rule)."""
    denied = _forbidden(request, post=False)
    if denied:
        return denied
    edit = request.args.get("edit", "")
    form = None
    edit_builtin = request.args.get("edit_builtin", "")
    if edit_builtin:
        try:
            builtin_overrides.check_name(edit_builtin)
        except alert_rules.RuleError as exc:
            return await render(request, datasette, status=400, error=str(exc), error_field=exc.field)
        override = await datasette.get_database(DATABASE).execute_fn(
            lambda conn: builtin_overrides.all_overrides(conn).get(edit_builtin))
        return await render(request, datasette, builtin_edit=edit_builtin, builtin_form=_builtin_values(override))
    if edit:
        rule_id = alert_rules.row_id(edit)
        rule = None if rule_id is None else await datasette.get_database(DATABASE).execute_fn(
            lambda conn: alert_rules.get(conn, rule_id))
        if rule is None:
            return await render(request, datasette, status=404, error=f"No alert rule #{edit[:20]} (deleted?).")
        form = _edit_values(rule)
    saved_builtin = request.args.get("saved_builtin", "")
    return await render(request, datasette, form=form, saved=alert_rules.row_id(request.args.get("saved", "")),
                        saved_builtin=saved_builtin if saved_builtin in builtin_overrides.BUILTINS else None)


async def rules_route(request, datasette):
    """``/admin/rules``: GET the page, POST a new rule."""
    if request.method == "POST":
        return await create_rule(request, datasette)
    return await rules_page(request, datasette)


@hookimpl
def register_routes():
    return [
        (r"^/admin/rules$", rules_route),
        (r"^/admin/rules/(?P<id>\d+)$", rule_action),
        (r"^/admin/rules/builtin/(?P<name>[^/]+)$", builtin_action),
    ]
