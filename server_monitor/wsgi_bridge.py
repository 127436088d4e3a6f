"""Serving a WSGI app (the ingest endpoint) from inside the ASGI hub.

The body is read only when its declared ``Content-Length`` is within the app's limit (the
app answers 411/413 itself otherwise, before anything large is read), and the app runs in
a single worker thread: SQLite has one writer anyway, and the event loop never blocks.
"""

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor


def header(scope, name):
    """Value of request header ``name`` (lowercase bytes) in an ASGI scope, or ``""``."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


class IngestBridge:
    """Runs the WSGI ingest app for an ASGI request in a single worker thread."""

    def __init__(self, extra_headers=()):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self.extra_headers = extra_headers

    async def __call__(self, app, scope, receive, send):
        length = header(scope, b"content-length").strip()
        body = b""
        # Read the body only when its declared size is acceptable; the app itself answers
        # 411/413 otherwise, before anything large is read.
        if length.isdigit() and int(length) <= app.max_bytes:
            want = int(length)
            more = True
            while more and len(body) < want:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
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
            "wsgi.input": io.BytesIO(body),
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
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"] = int(status.split(" ", 1)[0])
            captured["headers"] = headers

        def call():
            return b"".join(app(environ, start_response))

        payload = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        await send({
            "type": "http.response.start",
            "status": captured["status"],
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in captured["headers"]]
            + list(self.extra_headers),
        })
        await send({"type": "http.response.body", "body": payload})
