"""Sending reports to the hub over HTTP(S) with urllib3: gzip bodies, bearer token.

TLS certificates are verified for https URLs (the system store, or ``ca_file``).
Outcomes are classified for the caller's retry logic: 2xx delivered; connection errors,
timeouts, 5xx and 429 retry later; any other 4xx is rejected (logged, not retried).
"""

import gzip
import json
from collections import namedtuple

import urllib3

REPORT_PATH = "/api/report"

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


class Transport:
    """POSTs JSON to ``<server_url>/api/report``.

    ``timeout``: seconds for connect and for read. ``ca_file``: PEM bundle for private
    CAs. ``verify_tls``: False only for testing against self-signed hubs.
    """

    def __init__(self, server_url, token, timeout=10.0, ca_file=None, verify_tls=True):
        self.url = server_url.rstrip("/") + REPORT_PATH
        self.token = token
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
            response = self.pool.request("POST", self.url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            return SendResult("retry", None, describe_error(exc))
        try:
            answer = json.loads(response.data.decode("utf-8") or "null")
        except ValueError:
            answer = response.data[:500].decode("utf-8", errors="replace")
        status = response.status
        if 200 <= status < 300:
            return SendResult("delivered", status, answer)
        if status >= 500 or status == 429:
            return SendResult("retry", status, answer)
        return SendResult("rejected", status, answer)
