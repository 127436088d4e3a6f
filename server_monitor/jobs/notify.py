"""Delivery of notices (alerts, idle-GPU nudges, weekly digests) through Apprise.

Apprise (https://github.com/caronc/apprise, BSD-2-Clause) speaks 130+ services by URL: ``ntfys://``,
``tgram://``, ``slack://``, ``discord://``, ``msteams://``, ``mailto://``, ``json://`` … A
*target* is a name, a URL and the severities it receives. Targets come from:

* ``notifications.targets`` in ``config.yaml``: ``[{name, url, severities: [critical, warning]}]``;
* ``/admin`` (kept in ``auth.db``, :mod:`server_monitor.auth.contacts`, never in monitor.db);
* the older ``alerts.webhooks`` and ``alerts.smtp`` settings, which keep working unchanged:
  a Slack webhook on ``hooks.slack.com`` and a Feishu/Lark bot webhook on ``open.feishu.cn`` /
  ``open.larksuite.com`` are handed to Apprise's ``slack``/``feishu``/``lark`` services;
  ``alerts.smtp`` becomes a ``mailto://``/``mailtos://`` URL. A ``generic`` webhook (our own
  JSON body with rule, severity, server and times, which Apprise has no service for) and a
  Slack- or Feishu-format webhook on another host (a self-hosted Slack-compatible chat, a
  proxy) are posted by the small webhook code here, body unchanged.

Routing: an alert dict may carry ``"targets": [names]`` (set by the alert rules): it goes to
those targets only; else to every target whose ``severities`` holds the alert's severity (no
list: every severity). Unknown names are recorded as failed deliveries.

Delivery never blocks ingest (it runs in the job leader, outside any database transaction)
nor the other alerts for long: the targets of one notice are sent in parallel on a small pool
(``notifications.workers``), every connection has ``notifications.timeout_s``, one notice
waits at most that long (stragglers finish in the background and record their own outcome),
and one evaluation pass spends at most ``notifications.pass_budget_s`` on deliveries: the
notices left are not marked sent and go out on the next pass. A failed delivery is recorded
(target, time, one cleaned error line with URLs and tokens cut out) in ``auth.db``; ``/admin``
lists them and ``/-/health`` counts them.

Every string from an agent is hostile (docs/security.md L9, M3): notices are one line
(:func:`clean_text`), and for Apprise services ``<``, ``>`` and ``@`` become full-width look-alikes
(:func:`neutral`), so no ``<!channel>``, ``<at user_id="all">``, ``@everyone``, HTML or
disguised link reaches a chat; Slack-format bodies of the webhook code keep Slack's own escaping
(:func:`slack_escape`), Feishu bodies :func:`feishu_escape`. E-mail subjects are one line, so no
header can be injected.
"""

import concurrent.futures
import json
import logging
import queue
import re
import threading
import time
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import apprise
import urllib3

from monitor_agent import textrule

from ..auth.contacts import ContactError, NotifyStore, check_severities
from ..core.config import NOTIFY_DEFAULTS

log = logging.getLogger("server_monitor.notify")

# Line breaks, other controls and invisible/bidi characters in agent text (hostnames, GPU
# error messages, mountpoints) become one space in every notice (see docs/security.md M3: a newline in an e-mail
# Subject raised ValueError and killed the alert thread; also no forged lines in chat): the
# shared text rule (monitor_agent/textrule.py) plus, for one line, TAB, LF, ZWNJ/ZWJ and the
# invisible operators U+2061-U+2065.
_UNSAFE_TEXT = re.compile("[\t\n\u200c\u200d\u2061-\u2065" + textrule.UNSAFE_CLASS + "]+")


def clean_text(text):
    """``text`` on one line: controls, line/paragraph separators, bidi and zero-width marks → " "."""
    return _UNSAFE_TEXT.sub(" ", str(text)).strip()


def slack_escape(text):
    """Slack mrkdwn escaping (``&``, ``<``, ``>``): no ``<!channel>`` pings or disguised links (see docs/security.md L9)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def feishu_escape(text):
    """Feishu/Lark text: ``<`` and ``>`` as full-width look-alikes, so no ``<at user_id="all">`` (see docs/security.md L9)."""
    return text.replace("<", "\uff1c").replace(">", "\uff1e")


_NEUTRAL = str.maketrans({"<": "\uff1c", ">": "\uff1e", "@": "\uff20"})


def neutral(text):
    """Agent text for any Apprise service: one line (:func:`clean_text`), ``<`` ``>`` ``@`` as
    full-width look-alikes (U+FF1C, U+FF1E, U+FF20): no mention (``@channel``, ``@everyone``,
    ``<!here>``, ``<at user_id="all">``), tag or link markup survives in any chat's dialect."""
    return clean_text(text).translate(_NEUTRAL)


def escape_for(url):
    """The text rule of a service: e-mail (``mailto``, ``mailtos``) has no mentions or markup, so
    :func:`clean_text`; every other Apprise service :func:`neutral`."""
    return clean_text if str(url or "").lower().startswith(("mailto:", "mailtos:")) else neutral


def settings(config):
    """``notifications`` section of the hub config merged over ``NOTIFY_DEFAULTS`` (a dict)."""
    merged = dict(NOTIFY_DEFAULTS)
    merged.update(config.get("notifications") or {})
    return merged


class Target:
    """One place notices go: ``name``, ``url`` (an Apprise URL, or for ``fmt`` set an http(s)
    webhook posted by :class:`Notifier`'s own code), ``severities`` (list or None = all),
    ``source`` (``config``, ``admin``, ``alerts.webhooks``, ``alerts.smtp``), ``problem`` (why
    it cannot be used, e.g. a bad port; delivering then records that as a failure)."""

    def __init__(self, name, url, severities=None, fmt=None, source="config", problem=None):
        self.name, self.url, self.severities, self.fmt = name, url, severities, fmt
        self.source, self.problem = source, problem

    def escape(self):
        """The text rule for agent strings sent here: Slack or Feishu escaping for the webhook
        code's formats, :func:`clean_text` for generic JSON, else :func:`escape_for` the URL."""
        if self.fmt == "slack":
            return lambda text: slack_escape(clean_text(text))
        if self.fmt in ("feishu", "lark"):
            return lambda text: feishu_escape(clean_text(text))
        return clean_text if self.fmt else escape_for(self.url)

    def wants(self, severity):
        """True when this target receives notices of ``severity``."""
        return self.severities is None or severity in self.severities

    def shown_url(self):
        """The URL with secrets hidden: Apprise's privacy form (tokens and passwords shortened)
        without path or query (a webhook path is often the secret), or the webhook's host."""
        if self.fmt:
            parts = urlsplit(self.url or "")
            return f"{parts.scheme}://{parts.hostname or ''}/…"
        plugin = apprise.Apprise.instantiate(self.url) if self.url else None
        if plugin is None:
            return "(not a valid Apprise URL)"
        parts = urlsplit(plugin.url(privacy=True))
        return f"{parts.scheme}://{parts.netloc}" + ("/…" if parts.path.strip("/") or parts.query else "")


def native_url(url, fmt):
    """The Apprise URL for a legacy ``alerts.webhooks`` entry, or None when Apprise has no such
    service (``generic``, or a Slack/Feishu format on another host: posted by our own code).
    Slack on ``hooks.slack.com/services/T/B/C``: ``slack://T/B/C/`` (no Apprise footer or logo); Feishu and
    Lark bot hooks ``…/open-apis/bot/v2/hook/<token>``: ``feishu://<token>``, ``lark://<token>``."""
    parts = urlsplit(url or "")
    host = (parts.hostname or "").lower()
    if parts.scheme != "https":
        return None
    slack = re.match(r"^/services/([A-Za-z0-9]+)/([A-Za-z0-9]+)/([A-Za-z0-9]+)/?$", parts.path)
    if fmt == "slack" and host == "hooks.slack.com" and slack:
        # No Apprise logo or footer in the lab's channel: the notice as before, from the hub.
        return "slack://{}/{}/{}/?footer=no&image=no".format(*slack.groups())
    match = re.match(r"^/open-apis/bot/v2/hook/([A-Za-z0-9_-]+)/?$", parts.path)
    if fmt in ("feishu", "lark") and match:
        if host == "open.feishu.cn":
            return f"feishu://{match.group(1)}"
        if host == "open.larksuite.com":
            return f"lark://{match.group(1)}"
    return None


def mail_url(smtp, to):
    """Apprise ``mailto://`` (or ``mailtos://`` with ``starttls``/``ssl``) URL sending through the
    ``alerts.smtp`` server to the addresses ``to`` (list). Raises ValueError/KeyError/TypeError for
    a bad server setting (a port that is no number, no ``host`` or ``from``)."""
    port = int(smtp.get("port", 25))
    host = str(smtp["host"])
    secure = bool(smtp.get("starttls") or smtp.get("ssl"))
    user = smtp.get("username")
    auth = f"{quote(str(user), safe='')}:{quote(str(smtp.get('password') or ''), safe='')}@" if user else ""
    params = {"smtp": host, "from": str(smtp["from"]), "to": ",".join(to)}
    if secure:
        params["mode"] = "ssl" if smtp.get("ssl") else "starttls"
    return f"{'mailtos' if secure else 'mailto'}://{auth}{host}:{port}?{urlencode(params)}"


def legacy_targets(cfg):
    """Targets from the ``alerts`` section (``alerts.webhooks``: ``webhook-1``, ``webhook-2`` … or
    each entry's ``name``; ``alerts.smtp``: ``email``), for every severity."""
    found = []
    for number, hook in enumerate(cfg.get("webhooks") or [], 1):
        hook = hook if isinstance(hook, dict) else {"url": hook}
        fmt = hook.get("format") or "generic"
        url = hook.get("url")
        name = str(hook.get("name") or f"webhook-{number}")
        native = native_url(url, fmt)
        problem = None if url else "no url"
        found.append(Target(name, native or url, fmt=None if native else fmt, source="alerts.webhooks",
                            problem=problem))
    smtp = cfg.get("smtp")
    if smtp:
        try:
            to = smtp["to"] if isinstance(smtp["to"], list) else [smtp["to"]]
            found.append(Target("email", mail_url(smtp, to), source="alerts.smtp"))
        except (KeyError, TypeError, ValueError) as exc:
            found.append(Target("email", None, source="alerts.smtp",
                                problem=f"alerts.smtp: {type(exc).__name__}: {exc}"))
    return found


def config_targets(ncfg):
    """Targets of ``notifications.targets`` (entries without a name or url are skipped with a warning)."""
    found = []
    for entry in ncfg.get("targets") or []:
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("url"):
            log.warning("notifications.targets: an entry needs name and url: %r", entry)
            continue
        try:
            severities = check_severities(entry.get("severities"))
        except ContactError as exc:
            found.append(Target(str(entry["name"]), entry["url"], problem=str(exc)))
            continue
        found.append(Target(str(entry["name"]), str(entry["url"]), severities))
    return found


MAX_URL = 2000


def check_url(url, schemes=None):
    """``url`` stripped if Apprise can use it (and, when ``schemes`` is given, its scheme is one
    of them and an ntfy URL goes to ntfy.sh: a user's own contact never points the hub at a lab
    host), else :class:`ContactError` with a reason to show. Nothing is sent."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL or any(ord(c) < 33 for c in url):
        raise ContactError("Give one Apprise URL (no spaces), e.g. ntfys://ntfy.sh/my-topic or tgram://bottoken/chatid.")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if schemes is not None and scheme not in schemes:
        raise ContactError(f"URLs of kind {scheme or '?'}:// are not allowed here; use one of "
                           + ", ".join(f"{s}://" for s in sorted(schemes)) + ".")
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        raise ContactError("Apprise does not understand this URL (see https://appriseit.com/services/).")
    if schemes is not None and scheme in ("ntfy", "ntfys") and getattr(plugin, "mode", "") != "cloud" \
            and str(getattr(plugin, "host", "")).lower() != "ntfy.sh":
        raise ContactError("Here ntfy URLs go to ntfy.sh only (ntfys://ntfy.sh/your-topic); ask an admin for a lab server.")
    return url


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def scrub(error, url):
    """``error`` as one line of at most 300 characters without URLs and without any part (user,
    password, path segment, query value of 6+ characters) of the target's ``url``."""
    text = clean_text(error)
    secrets = set()
    if url:
        parts = urlsplit(url)
        secrets |= {parts.username or "", parts.password or ""}
        secrets |= set(re.split(r"[/,]", parts.path)) | set(re.split(r"[/,]", parts.netloc.split("@")[-1]))
        secrets |= {v for _, v in parse_qsl(parts.query)}
    text = _URL_IN_TEXT.sub("<url>", text)
    for secret in sorted((s for s in secrets if len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "…")
    return text[:300]


class _ThreadLog(logging.Handler):
    """Keeps the WARNING+ records Apprise logs in the thread that delivers, so a failure's reason
    is the one of its own delivery (deliveries run in parallel)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record):
        lines = getattr(self.local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage())

    def start(self):
        self.local.lines = []

    def stop(self):
        lines, self.local.lines = getattr(self.local, "lines", None) or [], None
        return lines


_apprise_log = _ThreadLog()
logging.getLogger("apprise").addHandler(_apprise_log)


MARKS = {"firing": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED", "test": "TEST"}

# Apprise's notify type sets the priority, colour and icon on ntfy, Discord, Slack, Teams …:
# a resolved notice is a success whatever its severity, else the severity picks it.
NOTIFY_TYPES = {"critical": apprise.NotifyType.FAILURE, "warning": apprise.NotifyType.WARNING,
                "info": apprise.NotifyType.INFO}


def notify_type(event, severity):
    """The Apprise ``NotifyType`` of a notice: ``success`` for ``event`` ``resolved``, else by
    ``severity`` (critical → ``failure``, warning → ``warning``, info or unknown → ``info``)."""
    if event == "resolved":
        return apprise.NotifyType.SUCCESS
    return NOTIFY_TYPES.get(severity, apprise.NotifyType.INFO)


def _utc(epoch):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


class DeliveryPool:
    """Runs deliveries on at most ``workers`` daemon threads, started on first use;
    :meth:`submit` returns a ``concurrent.futures.Future``.

    Not a ``ThreadPoolExecutor``: the interpreter joins an executor's threads at exit, so a
    delivery hanging on an unanswering target (up to ``notifications.timeout_s``, for each one
    queued) held the hub's exit after SIGTERM. Daemon threads do not: a notice cut short by the
    exit was never marked sent (``alerts.last_notified_at``), so the first pass after the restart
    sends it. One pool serves the whole process (:func:`delivery_pool`), so the notifiers built
    per request (``/admin`` tests, the rules page) add no threads."""

    def __init__(self, workers, name="notify"):
        self.workers, self.name = max(1, int(workers)), name
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = threading.Semaphore(0)

    def submit(self, fn, *args):
        """Queue ``fn(*args)``; its Future holds the result or the exception."""
        future = concurrent.futures.Future()
        self._queue.put((future, fn, args))
        if not self._idle.acquire(blocking=False):  # no thread waiting: start one, up to workers
            with self._lock:
                if self._threads < self.workers:
                    self._threads += 1
                    threading.Thread(target=self._run, name=f"{self.name}_{self._threads}", daemon=True).start()
        return future

    def _run(self):
        while True:
            future, fn, args = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # the Future carries it to whoever waits
                    future.set_exception(exc)
            del future, fn, args
            self._idle.release()


_POOL = None
_POOL_LOCK = threading.Lock()


def delivery_pool(workers):
    """The process's :class:`DeliveryPool`, grown to ``workers`` threads at most when a notifier
    asks for more than it had."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = DeliveryPool(workers)
        _POOL.workers = max(_POOL.workers, int(workers))
        return _POOL


class Notifier:
    """Sends notices to the targets (see the module docstring).

    ``cfg``: the ``alerts`` settings (``server_monitor.jobs.alerts.settings``; its ``webhooks``,
    ``smtp`` and ``dashboard_url`` are read on every send). ``ncfg``: :func:`settings` (defaults
    when None). ``store``: a :class:`~server_monitor.auth.contacts.NotifyStore` (admin targets,
    failure records) or None (then failures are only logged). ``http``: a urllib3 pool for the
    webhook code.
    """

    def __init__(self, cfg, ncfg=None, store=None, http=None):
        self.cfg = cfg
        self.ncfg = dict(NOTIFY_DEFAULTS, **(ncfg or {}))
        self.store = store
        self.timeout = float(self.ncfg["timeout_s"])
        self.http = http or urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=self.timeout))
        self._pool = delivery_pool(int(self.ncfg["workers"]))
        self._deadline = None
        # The hub's address for links when alerts.dashboard_url is not set (server.public_url).
        self.public_url = None

    @classmethod
    def from_config(cls, config, cfg):
        """The hub's notifier: ``cfg`` the alerts settings, targets and failures in ``config``'s auth.db,
        links under ``alerts.dashboard_url`` or else ``server.public_url``."""
        notifier = cls(cfg, settings(config), NotifyStore(config.auth_db_path))
        notifier.public_url = config.get("server.public_url")
        return notifier

    def link_base(self):
        """``alerts.dashboard_url``, else ``server.public_url``, without a trailing slash; None when neither."""
        base = self.cfg.get("dashboard_url") or self.public_url
        return str(base).rstrip("/") if base else None

    # -- what is sent --------------------------------------------------------------------------
    @staticmethod
    def text(event, alert, escape=clean_text):
        """One-line notice text (agent strings cleaned by ``escape``: :func:`clean_text`, or :func:`neutral`)."""
        return f"[{MARKS[event]}] [{alert['severity']}] {escape(alert['message'])}"

    def details(self, event, alert, escape=clean_text):
        """The notice's body under its title (:meth:`text`, the one-line summary): the message,
        rule and severity, server, start (and end) time in UTC and the links (the dashboard and
        the server's history page) when the hub knows its address (:meth:`link_base`). Agent
        text is cleaned by ``escape``; one item a line (newlines only between them)."""
        lines = [escape(alert["message"]), f"Rule: {escape(alert['rule'])} · severity {alert['severity']}"]
        if alert.get("server"):
            lines.append(f"Server: {escape(alert['server'])}")
        if alert.get("started_at"):
            lines.append(f"Since: {_utc(alert['started_at'])}")
        if event == "resolved" and alert.get("resolved_at"):
            lines.append(f"Resolved: {_utc(alert['resolved_at'])}")
        base = self.link_base()
        if base:
            lines.append(f"Dashboard: {base}/")
            if isinstance(alert.get("server_id"), int):
                lines.append(f"History: {base}/servers/{alert['server_id']}/history")
        return "\n".join(lines)

    def body(self, fmt, event, alert):
        """Webhook body for ``fmt``: ``generic`` JSON, ``slack`` (``text``), ``feishu`` (Lark bot)."""
        text = self.text(event, alert)
        if fmt == "slack":
            text = slack_escape(text)
        elif fmt in ("feishu", "lark"):
            text = feishu_escape(text)
        if self.cfg.get("dashboard_url"):
            text += f"\n{self.cfg['dashboard_url']}"
        if fmt == "slack":
            return {"text": text}
        if fmt in ("feishu", "lark"):
            return {"msg_type": "text", "content": {"text": text}}
        return {"status": "resolved" if event == "resolved" else "firing", "event": event, "text": text,
                "rule": alert["rule"], "severity": alert["severity"], "server_id": alert["server_id"],
                "subject": alert["subject"], "message": alert["message"], "started_at": alert.get("started_at"),
                "resolved_at": alert.get("resolved_at"), "dashboard_url": self.cfg.get("dashboard_url")}

    # -- targets and routing -------------------------------------------------------------------
    def targets(self):
        """Every target now: ``alerts.webhooks``/``alerts.smtp``, ``notifications.targets``, then
        the admin's (auth.db). A later target with a name already taken is skipped."""
        found = legacy_targets(self.cfg) + config_targets(self.ncfg)
        if self.store is not None:
            try:
                found += [Target(t["name"], t["url"], t["severities"], source="admin") for t in self.store.targets()]
            except Exception as exc:  # auth.db unreadable: the configured targets still work
                log.warning("notification targets in auth.db unreadable: %s", exc)
        seen, unique = set(), []
        for target in found:
            if target.name.lower() not in seen:
                seen.add(target.name.lower())
                unique.append(target)
        return unique

    def route(self, alert):
        """``(targets, unknown names)`` for ``alert``: its ``targets`` names when it has them, else
        every target wanting its ``severity``."""
        every = self.targets()
        names = alert.get("targets")
        if names:
            by_name = {t.name.lower(): t for t in every}
            return ([by_name[str(n).lower()] for n in names if str(n).lower() in by_name],
                    [str(n) for n in names if str(n).lower() not in by_name])
        return [t for t in every if t.wants(alert.get("severity"))], []

    # -- delivery ------------------------------------------------------------------------------
    def begin_pass(self, now=None):
        """Start an evaluation pass: deliveries of firing notices and reminders stop once this
        pass has spent ``notifications.pass_budget_s`` seconds (the rest go next pass)."""
        self._deadline = (time.monotonic() if now is None else now) + float(self.ncfg["pass_budget_s"])

    def send(self, event, alert):
        """Deliver ``alert`` (dict: rule, severity, server_id, subject, message, optional
        started_at, resolved_at, targets) for ``event`` (firing, reminder, resolved, test).
        Returns True when at least one target took it or nothing is to be sent; False when every
        delivery failed or the pass's budget is spent (the engine then retries next pass)."""
        chosen, unknown = self.route(alert)
        for name in unknown:
            self._failed(name, None, "no target of this name (the alert rule names it)")
        if not chosen:
            return not unknown
        spent = self._deadline is not None and time.monotonic() >= self._deadline
        if spent and event != "resolved":
            log.warning("notification budget of this pass spent: %s %s waits for the next pass", event, alert.get("rule"))
            return False
        futures = [self._pool.submit(self.deliver, target, event, alert) for target in chosen]
        if event == "resolved" and spent:
            return True  # resolved notices are not retried: they go out in the background
        wait = self.timeout + 1
        if self._deadline is not None:
            wait = max(0.0, min(wait, self._deadline - time.monotonic()))
        done, _ = concurrent.futures.wait(futures, timeout=wait)
        return any(f.result() for f in done)

    def deliver(self, target, event, alert):
        """Send one notice to one target now (in the calling thread); True on success. A
        failure is recorded (:meth:`_failed`) and never raised."""
        try:
            if target.problem:
                raise ValueError(target.problem)
            if target.fmt:
                self._post(target, self.body(target.fmt, event, alert))
            else:
                escape = escape_for(target.url)
                self._apprise(target, self.text(event, alert, escape), self.details(event, alert, escape),
                              notify_type(event, alert.get("severity")))
        except Exception as exc:  # one bad target never stops the others (see docs/security.md M3)
            self._failed(target.name, target.url, f"{type(exc).__name__}: {exc}")
            return False
        self._ok(target.name)
        return True

    def send_message(self, target, title, body=None):
        """Send a free text (nudge, digest, test) to ``target`` now; True on success, failure recorded.
        ``title`` and ``body`` are built by the caller with ``escape(agent text)`` where ``escape`` is
        :func:`escape_for` of the target's URL (``build(escape) -> (title, body)``), or plain strings."""
        if callable(title):
            title, body = title(target.escape())
        try:
            if target.problem:
                raise ValueError(target.problem)
            if target.fmt:
                self._post(target, {"text": title + "\n" + body} if target.fmt != "generic"
                           else {"event": "message", "title": title, "text": body})
            else:
                self._apprise(target, title, body)
        except Exception as exc:  # noqa: BLE001 - recorded, never raised
            self._failed(target.name, target.url, f"{type(exc).__name__}: {exc}")
            return False
        self._ok(target.name)
        return True

    def _post(self, target, body):
        response = self.http.request("POST", target.url, body=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")

    def _apprise(self, target, title, body, kind=apprise.NotifyType.INFO):
        plugin = apprise.Apprise.instantiate(target.url)
        if plugin is None:
            raise ValueError("Apprise does not understand this URL")
        plugin.socket_connect_timeout = plugin.socket_read_timeout = self.timeout
        _apprise_log.start()
        try:
            ok = plugin.notify(body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT)
        finally:
            lines = _apprise_log.stop()
        if not ok:
            raise RuntimeError("; ".join(lines[-2:]) or "Apprise reported a failure")

    def _ok(self, name):
        if self.store is not None:
            try:
                self.store.record_ok(name)
            except Exception as exc:  # noqa: BLE001 - bookkeeping only
                log.warning("could not record a delivery to %s: %s", name, exc)

    def _failed(self, name, url, error):
        error = scrub(error, url)
        log.warning("notification to %s failed: %s", name, error)
        if self.store is not None:
            try:
                self.store.record_failure(name, error)
            except Exception as exc:  # noqa: BLE001 - the log line above still says it
                log.warning("could not record the failure: %s", exc)
