"""The security review's attack classes re-run as counted, scripted cases against the hub in-process
(real SQLite files, Datasette's ASGI app): anonymous crawl, viewer scope, CSRF and secrets.

Each test counts its cases and asserts that every one held; ``docs/security.md`` records the
counts (``scripts/test.sh -q -s tests/test_attacks.py`` prints them).
"""

import json
import re
import sqlite3

import pytest

from reports import sample_report
import test_access
from test_access import MATRIX, PASSWORD, ROLES
from test_hub_datasette import Client, ingest

from server_monitor.serving.queries import ADMIN_QUERIES, QUERIES

TRAVERSAL = ["/static/../config.yaml", "/static/%2e%2e/config.yaml", "/static/..%2fconfig.yaml",
             "/static/%2e%2e%2fconfig.yaml", "/static/..%5cconfig.yaml", "/static/%252e%252e/config.yaml",
             "/-/static/../../config.yaml", "//-/metadata.json", "/%2D/metadata.json", "/~6Donitor/servers.json",
             "/login/../monitor.json", "/monitor%2ejson", "/monitor/servers.json%00", "/static/../auth.db",
             "/static/../monitor.db", "/-/static-plugins/../../config.yaml", "/monitor.db?_download=1",
             "/monitor/sqlite_master.json", "/auth", "/auth.json", "/auth/users.json", "/_internal/catalog_tables.json",
             "/monitor.json?sql=select+*+from+sqlite_master", "/api/servers/1/../../../config.yaml", "/metrics?token=x"]


@pytest.fixture
def hub(datasette, hub_config):
    """The same hub as tests/test_access.py: two servers, a client logged in for each role."""
    return test_access.build_hub(datasette, hub_config)


PUBLIC_OK = {"/login", "/favicon.ico", "/static/dashboard.js", "/-/static/app.css", "/-/health"}


def _secrets(hub_config, ctx, extra=()):
    values = [hub_config.password, hub_config.get("auth.password_hash"), hub_config.get("agent.token"),
              hub_config.get("server.secret_key"), PASSWORD, *extra]
    conn = ctx.accounts.connection()
    values += [r[0] for r in conn.execute("SELECT password_hash FROM users")]
    values += [r[0] for r in conn.execute("SELECT id_hash FROM sessions")]
    return [v for v in values if v]


def test_anonymous_crawl(hub, hub_config):
    """Review: 116 anonymous cases held. Every matrix path and traversal variant, with six methods:
    nothing but login, register, static files and /-/health answers, and no secret appears."""
    anon, cases, failures = hub["anon"], 0, []
    secrets_ = _secrets(hub_config, hub["ctx"])
    for path in list(MATRIX) + TRAVERSAL:
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"):
            response = anon.request(method, path)
            cases += 1
            base = path.split("?")[0]
            if response.status_code < 300 and base not in PUBLIC_OK:  # public content only, any method
                failures.append(f"{method} {path}: {response.status_code}")
            if any(s in response.text for s in secrets_):
                failures.append(f"{method} {path}: secret in body")
    print(f"\nanonymous crawl: {cases} cases, {cases - len(failures)} held")
    assert failures == [] and cases >= 700


def test_scoped_viewer_sees_nothing_out_of_scope(hub, hub_config):
    """Review: 235 + 235 viewer cases held. A viewer limited to server 2 without processes, over every
    canned query x 5 variants (HTML, JSON, CSV, forged scope parameters, another server's id) and
    every table x 7 variants: no out-of-scope host and no process detail anywhere."""
    admin, scoped = hub["admin"], hub["scoped"]
    token = hub_config.get("agent.token")
    secret = sample_report("zz-secret-host", gpus=1, processes=1)
    secret["processes"][0].update(user="zz-secret-user", container="zz-secret-ctr", process_name="zz-secret-proc")
    assert ingest(admin, secret, token).status_code == 201
    hidden = sample_report("two", gpus=1, processes=1, sample_time=__import__("time").time() + 5)
    hidden["processes"][0].update(user="yy-hidden-user", container="yy-hidden-ctr", process_name="yy-hidden-proc")
    assert ingest(admin, hidden, token).status_code == 201
    markers = ["zz-secret", "yy-hidden", "GPU-one-", "GPU-zz-secret"]
    everything = admin.get("/monitor/processes.json?_shape=array").text + admin.get("/monitor/gpus.json").text
    assert all(m in everything for m in markers)  # the markers are there to be leaked
    cases, failures = 0, []
    variants = ["", ".json?_shape=array", ".csv", ".json?_scope_all=1&_scope_servers=[1,3]&_scope_processes=1",
                ".json?server_id=1&hours=24&since=0&by=user"]
    for name in QUERIES:
        if name in ADMIN_QUERIES:
            continue
        for variant in variants:
            response = scoped.get(f"/monitor/{name}{variant}")
            cases += 1
            found = [m for m in markers if m in response.text]
            if response.status_code >= 500 or found:
                failures.append(f"{name}{variant}: {response.status_code} {found}")
    tables = [r[0] for r in sqlite3.connect(hub_config.db_path).execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")]
    for table in [t for t in tables if t not in QUERIES]:  # a canned query of the same name wins (covered above)
        for variant in (".json", "", ".csv?_stream=1", "/1.json", ".json?_facet=server_id", ".json?_search=x",
                        ".json?_where=1=1"):
            response = scoped.get(f"/monitor/{table}{variant}")
            cases += 1
            if response.status_code != 403 or any(m in response.text for m in markers):
                failures.append(f"table {table}{variant}: {response.status_code}")
    for path in ("/api/servers", "/api/servers/1", "/api/servers/3", "/api/servers/1/history", "/monitor.json?sql=select+1",
                 "/monitor.db", "/_internal.json", "/-/metadata.json", "/metrics", "/admin"):
        response = scoped.get(path)
        cases += 1
        if response.status_code == 200 and any(m in response.text for m in markers):
            failures.append(f"{path}: {response.status_code}")
    print(f"\nscoped viewer: {cases} cases, {cases - len(failures)} held")
    assert failures == [] and cases >= 200


def test_csrf_matrix(hub, hub_config, datasette):
    """Review: 155 CSRF cases, 2 did not hold (M1). Every state-changing endpoint x 8 forgeries (no
    token, wrong token, a tossed anonymous token, text/plain, JSON, multipart, Sec-Fetch-Site:
    same-site with the right token, a foreign Origin with the right token): nothing changes."""
    admin, ctx = hub["admin"], hub["ctx"]
    auth = ctx.accounts.connection()
    monitor = sqlite3.connect(hub_config.db_path)

    def state():
        tables = [r[0] for r in monitor.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                                " AND name IN ('servers', 'gpus', 'announcements', 'silences', 'alert_acks')")]
        return (json.dumps([list(r) for t in ("users", "invites", "agent_tokens") for r in auth.execute(f"SELECT * FROM {t}")],
                           default=str),
                json.dumps([list(r) for t in tables for r in monitor.execute(f"SELECT * FROM {t}")], default=str))

    bound = re.search(r'name="csrftoken" value="([^"]+)"', admin.get("/admin").text).group(1)
    planted = re.search(r'name="csrftoken" value="([^"]+)"', Client(datasette).get("/login").text).group(1)
    form = {"action": "update", "role": "admin", "scope": "all", "server_id": "1", "display_name": "pwned",
            "status": "fault", "status_note": "x", "level": "critical", "message": "pwned", "hours": "1",
            "max_uses": "5", "token_id": "1", "gpu_id": "1", "alert_id": "1", "note": "x", "rule": "disk_full",
            "minutes": "60", "silence_id": "1", "password": PASSWORD, "new_password": "pwned pwned pwned",
            "new_password2": "pwned pwned pwned"}
    endpoints = ["/admin/invites", "/admin/invites/1/revoke", "/admin/users/vera", "/admin/servers/1/delete",
                 "/admin/tokens", "/logout", "/account"] + [f"/monitor/{q}" for q in sorted(ADMIN_QUERIES)]
    forgeries = {
        "no token": dict(data=form),
        "wrong token": dict(data=dict(form, csrftoken="x" * 40)),
        "tossed anonymous token": dict(data=dict(form, csrftoken=planted), cookies={"ds_csrftoken": planted}),
        "text/plain": dict(content=json.dumps(dict(form, csrftoken=bound)).encode(), headers={"content-type": "text/plain"}),
        "json": dict(content=json.dumps(dict(form, csrftoken=bound)).encode(), headers={"content-type": "application/json"}),
        "multipart": dict(data=dict(form, csrftoken=bound), files={"f": ("a.txt", b"x")}),
        "same-site": dict(data=dict(form, csrftoken=bound), headers={"Sec-Fetch-Site": "same-site"}),
        "foreign origin": dict(data=dict(form, csrftoken=bound), headers={"Origin": "http://127.0.0.1:8899"}),
    }
    _, code = ctx.accounts.create_invite("viewer", hours=1)
    before, cases, failures = state(), 0, []
    for path in endpoints:
        for name, kwargs in forgeries.items():
            response = admin.post(path, **kwargs)
            cases += 1
            if response.status_code < 400 or response.status_code >= 500:
                failures.append(f"{path} [{name}]: {response.status_code}")
    assert state() == before, "state changed"
    assert admin.get("/admin").status_code == 200  # the admin's session survived /logout forgeries
    print(f"\nCSRF: {cases} cases, {cases - len(failures)} held")
    assert failures == [] and cases >= 120


def test_secrets_scan(hub, hub_config):
    """Review: 216 secret cases held. Every matrix path for every role (and error pages): none of
    the secret key, agent token, admin password or hash, user hashes or session hashes appears."""
    ctx = hub["ctx"]
    _, code = ctx.accounts.create_invite("viewer", hours=1)
    secrets_ = _secrets(hub_config, ctx, extra=[code])
    paths = list(MATRIX) + ["/admin", "/nope", "/monitor/nope.json", "/monitor.json?sql=select+nope",
                            "/api/servers/999", "/monitor/host_samples.json?_sort=nope"]
    cases, failures = 0, []
    for path in paths:
        for role in ROLES:
            response = hub[role].get(path)
            cases += 1
            leaked = [s[:6] for s in secrets_ if s in response.text or s in str(response.headers)]
            if leaked or response.status_code >= 500:
                failures.append(f"{role} {path}: {response.status_code} {leaked}")
    print(f"\nsecrets: {cases} responses x {len(secrets_)} secrets, {cases - len(failures)} clean")
    assert failures == [] and cases >= 500
