"""A minimal cookie-keeping HTTP client (urllib3) that logs in like a browser.

Used by the end-to-end tests and by bench/common.py (`python -m bench ingest`, `python -m bench prove`).
"""

import re

import urllib3


class Browserless:
    """Requests against ``base`` with the cookies the hub set; ``login()`` posts the form."""

    def __init__(self, base, retries=False):
        self.base = base
        self.http = urllib3.PoolManager(retries=retries)
        self.cookies = {}

    @property
    def cookie_header(self):
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def request(self, method, path, **kw):
        headers = dict(kw.pop("headers", {}))
        if self.cookies:
            headers.update(self.cookie_header)
        response = self.http.request(method, self.base + path, headers=headers, redirect=False, **kw)
        for raw in response.headers.getlist("Set-Cookie"):
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if value and "Max-Age=0" not in raw:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def login(self, username, password):
        page = self.request("GET", "/login")
        token = re.search(r'name="csrftoken" value="([^"]+)"', page.data.decode()).group(1)
        return self.request("POST", "/login", fields={"username": username, "password": password,
                                                      "csrftoken": token, "next": "/"},
                            encode_multipart=False)
