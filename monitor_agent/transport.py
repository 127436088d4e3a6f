"""Sending reports to the hub over HTTP(S) with urllib3: gzip bodies, bearer token.

TLS certificates are verified for https URLs (the system store, or ``ca_file``).
Outcomes are classified for the caller's retry logic: 2xx delivered; connection errors,
timeouts, 5xx and 429 retry later; any other 4xx is rejected (logged, not retried).

The hub's answer is untrusted (a compromised hub, or a man-in-the-middle on plain http): it is
read with a bound on its size on the wire, its decompressed size and its reading time
(:func:`read_answer`), and any decoding failure leaves a short text instead of raising
(security review 227e0d8, N4).
"""

import gzip
import json
import time
import zlib
from collections import namedtuple

import urllib3

REPORT_PATH = "/api/report"

MAX_ANSWER_BYTES = 1 << 20  # the hub's answers are a few hundred bytes (207: ~60 B per report)
READ_CHUNK = 64 * 1024

SendResult = namedtuple("SendResult", "outcome status body")
SendResult.__doc__ = """``outcome``: ``delivered``, ``retry`` or ``rejected``; ``status``: HTTP
code or None (no answer); ``body``: decoded JSON answer, or an error text."""


def describe_error(exc):
    """A short text for a failed request: the underlying reason without urllib3's wrapping,
    e.g. ``Failed to establish a new connection: [Errno 111] Connection refused``."""
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the real cause
    text = str(reason)
    if text.startswith("<") and ">: " in text:  # "<urllib3.connection.HTTPConnection object at 0x..>: ..."
        text = text.split(">: ", 1)[1]
    return text or type(reason).__name__


def _decompressor(encoding):
    """A zlib decompressor for a ``Content-Encoding`` value, None for identity, or raise ValueError."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise ValueError(f"unsupported Content-Encoding {encoding[:40]!r}")


def read_answer(response, limit=MAX_ANSWER_BYTES, deadline_s=30.0):
    """Read a streamed urllib3 response (``preload_content=False``) into at most ``limit`` bytes.

    Returns ``(data, problem)``: ``data`` is the decoded body (bytes, at most ``limit``), or
    None with ``problem`` a short text when the body was longer than ``limit`` on the wire or
    after gzip/deflate decoding, took longer than ``deadline_s`` seconds in all, or could not
    be decompressed. Never raises for the body's content; network errors (urllib3's
    ``HTTPError``) propagate. The connection is returned to the pool only when the body was
    read to its end, otherwise it is closed.
    """
    complete = False
    try:
        try:
            decoder = _decompressor(response.headers.get("Content-Encoding"))
        except ValueError as exc:
            return None, str(exc)
        stop = time.monotonic() + deadline_s
        raw_seen, out = 0, bytearray()
        # read1 (urllib3 >= 2.3) returns what has arrived, so the deadline also bounds a trickle;
        # read(n) waits for n bytes (each socket read still under the read timeout).
        read = getattr(response, "read1", None) or response.read
        while True:
            chunk = read(READ_CHUNK, decode_content=False)
            if not chunk:
                complete = True
                break
            raw_seen += len(chunk)
            if raw_seen > limit:
                return None, f"answer longer than {limit} bytes, not read"
            if decoder is None:
                out += chunk
            else:
                # max_length bounds what one call may inflate; unconsumed_tail keeps the rest.
                out += decoder.decompress(chunk, limit + 1 - len(out))
                if len(out) > limit or decoder.unconsumed_tail:
                    return None, f"answer inflates past {limit} bytes, not read"
            if time.monotonic() > stop:
                return None, f"answer took longer than {deadline_s:g} s, not read"
        if decoder is not None:
            out += decoder.flush()
            if len(out) > limit:
                return None, f"answer inflates past {limit} bytes, not read"
        return bytes(out), None
    except (zlib.error, ValueError, EOFError) as exc:
        return None, f"undecodable answer: {exc}"[:200]
    finally:
        if not complete:
            response.close()  # drops the connection: unread bytes must not reach the next request
        response.release_conn()


def parse_answer(data):
    """The hub's answer body (bytes) as JSON, or a short text (at most 500 characters) when it is not.

    Catches every decoding failure (bad UTF-8, bad JSON, nesting too deep for the parser,
    integers over Python's digit limit); never raises.
    """
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8") or "null")
    except (ValueError, RecursionError, UnicodeError, MemoryError):
        return data[:500].decode("utf-8", errors="replace")


class Transport:
    """POSTs JSON to ``<server_url>/api/report``.

    ``timeout``: seconds for connect and for read. ``ca_file``: PEM bundle for private
    CAs. ``verify_tls``: False only for testing against self-signed hubs.
    """

    def __init__(self, server_url, token, timeout=10.0, ca_file=None, verify_tls=True):
        self.url = server_url.rstrip("/") + REPORT_PATH
        self.token = token
        self.timeout = timeout
        # One quick resend when a kept-alive connection was closed by the hub just as we
        # reused it (or the answer was lost): safe, the hub stores each report id once.
        retries = urllib3.Retry(total=1, connect=1, read=1, status=0, redirect=0, backoff_factor=0.1,
                                allowed_methods=frozenset({"POST"}), raise_on_status=False)
        kwargs = {"retries": retries, "timeout": urllib3.Timeout(connect=timeout, read=timeout), "maxsize": 1}
        if self.url.startswith("https://"):
            kwargs["cert_reqs"] = "CERT_REQUIRED" if verify_tls else "CERT_NONE"
            if ca_file:
                kwargs["ca_certs"] = ca_file
        self.pool = urllib3.PoolManager(**kwargs)

    def send(self, payload):
        """POST ``payload`` (a report dict or ``{"reports": [...]}``); returns :data:`SendResult`."""
        body = gzip.compress(json.dumps(payload, separators=(",", ":")).encode("utf-8"), compresslevel=6)
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        try:
            response = self.pool.request("POST", self.url, body=body, headers=headers,
                                         preload_content=False, decode_content=False)
            data, problem = read_answer(response, deadline_s=3 * self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            return SendResult("retry", None, describe_error(exc))
        answer = problem if problem is not None else parse_answer(data)
        status = response.status
        if 200 <= status < 300:
            return SendResult("delivered", status, answer)
        if status >= 500 or status == 429:
            return SendResult("retry", status, answer)
        return SendResult("rejected", status, answer)
