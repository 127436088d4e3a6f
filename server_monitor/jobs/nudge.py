"""Idle-GPU nudges to the GPUs' holders and the weekly digest (issue 26 item 1).

Every ``notifications.nudge_interval_s`` the job leader reads the ``idle_holders`` canned query
(GPUs whose processes hold ``features.idle_min_mib`` MiB at under ``features.idle_max_util`` %
with utilization known, for at least ``core.config.idle_hours``: ``notifications.nudge_after_hours``
when set, else ``features.idle_hours``; the dashboard's Idle holders panel lists the same GPUs).
Each holder with a contact in ``auth.db`` (``notify_contacts``: an e-mail address, sent through
the ``alerts.smtp`` server, and/or an Apprise URL) gets one message listing their idle GPUs;
again every ``nudge_repeat_hours`` while the GPU stays idle, never inside ``quiet_hours`` on the
holder's own clock (the contact's ``tz``, an IANA zone; hub local time without one;
:func:`quiet_note` says whose time on the dashboard and /admin). Times in a nudge are in the
holder's zone with its name (UTC without one). ``idle_nudges`` in monitor.db keeps who was nudged when
(never where to): the dashboard's idle panel shows it.

Once a week (``digest_weekday``, from ``digest_hour``, on the holder's clock as above) everyone who opted in gets
a digest of the last 7 UTC days (today included) from ``gpu_usage_user_1d``, the table of the
per-user page: their GPU-hours, idle GPU-hours (GPU time held while utilization.gpu was known and
under ``features.idle_max_util``: ``idle_seconds``, the page's number) and top jobs/containers;
admins (role ``admin`` or the config admin) also get fleet utilization and the top idle holders.
Nudges and digests link to the holder's page (``/users/<name>``, absolute under
``alerts.dashboard_url``).
"""

import datetime
import logging
import threading
import time
import zoneinfo

from ..auth.accounts import Accounts
from ..core.config import idle_hours
from ..auth.contacts import NotifyStore, known_tz
from ..serving.queries import QUERIES, config_params
from ..serving.web import user_url
from ..storage import schema
from . import notify

log = logging.getLogger("server_monitor.nudge")
# The digest's week: the last 7 UTC days, today included (the per-user page's days=7).
DIGEST_DAYS = 7


def zone_of(tz):
    """The :class:`zoneinfo.ZoneInfo` of ``tz`` (a contact's IANA time zone name), or None for
    hub local time when ``tz`` is empty or not a name this hub lists (:func:`contacts.known_tz`):
    a name stored by a hub with a newer tz database, or what a hand edit or a restored auth.db
    put there (``America``, a directory; a 300-character name; ``localtime``; a path). A nudge
    then follows hub time rather than failing every holder's pass (round 4 attack run B2); only
    listed names reach ZoneInfo's cache."""
    if not known_tz(tz):
        return None
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def local_time(now, tz=None):
    """``now`` (epoch s) as a :class:`datetime.datetime` in the IANA zone ``tz`` (aware), or in
    hub local time (naive) when ``tz`` is None/unknown (:func:`zone_of`)."""
    return datetime.datetime.fromtimestamp(now, zone_of(tz))


def zone_label(tz):
    """How a time in ``tz`` is labelled: the zone's name (``Europe/Zurich``), or ``(hub time)``."""
    return tz if zone_of(tz) else "(hub time)"


def quiet(now, hours, tz=None):
    """True when ``now`` (epoch s) falls in ``hours`` = ``[start, end)`` (local hours 0-23 in the
    IANA zone ``tz``, hub local time when None; ``start > end`` wraps midnight; None or equal:
    never quiet)."""
    if not hours or len(hours) != 2 or hours[0] == hours[1]:
        return False
    hour = local_time(now, tz).hour
    start, end = int(hours[0]), int(hours[1])
    return start <= hour < end if start < end else (hour >= start or hour < end)


def quiet_until(now, hours, tz=None):
    """When the quiet period that holds ``now`` ends (epoch s: the next ``hours[1]``:00 wall-clock
    time in the zone ``tz``, hub local time when None; across a DST change that is still 07:00 on
    the clock, so the UTC instant moves with the offset), or None when ``now`` is not inside
    ``hours`` (see :func:`quiet`). An end hour that the clock skips (spring forward) ends at the
    change."""
    if not quiet(now, hours, tz):
        return None
    local = local_time(now, tz)
    for days in (0, 1):
        day = local.date() + datetime.timedelta(days=days)
        end = datetime.datetime.combine(day, datetime.time(int(hours[1])), tzinfo=local.tzinfo).timestamp()
        if end > now:
            return int(end)
    return None


def quiet_note(ncfg, now, tz=None):
    """What the dashboard's Idle holders panel and /admin say while quiet hours hold nudges back:
    ``"nudges held for quiet hours until 07:00 (hub time)"``, or for a holder with a time zone
    ``tz`` ``"... until 07:00 Europe/Zurich"`` (their wall clock); None when nudges are off or
    ``now`` is outside ``ncfg["quiet_hours"]`` there (``ncfg``: :func:`notify.settings`)."""
    until = quiet_until(now, ncfg.get("quiet_hours"), tz) if ncfg.get("nudges") else None
    return f"nudges held for quiet hours until {local_time(until, tz):%H:%M} {zone_label(tz)}" if until else None


def clock_text(epoch, tz=None):
    """``YYYY-MM-DD HH:MM Europe/Zurich`` of ``epoch`` (s) in the holder's zone ``tz``, or
    ``YYYY-MM-DD HH:MM UTC`` without one (the times in a nudge)."""
    if zone_of(tz):
        return f"{local_time(epoch, tz):%Y-%m-%d %H:%M} {tz}"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def idle_gpus(conn, config, after_hours):
    """Rows of the ``idle_holders`` query (dicts) idle at least ``after_hours`` h, every server,
    holders visible: ``server_id``, ``gpu_id``, ``server``, ``gpu_index``, ``held_mib``,
    ``utilization_gpu``, ``idle_since``, ``idle_hours``, ``users`` (comma list)."""
    params = {"min_mib": "", "max_util": "", "hours": str(after_hours), "_scope_all": 1, "_scope_servers": "[]",
              "_scope_processes": 1, **config_params(config)}
    cursor = conn.execute(QUERIES["idle_holders"]["sql"], params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor]


def contact_targets(holder, contact, cfg):
    """:class:`notify.Target` list for ``contact`` (a ``notify_contacts`` row): the e-mail through
    ``alerts.smtp`` (``cfg``: the alerts settings), the Apprise URL."""
    found = []
    if contact.get("email"):
        smtp = cfg.get("smtp")
        if not smtp:
            found.append(notify.Target(f"contact:{holder}:email", None, source="contact",
                                       problem="e-mail contacts need an alerts.smtp server"))
        else:
            try:
                found.append(notify.Target(f"contact:{holder}:email", notify.mail_url(smtp, [contact["email"]]),
                                           source="contact"))
            except (KeyError, TypeError, ValueError) as exc:
                found.append(notify.Target(f"contact:{holder}:email", None, source="contact",
                                           problem=f"alerts.smtp: {type(exc).__name__}: {exc}"))
    if contact.get("url"):
        found.append(notify.Target(f"contact:{holder}:url", contact["url"], source="contact"))
    return found


def nudge_text(holder, rows, page_url, tz=None):
    """``build(escape) -> (title, body)`` of a nudge to ``holder`` about ``rows`` (idle_holders rows);
    ``page_url``: the holder's page (:func:`server_monitor.serving.web.user_url`); times in the
    holder's IANA zone ``tz`` with its name (UTC without one: :func:`clock_text`)."""
    def build(escape):
        servers = sorted({str(r["server"]) for r in rows})
        title = (f"[IDLE GPU] {escape(holder)}: {len(rows)} GPU{'s' if len(rows) != 1 else ''} held idle on "
                 + escape(", ".join(servers[:3]) + (" …" if len(servers) > 3 else "")))
        lines = [f"{escape(r['server'])} GPU {r['gpu_index']}: {r['held_mib']} MiB held at {r['utilization_gpu']} %"
                 f" utilization for {r['idle_hours']} h (since "
                 f"{clock_text(r['idle_since'], tz)})" for r in rows]
        lines.append("If you are done, end the process or job so others can use the GPU.")
        lines.append(f"Your GPUs, GPU-hours and idle GPU-hours: {escape(page_url)}")
        return title, "\n".join(lines)
    return build


def week_start(now):
    """Epoch s of the first UTC day of the digest's week before ``now`` (epoch s): the last 7 UTC
    days, today included, exactly the days ``user_gpu_hours_daily`` answers for ``days=7``."""
    return (int(now) // 86400 - DIGEST_DAYS + 1) * 86400


def digest_numbers(conn, holder, now, admin):
    """The digest of ``holder`` for the last 7 UTC days (today included, up to the last maintenance
    pass): ``{"since": epoch s of the first day, "gpu_hours", "idle_gpu_hours", "top_jobs":
    [(container or job, gpu_hours)]}`` plus for an ``admin`` ``"fleet_gpu_hours"``,
    ``"fleet_utilization"`` (%, None unknown), ``"top_idle": [(user, idle_gpu_hours)]``.

    The holder's numbers come from ``gpu_usage_user_1d``, the table of the per-user page
    (``/users/<name>``: ``user_gpu_hours_daily``, ``user_jobs``), so the digest and the page give the
    same GPU-hours and idle GPU-hours for the same week: idle is ``idle_seconds``, the GPU time held
    while utilization.gpu was known and under ``features.idle_max_util``. Every server counts (the
    page of an admin). Fleet GPU-hours and utilization come from ``gpu_usage_1h`` (owners without
    a user name included); the top idle holders from ``gpu_usage_user_1d`` (its day index)."""
    since = week_start(now)
    gpu_hours, idle_hours = conn.execute(
        "SELECT coalesce(sum(gpu_seconds), 0) / 3600.0, coalesce(sum(idle_seconds), 0) / 3600.0"
        " FROM gpu_usage_user_1d WHERE user = ? AND day >= ?", (holder, since)).fetchone()
    top = conn.execute("SELECT coalesce(nullif(container, ''), '(on the host)'), sum(gpu_seconds) / 3600.0"
                       " FROM gpu_usage_user_1d WHERE user = ? AND day >= ? GROUP BY container ORDER BY 2 DESC LIMIT 5",
                       (holder, since)).fetchall()
    numbers = {"since": since, "gpu_hours": round(gpu_hours, 1), "idle_gpu_hours": round(idle_hours, 1),
               "top_jobs": [(name, round(hours, 1)) for name, hours in top]}
    if admin:
        total, util = conn.execute("SELECT coalesce(sum(gpu_seconds), 0) / 3600.0,"
                                   " sum(util_seconds) / nullif(sum(util_known_seconds), 0) FROM gpu_usage_1h"
                                   " WHERE hour >= ?", (since,)).fetchone()
        top_idle = conn.execute("SELECT user, sum(idle_seconds) / 3600.0 FROM gpu_usage_user_1d WHERE day >= ?"
                                " GROUP BY user HAVING sum(idle_seconds) > 0 ORDER BY 2 DESC, 1 LIMIT 5",
                                (since,)).fetchall()
        numbers.update(fleet_gpu_hours=round(total, 1), fleet_utilization=None if util is None else round(util, 1),
                       top_idle=[(user, round(hours, 1)) for user, hours in top_idle])
    return numbers


def digest_text(holder, numbers, page_url):
    """``build(escape) -> (title, body)`` of the weekly digest (``numbers``: :func:`digest_numbers`;
    ``page_url``: the holder's page, :func:`server_monitor.serving.web.user_url`)."""
    def build(escape):
        first = time.strftime("%Y-%m-%d", time.gmtime(numbers["since"]))
        lines = [f"Your GPU-hours since {first} (UTC days): {numbers['gpu_hours']:.1f}"
                 f" (idle GPU-hours: {numbers['idle_gpu_hours']:.1f})"]
        lines += [f"  {escape(name)}: {hours:.1f} GPU-hours" for name, hours in numbers["top_jobs"]]
        if "fleet_gpu_hours" in numbers:
            util = "unknown" if numbers["fleet_utilization"] is None else f"{numbers['fleet_utilization']} %"
            lines.append(f"Fleet: {numbers['fleet_gpu_hours']:.1f} GPU-hours held, average utilization {util}")
            lines.append("Top idle holders: " + (", ".join(f"{escape(u)} {h:.1f} idle GPU-hours"
                                                          for u, h in numbers["top_idle"]) or "none"))
        lines.append(f"Your page (GPUs now, GPU-hours per day, jobs): {escape(page_url)}")
        return f"[DIGEST] GPU use of {escape(holder)}, last {DIGEST_DAYS} days", "\n".join(lines)
    return build


class Nudger:
    """One pass of nudges and digests over ``config``'s databases, sending with ``notifier``
    (a :class:`notify.Notifier`; its ``store`` holds the contacts)."""

    def __init__(self, config, cfg, notifier):
        self.config, self.cfg, self.notifier = config, cfg, notifier
        self.ncfg = notifier.ncfg
        self.store = notifier.store or NotifyStore(config.auth_db_path)

    def page_url(self, holder):
        """The link to ``holder``'s page in their nudges and digests: absolute under
        ``alerts.dashboard_url`` (else ``server.public_url``) when set, else the path alone."""
        return user_url(holder, self.cfg.get("dashboard_url") or self.config.get("server.public_url"))

    def run_once(self, now=None):
        """Nudge and send digests now; returns ``{"nudged": [holder], "digests": [holder]}``."""
        now = int(time.time() if now is None else now)
        conn = schema.connect(self.config.db_path, timeout=30)
        try:
            return {"nudged": self.nudge(conn, now) if self.ncfg.get("nudges") else [],
                    "digests": self.digests(conn, now)}
        finally:
            conn.close()

    def nudge(self, conn, now):
        after = idle_hours(self.config)  # the Idle holders panel's threshold too
        repeat = float(self.ncfg["nudge_repeat_hours"]) * 3600
        rows = idle_gpus(conn, self.config, after)
        by_holder = {}
        for row in rows:
            for holder in str(row.get("users") or "").split(","):
                if holder:
                    by_holder.setdefault(holder, []).append(row)
        contacts = self.store.contacts_for(by_holder)
        nudged = []
        for holder, gpus in sorted(by_holder.items()):
            contact = contacts.get(holder.lower())
            # Quiet hours on the holder's own clock (their contact's time zone), else hub time.
            if contact is None or quiet(now, self.ncfg.get("quiet_hours"), contact.get("tz")):
                continue
            due = []
            for row in gpus:
                last = conn.execute("SELECT max(last_at) FROM idle_nudges WHERE gpu_id = ? AND holder = ?"
                                    " AND idle_since BETWEEN ? AND ?",
                                    (row["gpu_id"], holder, row["idle_since"] - 600, row["idle_since"] + 600)).fetchone()[0]
                if last is None or now - last >= repeat:
                    due.append(row)
            if not due:
                continue
            build = nudge_text(holder, due, self.page_url(holder), contact.get("tz"))
            sent = [self.notifier.send_message(t, build) for t in contact_targets(holder, contact, self.cfg)]
            if any(sent):
                for row in due:
                    conn.execute("INSERT INTO idle_nudges (gpu_id, holder, idle_since, first_at, last_at) VALUES (?,?,?,?,?)"
                                 " ON CONFLICT (gpu_id, holder, idle_since) DO UPDATE SET last_at = excluded.last_at,"
                                 " nudges = nudges + 1", (row["gpu_id"], holder, row["idle_since"], now, now))
                nudged.append(holder)
        conn.execute("DELETE FROM idle_nudges WHERE last_at < ?", (now - 30 * 86400,))
        return nudged

    def digests(self, conn, now):
        accounts = Accounts(self.config.auth_db_path)
        admin_name = (self.config.get("auth.username") or "").lower()
        sent = []
        for contact in self.store.digest_contacts():
            # digest_weekday from digest_hour on the holder's own clock (their time zone), else hub time.
            local = local_time(now, contact.get("tz"))
            if local.weekday() != int(self.ncfg["digest_weekday"]) or local.hour < int(self.ncfg["digest_hour"]):
                continue
            if (contact["digest_sent_at"] or 0) > now - 6 * 86400:
                continue
            holder = contact["holder"]
            user = accounts.user(holder)
            admin = holder.lower() == admin_name or (user is not None and user["role"] == "admin")
            build = digest_text(holder, digest_numbers(conn, holder, now, admin), self.page_url(holder))
            if any([self.notifier.send_message(t, build) for t in contact_targets(holder, contact, self.cfg)]):
                self.store.digest_sent(holder, now)
                sent.append(holder)
        return sent


class NudgeThread(threading.Thread):
    """Runs :meth:`Nudger.run_once` every ``notifications.nudge_interval_s`` seconds; a failing pass
    is logged (``last_error``) and retried, never ends the thread (like the alert thread)."""

    def __init__(self, nudger):
        super().__init__(name="nudges", daemon=True)
        self.nudger = nudger
        self.stopped = threading.Event()
        self.last_error = None

    def run(self):
        while not self.stopped.wait(float(self.nudger.ncfg["nudge_interval_s"])):
            try:
                result = self.nudger.run_once()
                self.last_error = None
                if any(result.values()):
                    log.info("nudges: %s", result)
            except Exception as exc:  # noqa: BLE001 - keep nudging whatever one pass hit
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("nudge pass failed, will retry")
