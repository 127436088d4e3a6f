"""Serving the ingest app (``ingest.py``) from inside the ASGI hub, with group commit.

The app's ``precheck`` (path, method, token) runs before a byte of the body is read, so an
anonymous or wrong-token client is answered 401 unread (security review N9). The body is read
only when its declared ``Content-Length`` is within the app's limit (the app answers 411/413
itself otherwise, before anything large is read), at most :data:`MAX_BODIES` at once per worker;
a body that trickles is cut off by the connection's body deadline (``server_monitor.serving.netguard``). Requests then queue
for a single writer thread (SQLite has one writer anyway, and the event loop never blocks),
which takes every request that queued while it was busy and hands them to the app's
``respond`` at once: their reports are written in one transaction (``store_reports``) and
every agent is answered after that ``COMMIT``. Alone, a request is written by itself at once;
under load, one commit and one turn on the writer lock serve many reports.
"""

import asyncio
import io
import logging
import queue
import threading

log = logging.getLogger("server_monitor.ingest")

# Requests handed to the app at once at most (each may hold a batch of spooled reports).
MAX_REQUESTS = 32
# Report bodies read at once per worker at most (each up to agent.max_report_bytes), and how
# long a request waits for its turn before 503 (security review N9).
MAX_BODIES = 64
BODY_SLOT_WAIT_S = 10.0


def header(scope, name):
    """Value of request header ``name`` (lowercase bytes) in an ASGI scope, or ``""``."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


class IngestBridge:
    """Runs the ingest app for ASGI requests on one writer thread, grouping the requests
    that queue meanwhile (see the module docstring). The app needs ``max_bytes`` and
    ``respond(environs) -> [(status line, headers, payload bytes)]`` (``ingest.IngestApp``)."""

    def __init__(self, extra_headers=()):
        self.extra_headers = extra_headers
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._start_lock = threading.Lock()
        self._bodies = None  # asyncio.Semaphore(MAX_BODIES), made on the event loop

    def _ensure_thread(self):
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
                    self._thread.start()

    def _run(self):
        while True:
            jobs = [self._queue.get()]
            while len(jobs) < MAX_REQUESTS:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_app = {}
            for job in jobs:
                by_app.setdefault(id(job[0]), []).append(job)
            for group in by_app.values():
                try:
                    answers = group[0][0].respond([environ for _, environ, _, _ in group])
                except Exception as exc:  # a bug in the app: fail these requests, keep the thread
                    log.exception("ingest failed")
                    answers = [exc] * len(group)
                for (_, _, loop, future), answer in zip(group, answers):
                    try:
                        loop.call_soon_threadsafe(_resolve, future, answer)
                    except RuntimeError:  # that event loop is closed: nobody waits for this answer
                        pass

    async def __call__(self, app, scope, receive, send):
        length = header(scope, b"content-length").strip()
        client = scope.get("client") or ("", 0)
        environ = {
            "REQUEST_METHOD": scope["method"],
            "PATH_INFO": scope["path"],
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "CONTENT_LENGTH": length,
            "CONTENT_TYPE": header(scope, b"content-type"),
            "REMOTE_ADDR": client[0] or "",
            "SERVER_NAME": "server-monitor",
            "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for key, value in scope.get("headers") or ():
            name = "HTTP_" + key.decode("latin-1").upper().replace("-", "_")
            if name not in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
                environ[name] = value.decode("latin-1")
        loop = asyncio.get_running_loop()
        precheck = getattr(app, "precheck", None)
        if precheck is not None:
            # Path, method and token before a byte of the body is read (N9): an anonymous
            # client gets its 401 without the hub buffering its megabyte. In a thread: a
            # per-host token is looked up in auth.db.
            early = await loop.run_in_executor(None, precheck, environ)
            if early is not None:
                return await self._send(send, early)
        # Read the body only when its declared size is acceptable; the app itself answers
        # 411/413 otherwise, before anything large is read. At most MAX_BODIES bodies are read
        # at once per worker; a request that waits BODY_SLOT_WAIT_S for its turn gets 503.
        if length.isdigit() and int(length) <= app.max_bytes:
            if self._bodies is None:
                self._bodies = asyncio.Semaphore(MAX_BODIES)
            try:
                await asyncio.wait_for(self._bodies.acquire(), BODY_SLOT_WAIT_S)
            except asyncio.TimeoutError:
                return await self._send(send, ("503 Service Unavailable", [
                    ("Content-Type", "application/json; charset=utf-8"), ("Retry-After", "5")],
                    b'{"error": "too many reports being received; retry shortly"}'))
            try:
                want = int(length)
                body = b""
                more = True
                while more and len(body) < want:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
            finally:
                self._bodies.release()
            environ["wsgi.input"] = io.BytesIO(body)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((app, environ, loop, future))
        self._ensure_thread()
        answer = await asyncio.shield(future)  # a disconnect does not cancel the write
        if isinstance(answer, BaseException):
            answer = ("500 Internal Server Error", [("Content-Type", "application/json; charset=utf-8")],
                      b'{"error": "internal error"}')
        await self._send(send, answer)

    async def _send(self, send, answer):
        status_line, headers, payload = answer
        await send({
            "type": "http.response.start",
            "status": int(status_line.split(" ", 1)[0]),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            + list(self.extra_headers),
        })
        await send({"type": "http.response.body", "body": payload})


def _resolve(future, answer):
    if not future.done():
        future.set_result(answer)
