"""Attack run on the API tokens (issue 26 item 4) and trusted-header sign-on (item 5): each test
is one finding, reproduced over real HTTP against the real hub process (``python -m server_monitor
serve``) on loopback, and fails on the code before its fix. What was tried and held is listed in
docs/security.md, *Tokens and SSO attack run*."""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import urllib3
import yaml
from conftest import ROOT, free_port, start_hub
from datasette_auth_passwords.utils import hash_password
from http_client import Browserless
from test_sso import PROXY_ADDRESS, SSO  # the proxy connects from 127.0.0.2; lab-admins -> admin

from server_monitor.auth.accounts import Accounts
from server_monitor.core import config as config_mod
from server_monitor.core import peers

PASSWORD = "correct horse battery"


def set_config(hub_config, **sections):
    """Merge ``sections`` (``auth={...}``, ``sso={...}``) into the hub's config.yaml."""
    data = yaml.safe_load(open(hub_config.path))
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)


@pytest.fixture
def real_hub(hub_config, tmp_path):
    """Start the real hub after the test has set its config: ``start()`` returns its base URL."""
    procs = []

    def start():
        proc = start_hub(hub_config.path, tmp_path / f"hub{len(procs)}.log")
        procs.append(proc)
        return proc.base_url

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        proc.log.close()


def get(base, path, headers=None, source=None):
    http = urllib3.PoolManager(retries=False, source_address=(source, 0) if source else None)
    return http.request("GET", base + path, headers=headers or {}, redirect=False)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def post_form(client, path, fields, token_path=None):
    page = client.request("GET", token_path or path).data.decode()
    token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
    return client.request("POST", path, fields=dict(fields, csrftoken=token), encode_multipart=False)


def raw_request(base, lines, source):
    """Send one HTTP/1.1 GET whose header ``lines`` are written as given (duplicates included)
    from the loopback address ``source``; returns (status, body text)."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(("GET /api/fleet HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n"
                      + "".join(line + "\r\n" for line in lines) + "\r\n").encode("latin-1"))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


def test_A1_admin_token_never_reaches_the_internal_database_however_the_path_spells_it(hub_config, real_hub):
    """The gate refused ``/_internal`` for tokens by path, but Datasette also routes the tilde
    spelling ``/~5Finternal``: an admin's token read Datasette's ``_internal`` catalogue there
    (every table's SQL, the data files' paths) and ran SQL on it."""
    base = real_hub()
    accounts = Accounts(hub_config.auth_db_path)
    _, token = accounts.api_tokens.create(hub_config.get("auth.username"), "config", "exporter")
    for path in ("/_internal.json", "/~5Finternal", "/~5Finternal.json", "/~5Finternal/tables.json",
                 "/~5Finternal/databases.json?_shape=array", "/~5Finternal.json?sql=select+path+from+databases",
                 "/~5Finternal.csv?sql=select+1"):
        answer = get(base, path, bearer(token))
        assert answer.status == 403, (path, answer.status, answer.data[:200])
        assert hub_config.db_path.encode() not in answer.data
    # The same admin's browser session still reads it (only tokens are refused), and the token reads monitor.
    admin = Browserless(base)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    assert admin.request("GET", "/~5Finternal.json").status == 200
    assert get(base, "/monitor.json?sql=select+1", bearer(token)).status == 200


def test_A2_token_rate_limit_is_not_multiplied_by_a_users_many_tokens(hub_config, real_hub):
    """The budget was per token only: a user holding 50 live tokens (the allowed maximum) made
    50 x ``auth.api_token_requests_per_minute`` requests a minute. Now the owner's tokens share
    ``auth.api_token_user_requests_per_minute`` too."""
    set_config(hub_config, auth={"api_token_requests_per_minute": 5, "api_token_user_requests_per_minute": 8})
    base = real_hub()
    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("tina", hash_password(PASSWORD, iterations=1000), "viewer")
    accounts.create_user("otto", hash_password(PASSWORD, iterations=1000), "viewer")
    tokens = [accounts.api_tokens.create("tina", "user", f"script {i}")[1] for i in range(4)]
    seen = [[get(base, "/api/servers", bearer(token)).status for _ in range(6)] for token in tokens]
    assert seen[0] == [200] * 5 + [429], seen  # the per-token budget, as before
    assert seen[1] == [200] * 3 + [429] * 3, seen  # the owner's 8 are spent
    assert seen[2] == seen[3] == [429] * 6, seen
    limited = get(base, "/api/servers", bearer(tokens[3]))
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 and b"too many requests" in limited.data
    # Another user's token has its own budget.
    _, other = accounts.api_tokens.create("otto", "user", "script")
    assert get(base, "/api/servers", bearer(other)).status == 200
    # A bad value is one clear line naming the key.
    set_config(hub_config, auth={"api_token_user_requests_per_minute": 0})
    with pytest.raises(config_mod.ConfigError, match=r"auth\.api_token_user_requests_per_minute must be an integer >= 1"):
        config_mod.load(hub_config.path)


def test_A3_sso_two_user_header_lines_are_refused_not_first_wins(hub_config, real_hub):
    """A request from the proxy's address with two ``X-Forwarded-User`` lines was the user of the
    first line. A proxy that appends its header instead of replacing the client's (a
    misconfigured ``proxy_set_header``/``add_header``, a header-copying middleware) lets the
    client's line come first: the client picked its user. Now two lines are a 403."""
    set_config(hub_config, sso=SSO)
    base = real_hub()
    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("boss", hash_password(PASSWORD, iterations=1000), "admin")
    status, body = raw_request(base, ["X-Forwarded-User: otto"], PROXY_ADDRESS)
    assert status == 200, body[:200]
    for lines in (["X-Forwarded-User: boss", "X-Forwarded-User: otto"],
                  ["x-forwarded-user: boss", "X-FORWARDED-USER: otto"],
                  ["X-Forwarded-User: otto", "X-Forwarded-User: otto"]):
        status, body = raw_request(base, lines, PROXY_ADDRESS)
        assert status == 403 and "more than one" in body, (lines, status, body[:200])
    status, body = raw_request(base, ["X-Forwarded-User: boss", "X-Forwarded-User: otto"], PROXY_ADDRESS)
    assert '"admin"' not in body and "boss" not in body


def test_A4_sso_and_trusted_proxy_networks_never_widen_silently(hub_config, tmp_path):
    """``sso.proxies: ["127.0.0.2/8"]`` (an address with a prefix) was read as 127.0.0.0/8, so
    every local process on 127.0.0.1 could send ``X-Forwarded-User`` and be anyone;
    ``0.0.0.0/0`` trusted every client on the network. Both are config errors now (one line
    naming the key); ``auth.trusted_proxies`` is read the same way. An IPv4-mapped entry
    (``::ffff:127.0.0.2``) matches its IPv4 peer instead of never matching."""
    for key, entry, message in (
            ("sso.proxies", "127.0.0.2/8", "has host bits set (did you mean 127.0.0.2/32 or 127.0.0.0/8?)"),
            ("sso.proxies", "10.1.2.3/24", "has host bits set (did you mean 10.1.2.3/32 or 10.1.2.0/24?)"),
            ("sso.proxies", "0.0.0.0/0", "trusts every address"),
            ("sso.proxies", "::/0", "trusts every address"),
            ("auth.trusted_proxies", "127.0.0.1/8", "has host bits set"),
            ("auth.trusted_proxies", "0.0.0.0/0", "trusts every address")):
        section, name = key.split(".")
        set_config(hub_config, sso=SSO, auth={"trusted_proxies": ["127.0.0.1"]})
        set_config(hub_config, **{section: {name: [entry]}})
        with pytest.raises(config_mod.ConfigError) as caught:
            config_mod.load(hub_config.path)
        assert str(caught.value).startswith(f"config: {key}: {entry!r} ") and message in str(caught.value), \
            str(caught.value)
    # The real command refuses to start with the widened network (before: it served, and trusted 127.0.0.1).
    set_config(hub_config, sso=dict(SSO, proxies=["127.0.0.2/8"]), auth={"trusted_proxies": ["127.0.0.1"]})
    proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", hub_config.path, "--port",
                             str(free_port())], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the hub started with sso.proxies 127.0.0.2/8 (it trusts 127.0.0.1 too)")
    assert proc.returncode != 0 and "Traceback" not in err and "has host bits set" in err, err
    # Networks and IPv4-mapped entries still work.
    set_config(hub_config, sso=dict(SSO, proxies=["127.0.0.2/31", "::ffff:10.0.0.7", "::ffff:10.9.0.0/112"]))
    cfg = config_mod.load(hub_config.path)
    nets = peers.networks(cfg.get("sso.proxies"))
    for peer, trusted in (("127.0.0.2", True), ("127.0.0.3", True), ("127.0.0.1", False), ("10.0.0.7", True),
                          ("::ffff:10.0.0.7", True), ("10.9.3.4", True), ("10.8.0.1", False)):
        assert peers.peer_in({"client": (peer, 4000)}, nets) is trusted, peer


def test_A5_revoking_an_out_of_range_or_non_ascii_token_id_is_403_not_500(hub_config, real_hub):
    """``/account``'s revoke form took any ``str.isdigit()`` value: ``"²"`` (int() refuses it) and
    a number beyond SQLite's integers answered 500."""
    base = real_hub()
    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("tina", hash_password(PASSWORD, iterations=1000), "viewer")
    _, token = accounts.api_tokens.create("tina", "user", "script")
    tina = Browserless(base)
    assert tina.login("tina", PASSWORD).status == 302
    for raw in ("99999999999999999999999", "9223372036854775808", "\u00b2", "\u0663", "-1", "1e3", ""):
        answer = post_form(tina, "/account", {"action": "revoke_token", "token_id": raw})
        assert answer.status == 403 and "not a live token of yours" in answer.data.decode(), (raw, answer.status)
    assert get(base, "/api/servers", bearer(token)).status == 200


def test_A6_admin_password_reset_also_revokes_the_users_api_tokens(hub_config, real_hub):
    """An admin resets a password when an account is compromised: that ended the user's sessions
    but left every API token the intruder had made reading with the user's scope."""
    base = real_hub()
    accounts = Accounts(hub_config.auth_db_path)
    accounts.create_user("tina", hash_password(PASSWORD, iterations=1000), "viewer")
    _, token = accounts.api_tokens.create("tina", "user", "intruder's script")
    _, other = accounts.api_tokens.create(hub_config.get("auth.username"), "config", "admin's script")
    assert get(base, "/api/servers", bearer(token)).status == 200
    admin = Browserless(base)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    answer = post_form(admin, "/admin/users/tina", {"action": "reset"}, token_path="/admin")
    assert answer.status == 200 and "its 1 live API token was revoked" in answer.data.decode()
    dead = get(base, "/api/servers", bearer(token))
    assert dead.status == 401 and b"API token revoked" in dead.data
    assert accounts.api_tokens.list("tina")[0]["revoked_by"] == hub_config.get("auth.username")
    assert get(base, "/api/servers", bearer(other)).status == 200  # nobody else's


def test_A7_an_admins_demotion_of_a_sign_on_user_is_not_undone_by_the_proxys_groups(hub_config, real_hub, tmp_path):
    """An admin who saw abuse demoted the sign-on user alice (proxy group lab-admins -> admin) to a
    viewer of no server on /admin: the page said done, and alice's next request through the proxy
    made her admin again (her role followed the proxy's groups on every request). Deleting her
    only re-created her. Now an admin's edit of a sign-on user wins over the groups from then on."""
    import json

    set_config(hub_config, sso=SSO)
    base = real_hub()
    users = tmp_path / "idp.json"
    users.write_text(json.dumps({"alice": ["lab-admins"], "bob": ["lab-admins"]}))
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "sso_proxy.py"), "--listen", f"127.0.0.1:{port}",
         "--upstream", base.split("//")[1], "--source", PROXY_ADDRESS, "--users", str(users)],
        stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    try:
        assert proxy.stdout.readline().strip() == b"ready"
        via = f"http://127.0.0.1:{port}"
        for name in ("alice", "bob"):
            assert get(via, "/admin", {"Cookie": f"idp={name}"}).status == 200
        admin = Browserless(base)
        assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
        changed = post_form(admin, "/admin/users/alice", {"role": "viewer", "scope": "some", "see_processes": ""},
                            token_path="/admin")
        assert changed.status == 302
        for _ in range(2):  # her next requests through the proxy, still in lab-admins
            assert get(via, "/admin", {"Cookie": "idp=alice"}).status == 403
            fleet = get(via, "/api/fleet?fresh=1", {"Cookie": "idp=alice"})
            assert fleet.status == 200 and json.loads(fleet.data)["servers"] == []
        accounts = Accounts(hub_config.auth_db_path)
        alice = accounts.user("alice")
        assert (alice["role"], alice["servers"], alice["created_by"]) == ("viewer", [], "sso (role set by admin)")
        # bob, never edited, still follows the proxy's groups.
        assert get(via, "/admin", {"Cookie": "idp=bob"}).status == 200 and accounts.user("bob")["created_by"] == "sso"
    finally:
        os.killpg(proxy.pid, signal.SIGTERM)
        proxy.wait(timeout=10)
