"""Single sign-on through a forward-auth proxy (issue 26 item 5), with the real hub process and a
real header-setting reverse proxy process (``tests/sso_proxy.py``) on loopback: the proxy talks
to the hub from 127.0.0.2, the only address in ``sso.proxies``; everything else reaches the hub
from 127.0.0.1, where the same headers must be ignored."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import urllib3
import yaml
from browser import push
from conftest import ROOT, free_port, start_hub
from reports import sample_report

from server_monitor.auth.accounts import Accounts
from server_monitor.core import config as config_mod

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY_ADDRESS = "127.0.0.2"
IDP_USERS = {
    "alice@lab.example": ["lab-admins", "everyone"],
    "tina": ["team-a-members", "everyone"],
    "otto": ["everyone"],
}
SSO = {
    "enabled": True,
    "proxies": [PROXY_ADDRESS + "/32"],
    "user_header": "X-Forwarded-User",
    "groups_header": "X-Forwarded-Groups",
    "default_role": "viewer",
    "default_scope": "none",
    "roles": {"lab-admins": "admin"},
    "host_groups": {"team-a-members": ["team-a"]},
    "logout_url": "/oauth2/sign_out",
}


def write_config(hub_config, sso):
    data = yaml.safe_load(open(hub_config.path))
    data["sso"] = sso
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)


def grouped(hostname, groups):
    report = sample_report(hostname, gpus=2, processes=0, state="idle")
    report["groups"] = groups
    return report


@pytest.fixture
def sso_hub(hub_config, tmp_path):
    """The real hub with SSO on, a-1/a-2 in host group team-a and b-1 in team-b, and the proxy
    process in front of it; yields ``(hub, proxy_url, http)``."""
    write_config(hub_config, SSO)
    hub = start_hub(hub_config.path, tmp_path / "hub.log")
    users = tmp_path / "idp-users.json"
    users.write_text(json.dumps(IDP_USERS))
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "sso_proxy.py"), "--listen", f"127.0.0.1:{port}",
         "--upstream", hub.base_url.split("//")[1], "--source", PROXY_ADDRESS, "--users", str(users)],
        stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    try:
        assert proxy.stdout.readline().strip() == b"ready"
        for name, groups in (("a-1", ["team-a"]), ("a-2", ["team-a"]), ("b-1", ["team-b"])):
            push(hub, hub_config, grouped(name, groups))
        yield hub, f"http://127.0.0.1:{port}", urllib3.PoolManager(retries=False)
    finally:
        for child in (proxy, hub):
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=10)
        hub.log.close()


def as_user(name, **headers):
    return dict(headers, Cookie=f"idp={name}")


def test_item5_sso_first_login_through_a_real_proxy_creates_users_with_mapped_role_and_scope(sso_hub, hub_config):
    hub, proxy, http = sso_hub
    accounts = Accounts(hub_config.auth_db_path)
    assert accounts.user("tina") is None
    # The proxy refuses a browser it does not know; the hub never sees that request.
    assert http.request("GET", proxy + "/api/fleet").status == 401
    # tina (proxy group team-a-members -> host group team-a): a viewer of team-a's servers only.
    fleet = http.request("GET", proxy + "/api/fleet?fresh=1", headers=as_user("tina"))
    assert fleet.status == 200, fleet.data[:300]
    assert sorted(s["name"] for s in json.loads(fleet.data)["servers"]) == ["a-1", "a-2"]
    free = json.loads(http.request("GET", proxy + "/monitor/free_gpus.json?_shape=array", headers=as_user("tina")).data)
    assert {r["server"] for r in free} == {"a-1", "a-2"}
    user = accounts.user("tina")
    assert (user["role"], user["servers"], user["groups"], user["created_by"]) == ("viewer", [], ["team-a"], "sso")
    assert http.request("GET", proxy + "/admin", headers=as_user("tina"), redirect=False).status == 403
    # otto: no mapped group, sso.default_scope none: a viewer who sees no server.
    otto = json.loads(http.request("GET", proxy + "/api/fleet?fresh=1", headers=as_user("otto")).data)
    assert otto["servers"] == [] and accounts.user("otto")["servers"] == []
    # alice (lab-admins -> admin): the admin page, and a form post with the page's CSRF token works.
    admin_page = http.request("GET", proxy + "/admin", headers=as_user("alice@lab.example"))
    assert admin_page.status == 200
    assert accounts.user("alice@lab.example")["role"] == "admin"
    token = re.search(r'name="csrftoken" value="([^"]+)"', admin_page.data.decode()).group(1)
    created = http.request("POST", proxy + "/admin/invites", headers=as_user(
        "alice@lab.example", **{"Content-Type": "application/x-www-form-urlencoded"}),
        body=f"csrftoken={token}&role=viewer&max_uses=1&hours=1&scope=all")
    assert created.status == 200 and b"register?code=" in created.data
    # The form token is bound to the proxy's user: another user's token, or none, is refused.
    other = re.search(r'name="csrftoken" value="([^"]+)"', http.request(
        "GET", proxy + "/account", headers=as_user("tina")).data.decode()).group(1)
    assert other != token
    for body in (f"csrftoken={other}&role=admin&max_uses=1&hours=1&scope=all", "role=admin&max_uses=1&hours=1"):
        refused = http.request("POST", proxy + "/admin/invites", headers=as_user(
            "alice@lab.example", **{"Content-Type": "application/x-www-form-urlencoded"}), body=body)
        assert refused.status == 403, refused.data[:200]
    assert len(accounts.invites()) == 1
    # The account page of an SSO user has no password form; logging out goes to the proxy's sign-out.
    account = http.request("GET", proxy + "/account", headers=as_user("tina")).data.decode()
    assert "sign-on proxy" in account and 'name="new_password"' not in account
    token = re.search(r'name="csrftoken" value="([^"]+)"', account).group(1)
    out = http.request("POST", proxy + "/logout", headers=as_user("tina", **{
        "Content-Type": "application/x-www-form-urlencoded"}), body=f"csrftoken={token}", redirect=False)
    assert out.status == 302 and out.headers["location"] == "/oauth2/sign_out"


def test_item5_sso_headers_from_any_other_address_are_ignored(sso_hub, hub_config):
    hub, proxy, http = sso_hub
    accounts = Accounts(hub_config.auth_db_path)
    forged = {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "lab-admins"}
    # Straight to the hub from 127.0.0.1 (not in sso.proxies) with the proxy's headers: anonymous.
    for path in ("/api/fleet", "/monitor/servers.json", "/admin"):
        answer = http.request("GET", hub.base_url + path, headers=forged, redirect=False)
        assert answer.status in (401, 302), (path, answer.status)
        if answer.status == 302:
            assert answer.headers["location"].startswith("/login")
    assert accounts.user("mallory") is None
    # Through the proxy, headers the client sends are replaced by the proxy's own: otto stays otto.
    seen = http.request("GET", proxy + "/admin", headers=as_user("otto", **forged), redirect=False)
    assert seen.status == 403 and accounts.user("mallory") is None
    assert accounts.user("otto")["role"] == "viewer"
    log = open(hub.log.name).read()
    assert "sent X-Forwarded-User but is not in sso.proxies; ignored" in log


def test_item5_sso_is_off_by_default_and_a_bad_key_is_one_clear_line(hub_config, tmp_path):
    assert config_mod.load(hub_config.path).get("sso.enabled") is False
    for sso, message in (
            ({"enabeld": True}, "config: unknown key sso.enabeld (did you mean enabled?)"),
            (dict(SSO, roles={"lab-admins": "root"}), "config: sso.roles.lab-admins: 'root' is not a role"),
            (dict(SSO, proxies=[]), "config: sso.proxies must list the proxy's address when sso.enabled is true"),
            (dict(SSO, proxies=["proxy.lab"]), "config: sso.proxies: 'proxy.lab' is not an address or network"),
            (dict(SSO, host_groups={"x": ["bad name"]}), "config: sso.host_groups.x must be a list of host group names"),
            (dict(SSO, user_header="X User"), "config: sso.user_header must be an HTTP header name")):
        write_config(hub_config, sso)
        with pytest.raises(config_mod.ConfigError) as caught:
            config_mod.load(hub_config.path)
        assert str(caught.value).startswith(message), str(caught.value)
    # The real command line: one line on stderr naming the key, a non-zero exit, no traceback.
    write_config(hub_config, {"enabeld": True})
    run = subprocess.run([sys.executable, "-m", "server_monitor", "serve", "-c", hub_config.path,
                          "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        "Error: config: unknown key sso.enabeld (did you mean enabled?)"]


def test_item5_sso_groups_header_in_each_proxys_form(hub_config):
    """oauth2-proxy: one line per group; Authelia: one line joined by ","; Authentik: "|"; only
    from a peer in sso.proxies."""
    from server_monitor.auth import sso

    write_config(hub_config, SSO)
    cfg = config_mod.load(hub_config.path)

    def scope(peer, *headers):
        return {"client": (peer, 40000), "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}

    lines = scope(PROXY_ADDRESS, ("X-Forwarded-User", "tina"), ("X-Forwarded-Groups", "team-a-members"),
                  ("X-Forwarded-Groups", "everyone"))
    assert sso.identity(lines, cfg) == ("tina", ["everyone", "team-a-members"])
    joined = scope(PROXY_ADDRESS, ("X-Forwarded-User", "tina"), ("X-Forwarded-Groups", "team-a-members, everyone"))
    assert sso.identity(joined, cfg) == ("tina", ["everyone", "team-a-members"])
    assert sso.identity(scope("127.0.0.1", ("X-Forwarded-User", "tina")), cfg) is None
    assert sso.identity(scope("::ffff:127.0.0.2", ("X-Forwarded-User", "tina")), cfg) == ("tina", [])
    write_config(hub_config, dict(SSO, user_header="X-authentik-username", groups_header="X-authentik-groups",
                                  groups_separator="|"))
    cfg = config_mod.load(hub_config.path)
    piped = scope(PROXY_ADDRESS, ("X-authentik-username", "alice@lab.example"), ("X-authentik-groups", "lab-admins|x"))
    assert sso.identity(piped, cfg) == ("alice@lab.example", ["lab-admins", "x"])
    assert sso.mapped(cfg, ["lab-admins", "x"])[0] == "admin"
    assert sso.mapped(cfg, ["team-a-members"]) == ("viewer", [], ["team-a"], True)
    assert sso.mapped(cfg, ["x"]) == ("viewer", [], None, True)  # default_scope none
