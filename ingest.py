"""WSGI ingest endpoint: ``POST /api/report`` from agents into ``monitor.db``.

Mounted into the hub process on Datasette's port by ``plugins/sm_gate.py``, and also
runnable on its own under any WSGI server::

    SERVER_MONITOR_CONFIG=config.yaml gunicorn ingest:application

Request: ``Authorization: Bearer <agent.token>``, ``Content-Type: application/json``,
optional ``Content-Encoding: gzip``, body either one report object or a batch
``{"reports": [report, ...]}`` (see ``docs/api.md``).

Answers (always JSON): 201 stored, 200 duplicate (already stored), 207 batch results,
400 bad body or contract violation (message names the field), 401 bad token, 403 per-host token used for another host, 404 other
path, 405 other method, 411 no Content-Length, 413 too large, 415 bad encoding,
503 database unavailable (with ``Retry-After``). Never 500 for any input.
"""

import hmac
import json
import logging
import sqlite3
import threading
import time
import zlib

from server_monitor import config as config_mod
from server_monitor import dbguard, instance, schema, tokens
from server_monitor.contract import ContractError, validate_report
from server_monitor.store import machine_identity, sample_time, store_report

log = logging.getLogger("server_monitor.ingest")

REPORT_PATH = "/api/report"
MAX_BATCH = 500


class HTTPError(Exception):
    """An answer other than success; ``status`` is the HTTP code, ``str()`` the message."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


_REASONS = {
    200: "OK", 201: "Created", 207: "Multi-Status", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
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
        # agent.shared_token_enabled: false leaves only per-host tokens (I8).
        self.shared_token_enabled = config.get("agent.shared_token_enabled", True) is not False
        self.max_bytes = int(config.get("agent.max_report_bytes", 1_048_576))
        self.db_path = config.db_path
        # Oldest stored time accepted (L3): the longest history kept (hourly roll-ups), at least
        # the raw retention. Older means a broken clock or a forged report; 400 naming the field.
        self.max_age_s = int(86400 * max(float(config.get("data.retention_days", 7)),
                                         float(config.get("data.rollup_1h_days", 730))))
        self.auth_db_path = config.auth_db_path
        self._local = threading.local()
        schema.migrate(self.db_path)
        self.guard = dbguard.watch(self.db_path)  # H2: notice the file being deleted or replaced
        # Writes of every worker process and of the maintenance pass queue on a lock file
        # instead of SQLite's sleeping busy handler (server_monitor.instance.WriterLock).
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

    def _store_one(self, obj, received_at, only_host):
        """Validate and store one report; returns ``(status, body dict)``.

        ``only_host``: the machine identity a per-host token may write, or None (shared token).
        """
        try:
            report = validate_report(obj)
        except ContractError as exc:
            report_id = obj.get("report_id") if isinstance(obj, dict) else None
            return 400, {"error": str(exc), "report_id": report_id if isinstance(report_id, str) else None}
        ts, _ = sample_time(report, received_at)
        if ts < received_at - self.max_age_s:
            return 400, {"error": f"sample_time: the report's time (corrected for the agent's clock skew) is"
                                  f" {(received_at - ts) / 86400:.0f} days before the hub's clock; the hub keeps"
                                  f" at most {self.max_age_s / 86400:.0f} days (data.rollup_1h_days)",
                         "report_id": report["report_id"]}
        if only_host is not None and machine_identity(report["host"]) != only_host:
            return 403, {"error": f"this token may only report for host {only_host!r}",
                         "report_id": report["report_id"]}
        if only_host is not None:
            # A per-host token cannot take the name of another server (L10).
            other = self._conn().execute(
                "SELECT id FROM servers WHERE machine_id != ?1 AND (hostname = ?2 OR display_name = ?2) LIMIT 1",
                (only_host, report["host"]["hostname"])).fetchone()
            if other is not None:
                return 403, {"error": f"host.hostname: {report['host']['hostname']!r} is the name of another server"
                                      f" (id {other[0]}); this token's host may not use it",
                             "report_id": report["report_id"]}
        with self.writer_lock:
            result = store_report(self._conn(), report, received_at)
        if result["stored"]:
            body = {"report_id": report["report_id"], "stored": True}
            if report["nulled"]:
                body["nulled"] = report["nulled"][:20]
            return 201, body
        return 200, {"report_id": report["report_id"], "stored": False, "duplicate": True}

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

    def handle(self, environ):
        """Process one request; returns ``(status, body dict, extra headers)``."""
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
            results = []
            for obj in reports:
                status, result = self._store_one(obj, received_at, only_host)
                result["status"] = status
                results.append(result)
            return 207, {"results": results}, []
        if not isinstance(body, dict):
            raise HTTPError(400, f"expected a JSON object (one report) or {{\"reports\": [...]}}, got {type(body).__name__}")
        status, result = self._store_one(body, received_at, only_host)
        return status, result, []

    def __call__(self, environ, start_response):
        try:
            status, body, headers = self.handle(environ)
        except HTTPError as exc:
            status, body, headers = exc.status, {"error": str(exc)}, exc.headers
        except dbguard.DatabaseReplaced as exc:  # logged once, loudly, by the guard
            status, body, headers = 503, {"error": str(exc)}, [("Retry-After", "30")]
        except sqlite3.Error as exc:
            log.warning("database unavailable: %s", exc)
            status, body, headers = 503, {"error": f"database unavailable: {exc}"}, [("Retry-After", "5")]
        except Exception:  # a bug; say so without leaking internals
            log.exception("ingest failed")
            status, body, headers = 500, {"error": "internal error"}, []
        payload = json.dumps(body).encode("utf-8")
        start_response(
            f"{status} {_REASONS.get(status, '')}",
            [("Content-Type", "application/json; charset=utf-8"),
             ("Content-Length", str(len(payload))),
             ("Cache-Control", "no-store")] + headers,
        )
        return [payload]


_default = None
_default_lock = threading.Lock()


def make_application(config):
    """Build the WSGI app for a loaded :class:`server_monitor.config.Config`."""
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
