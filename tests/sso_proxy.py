"""A small header-setting reverse proxy for the SSO tests (issue 26 item 5), run as its own process.

It plays what oauth2-proxy / Authelia / Authentik do in front of the hub: it knows who the browser
is from its own login cookie (``idp=<name>``; the users and their groups come from a JSON file,
standing in for the identity provider), answers 401 to anyone without one, **removes** whatever
user and groups headers the client sent, sets its own, and forwards the request to the hub from
the source address ``--source`` (a loopback address of its own, so the hub sees a different TCP
peer for it than for a client on 127.0.0.1). Groups go one header line each, as oauth2-proxy
sends them.

    python tests/sso_proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:HUBPORT \
        --source 127.0.0.2 --users users.json [--user-header X-Forwarded-User] [--groups-header ...]

Prints ``ready`` on stdout once it listens.
"""

import argparse
import http.client
import json
import sys
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade", "host", "content-length"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--users", required=True)
    parser.add_argument("--user-header", default="X-Forwarded-User")
    parser.add_argument("--groups-header", default="X-Forwarded-Groups")
    args = parser.parse_args()
    users = json.load(open(args.users))
    up_host, up_port = args.upstream.rsplit(":", 1)
    drop = {args.user_header.lower(), args.groups_header.lower()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _any(self):
            cookie = SimpleCookie()
            cookie.load(self.headers.get("Cookie", ""))
            name = cookie["idp"].value if "idp" in cookie else None
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if name not in users:
                payload = b"proxy: sign in at the identity provider first"
                self.send_response(401)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP and k.lower() not in drop}
            headers[args.user_header] = name
            headers["Host"] = self.headers.get("Host", args.upstream)
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=30, source_address=(args.source, 0))
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            for group in users[name]:  # one header line per group, as oauth2-proxy sends them
                conn.putheader(args.groups_header, group)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _any

    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
