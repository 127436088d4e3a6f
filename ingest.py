"""WSGI ingest endpoint: ``POST /api/report`` from agents into ``monitor.db``.

Mounted into the hub process on Datasette's port by ``plugins/sm_gate.py``, and also
runnable on its own under any WSGI server::

    SERVER_MONITOR_CONFIG=config.yaml gunicorn ingest:application

Request: ``Authorization: Bearer <agent.token>``, ``Content-Type: application/json``,
optional ``Content-Encoding: gzip``, body either one report object or a batch
``{"reports": [report, ...]}`` (see ``docs/api.md``).

Answers (always JSON): 201 stored, 200 duplicate (already stored), 207 batch results,
400 bad body or contract violation (message names the field), 401 bad token, 403 per-host token used for another host, 404 other
path, 405 other method, 411 no Content-Length, 413 too large, 415 bad encoding, 429 too many new
servers from the shared token in the last hour (``agent.max_new_hosts_per_hour``, with ``Retry-After``),
503 database unavailable (with ``Retry-After``). Never 500 for any input.
"""

import hmac
import json
import logging
import sqlite3
import threading
import time
import zlib

from server_monitor.core import config as config_mod
from server_monitor.storage import dbguard, instance, schema
from server_monitor.auth import tokens
from server_monitor.storage.contract import ContractError, validate_report
from server_monitor.storage.store import NotStored, machine_identity, sample_time, store_reports

log = logging.getLogger("server_monitor.ingest")

REPORT_PATH = "/api/report"
MAX_BATCH = 500
# Reports written in one transaction at most (group commit): a spool replay of MAX_BATCH reports
# does not hold the writer lock, and the other workers' agents, for its whole length.
MAX_GROUP = 64


class HTTPError(Exception):
    """An answer other than success; ``status`` is the HTTP code, ``str()`` the message."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


_REASONS = {
    200: "OK", 201: "Created", 207: "Multi-Status", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def decode_body(raw, encoding, max_bytes):
    """Bytes of a request body to a JSON value.

    ``encoding`` is the Content-Encoding header (``gzip``/``identity``/empty). The
    decompressed size is capped at ``max_bytes`` (413). Raises :class:`HTTPError` for
    bad encodings (415), bad gzip or JSON (400).
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "gzip":
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = inflater.decompress(raw, max_bytes + 1)
            if len(data) > max_bytes or inflater.unconsumed_tail:
                raise HTTPError(413, f"decompressed body is larger than {max_bytes} bytes")
            if not inflater.eof:
                raise HTTPError(400, "gzip body is truncated")
            if inflater.unused_data:
                raise HTTPError(400, f"{len(inflater.unused_data)} bytes of trailing data after the gzip stream")
        except zlib.error as exc:
            raise HTTPError(400, f"body is not valid gzip: {exc}")
        raw = data
    elif encoding != "identity":
        raise HTTPError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPError(400, "body is not valid JSON: nested too deeply")
    except ValueError as exc:
        raise HTTPError(400, f"body is not valid JSON: {exc}")


class IngestApp:
    """The WSGI application. One instance per hub; thread-safe (a connection per thread)."""

    def __init__(self, config):
        self.token = config.get("agent.token").encode("utf-8")
        # agent.shared_token_enabled: false leaves only per-host tokens (see docs/security.md I8).
        self.shared_token_enabled = config.get("agent.shared_token_enabled", True) is not False
        self.max_bytes = int(config.get("agent.max_report_bytes", 1_048_576))
        # New servers the shared token may create per hour (security review I-4; 0: no cap).
        self.max_new_hosts_per_hour = int(config.get("agent.max_new_hosts_per_hour", 0) or 0)
        self.db_path = config.db_path
        # Oldest stored time accepted (see docs/security.md L3): the longest history kept (hourly roll-ups), at least
        # the raw retention. Older means a broken clock or a forged report; 400 naming the field.
        self.max_age_s = int(86400 * max(float(config.get("data.retention_days", 7)),
                                         float(config.get("data.rollup_1h_days", 730))))
        self.auth_db_path = config.auth_db_path
        self._local = threading.local()
        schema.migrate(self.db_path)
        self.guard = dbguard.watch(self.db_path)  # see docs/reliability.md H2: notice the file being deleted or replaced
        # Writes of every worker process and of the maintenance pass queue on a lock file
        # instead of SQLite's sleeping busy handler (server_monitor.storage.instance.WriterLock).
        self.writer_lock = instance.WriterLock(self.db_path)

    # -- storage -------------------------------------------------------------------
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = schema.connect(self.db_path)
        return conn

    def _auth_conn(self):
        conn = getattr(self._local, "auth", None)
        if conn is None:
            conn = self._local.auth = tokens.connect(self.auth_db_path)
        return conn

    def _check_one(self, obj, received_at, only_host):
        """Everything about one report but the write: ``(status, body, None)`` when it is
        answered without storing (400/403), ``(None, None, report)`` when it is to be stored.

        ``only_host``: the machine identity a per-host token may write, or None (shared token).
        """
        try:
            report = validate_report(obj)
        except ContractError as exc:
            report_id = obj.get("report_id") if isinstance(obj, dict) else None
            return 400, {"error": str(exc), "report_id": report_id if isinstance(report_id, str) else None}, None
        ts, _ = sample_time(report, received_at)
        if ts < received_at - self.max_age_s:
            return 400, {"error": f"sample_time: the report's time (corrected for the agent's clock skew) is"
                                  f" {(received_at - ts) / 86400:.0f} days before the hub's clock; the hub keeps"
                                  f" at most {self.max_age_s / 86400:.0f} days (data.rollup_1h_days)",
                         "report_id": report["report_id"]}, None
        if only_host is not None and machine_identity(report["host"]) != only_host:
            return 403, {"error": f"this token may only report for host {only_host!r}",
                         "report_id": report["report_id"]}, None
        if only_host is not None:
            # A per-host token cannot take the name of another server (see docs/security.md L10).
            other = self._conn().execute(
                "SELECT id FROM servers WHERE machine_id != ?1 AND (hostname = ?2 OR display_name = ?2) LIMIT 1",
                (only_host, report["host"]["hostname"])).fetchone()
            if other is not None:
                return 403, {"error": f"host.hostname: {report['host']['hostname']!r} is the name of another server"
                                      f" (id {other[0]}); this token's host may not use it",
                             "report_id": report["report_id"]}, None
        return None, None, report

    def write(self, requests):
        """Store the reports of several prepared requests (:meth:`prepare`), at most
        :data:`MAX_GROUP` per transaction (group commit), and fill in their answers.

        Each transaction holds the writer lock; a report that fails is answered alone (503 for
        a database error, 500 for a bug) and the others are stored. When a transaction fails as a
        whole (disk full, I/O error), its reports are answered 503 and nothing of them is stored.
        """
        entries = [entry for request in requests for entry in request.entries if entry[2] is not None]
        failed_hosts = set()  # a host whose report failed: its later ones wait for the retry (order)
        for start in range(0, len(entries), MAX_GROUP):
            group = entries[start:start + MAX_GROUP]
            try:
                with self.writer_lock:
                    results = store_reports(self._conn(), [(entry[2], entry[3]) for entry in group], failed_hosts)
            except sqlite3.Error as exc:
                log.warning("database unavailable: %s", exc)
                results = [exc] * len(group)
                failed_hosts.update(machine_identity(entry[2]["host"]) for entry in group)
            for entry, result in zip(group, results):
                report = entry[2]
                entry[2] = None
                if isinstance(result, sqlite3.Error):
                    if not isinstance(result, NotStored):
                        log.warning("database unavailable: %s", result)
                    entry[0], entry[1] = 503, {"error": f"database unavailable: {result}",
                                               "report_id": report["report_id"]}
                elif isinstance(result, BaseException):
                    log.error("storing report %s failed", report["report_id"], exc_info=result)
                    entry[0], entry[1] = 500, {"error": "internal error", "report_id": report["report_id"]}
                elif result["stored"]:
                    entry[0], entry[1] = 201, {"report_id": report["report_id"], "stored": True}
                    if report["nulled"]:
                        entry[1]["nulled"] = report["nulled"][:20]
                    if report["replaced"]:  # free text cleaned by the shared text rule (see docs/security.md N2)
                        entry[1]["replaced"] = report["replaced"][:20]
                else:
                    entry[0], entry[1] = 200, {"report_id": report["report_id"], "stored": False, "duplicate": True}

    # -- HTTP ----------------------------------------------------------------------
    def _authorize(self, environ):
        """None for the shared token, the allowed machine id for a per-host token; else 401."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise HTTPError(401, "missing 'Authorization: Bearer <agent token>' header",
                            [("WWW-Authenticate", 'Bearer realm="server-monitor"')])
        if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token):
            if not self.shared_token_enabled:
                raise HTTPError(401, "the shared agent token is disabled on this hub (agent.shared_token_enabled:"
                                     " false); use a per-host token",
                                [("WWW-Authenticate", 'Bearer realm="server-monitor", error="invalid_token"')])
            return None
        host = tokens.host_for_token(self._auth_conn(), given)
        if host is None:
            raise HTTPError(401, "invalid agent token",
                            [("WWW-Authenticate", 'Bearer realm="server-monitor", error="invalid_token"')])
        return host

    def _read_body(self, environ):
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.strip():
            raise HTTPError(411, "Content-Length header is required")
        try:
            length = int(length)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number")
        if length < 0:
            raise HTTPError(400, "Content-Length is negative")
        if length > self.max_bytes:
            raise HTTPError(413, f"body of {length} bytes is larger than the limit of {self.max_bytes}")
        raw = environ["wsgi.input"].read(length) if length else b""
        if len(raw) != length:
            raise HTTPError(400, "body is shorter than Content-Length")
        return raw

    def precheck(self, environ):
        """The answer to a request that is refused before its body is read: wrong path (404),
        method (405) or token (401), as ``(status line, headers, payload bytes)``; None when the
        body is to be read (security review N9: an anonymous client's megabyte was buffered
        before its 401). The hub's ASGI bridge calls it first; :meth:`prepare` checks again.
        A database error is left to :meth:`prepare` (None here)."""
        try:
            if environ.get("PATH_INFO", "") != REPORT_PATH:
                raise HTTPError(404, f"not found; agents post to {REPORT_PATH}")
            if environ.get("REQUEST_METHOD") != "POST":
                raise HTTPError(405, "only POST is allowed", [("Allow", "POST")])
            self._authorize(environ)
        except HTTPError as exc:
            return render(exc.status, {"error": str(exc)}, exc.headers)
        except Exception:  # auth.db unavailable, or a bug: prepare() answers it as usual
            return None
        return None

    def prepare(self, environ):
        """Everything of one request before the write: path, method, token, database file,
        body, contract. Returns a :class:`Prepared`; :meth:`write` stores its reports and
        :meth:`answer` gives the response. Never raises for any request."""
        try:
            return self._prepare(environ)
        except HTTPError as exc:
            return Prepared(final=(exc.status, {"error": str(exc)}, exc.headers))
        except dbguard.DatabaseReplaced as exc:  # logged once, loudly, by the guard
            return Prepared(final=(503, {"error": str(exc)}, [("Retry-After", "30")]))
        except sqlite3.Error as exc:
            log.warning("database unavailable: %s", exc)
            return Prepared(final=(503, {"error": f"database unavailable: {exc}"}, [("Retry-After", "5")]))
        except Exception:  # a bug; say so without leaking internals
            log.exception("ingest failed")
            return Prepared(final=(500, {"error": "internal error"}, []))

    def _prepare(self, environ):
        if environ.get("PATH_INFO", "") != REPORT_PATH:
            raise HTTPError(404, f"not found; agents post to {REPORT_PATH}")
        if environ.get("REQUEST_METHOD") != "POST":
            raise HTTPError(405, "only POST is allowed", [("Allow", "POST")])
        only_host = self._authorize(environ)
        problem = self.guard.check()  # one stat(): never acknowledge into a deleted file
        if problem is not None:
            raise dbguard.DatabaseReplaced(problem)
        raw = self._read_body(environ)
        body = decode_body(raw, environ.get("HTTP_CONTENT_ENCODING"), self.max_bytes)
        received_at = int(time.time())
        if isinstance(body, dict) and "reports" in body and "report_id" not in body:
            reports = body["reports"]
            if not isinstance(reports, list):
                raise HTTPError(400, "reports: expected array")
            if len(reports) > MAX_BATCH:
                raise HTTPError(413, f"reports: more than {MAX_BATCH} in one batch")
            entries = [[*self._check_one(obj, received_at, only_host), received_at] for obj in reports]
            self._check_new_hosts(entries, received_at, only_host)
            return Prepared(entries=entries, batch=True)
        if not isinstance(body, dict):
            raise HTTPError(400, f"expected a JSON object (one report) or {{\"reports\": [...]}}, got {type(body).__name__}")
        entries = [[*self._check_one(body, received_at, only_host), received_at]]
        self._check_new_hosts(entries, received_at, only_host)
        return Prepared(entries=entries)

    def _check_new_hosts(self, entries, received_at, only_host):
        """429 (``Retry-After``) for a shared-token request that would create servers beyond
        ``agent.max_new_hosts_per_hour`` (counted by ``servers.first_seen`` over the last hour,
        all workers together; security review I-4: one token created 1,000 servers in 2 s).
        Per-host tokens are exempt (an admin issued each for its host). The whole request is
        refused, so an agent's batch (one host) is retried later as a whole."""
        if only_host is not None or not self.max_new_hosts_per_hour:
            return
        hosts = {machine_identity(entry[2]["host"]) for entry in entries if entry[2] is not None}
        if not hosts:
            return
        conn = self._conn()
        known = set()
        for start in range(0, len(hosts), 500):
            chunk = sorted(hosts)[start:start + 500]
            known.update(row[0] for row in conn.execute(
                f"SELECT machine_id FROM servers WHERE machine_id IN ({','.join('?' * len(chunk))})", chunk))
        new = len(hosts - known)
        if not new:
            return
        recent = conn.execute("SELECT count(*) FROM servers WHERE first_seen >= ?", (received_at - 3600,)).fetchone()[0]
        if recent + new > self.max_new_hosts_per_hour:
            raise HTTPError(429, f"{recent} servers were added in the last hour (agent.max_new_hosts_per_hour:"
                                 f" {self.max_new_hosts_per_hour}); this request would add {new} more: retry later,"
                                 " or use a per-host token", [("Retry-After", "600")])

    @staticmethod
    def answer(prepared):
        """``(status, body dict, extra headers)`` of a request after :meth:`write`."""
        if prepared.final is not None:
            return prepared.final
        if prepared.batch:
            return 207, {"results": [dict(body, status=status) for status, body, _, _ in prepared.entries]}, []
        status, body, _, _ = prepared.entries[0]
        return status, body, [("Retry-After", "5")] if status == 503 else []

    def handle(self, environ):
        """Process one request; returns ``(status, body dict, extra headers)``."""
        prepared = self.prepare(environ)
        self.write([prepared])
        return self.answer(prepared)

    def respond(self, environs):
        """Several requests at once, their reports written together (group commit): a list of
        ``(status line, headers, payload bytes)`` in the order of ``environs``. Used by the hub's
        ASGI bridge (``server_monitor.serving.wsgi_bridge``) for the requests that queued meanwhile."""
        prepared = [self.prepare(environ) for environ in environs]
        try:
            self.write(prepared)
        except Exception:  # a bug: no report of these was acknowledged
            log.exception("ingest failed")
            prepared = [Prepared(final=(500, {"error": "internal error"}, [])) for _ in environs]
        return [render(*self.answer(p)) for p in prepared]

    def __call__(self, environ, start_response):
        status_line, headers, payload = self.respond([environ])[0]
        start_response(status_line, headers)
        return [payload]


class Prepared:
    """One request between its checks and the write. ``final``: its answer when nothing is
    to be stored; else ``entries``, per report ``[status, body, report to store or None,
    received_at]``; ``batch``: answer 207 with every report's result."""

    __slots__ = ("final", "entries", "batch")

    def __init__(self, final=None, entries=(), batch=False):
        self.final, self.entries, self.batch = final, entries, batch


def render(status, body, headers):
    """An answer as ``(status line, headers, payload bytes)``: JSON, never cached."""
    payload = json.dumps(body).encode("utf-8")
    return (f"{status} {_REASONS.get(status, '')}",
            [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(payload))),
             ("Cache-Control", "no-store")] + list(headers),
            payload)


_default = None
_default_lock = threading.Lock()


def make_application(config):
    """Build the WSGI app for a loaded :class:`server_monitor.core.config.Config`."""
    return IngestApp(config)


def application(environ, start_response):
    """Module-level WSGI entry; reads ``$SERVER_MONITOR_CONFIG`` on first request."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = make_application(config_mod.from_env())
    return _default(environ, start_response)


if __name__ == "__main__":  # python ingest.py: serve ingest alone with the stdlib server
    import sys
    from wsgiref.simple_server import make_server

    cfg = config_mod.load(sys.argv[1] if len(sys.argv) > 1 else "config.yaml")
    app = make_application(cfg)
    host, port = cfg.get("server.host"), int(cfg.get("server.port"))
    print(f"ingest listening on http://{host}:{port}{REPORT_PATH}")
    make_server(host, port, app).serve_forever()
