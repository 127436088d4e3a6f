"""The hub with ``server.workers: 2``: two real worker processes behind one port (issue 13).

What must hold across processes: every acknowledged report stored once, the background jobs
in exactly one worker (another takes over when it dies), one login budget (not one per
worker), one analyst-SQL slot for the whole hub, and no worker outliving a ``kill -9`` of the hub.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import urllib3
import yaml

from http_client import Browserless
from reports import sample_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub2(hub_config, tmp_path):
    """``server-monitor serve`` with two workers (``server.workers: 2``, analyst queue 0)."""
    data = yaml.safe_load(open(hub_config.path))
    data["server"]["workers"] = 2
    data.setdefault("sql", {})["analyst_queue"] = 0
    data["data"]["maintenance_interval_s"] = 1
    with open(hub_config.path, "w") as fp:
        yaml.safe_dump(data, fp)
    port = free_port()
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server_monitor", "serve", "-c", hub_config.path,
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.base_url = f"http://127.0.0.1:{port}"
    proc.config = hub_config
    proc.log_path = tmp_path / "hub.log"
    http = urllib3.PoolManager(retries=False)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http.request("GET", proc.base_url + "/-/health", timeout=1).status == 200 and len(workers(proc)) == 2:
                break
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("hub did not start:\n" + proc.log_path.read_text())
    yield proc
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    log.close()


def workers(proc):
    """The uvicorn worker processes of the hub (children running the app, not the resource tracker)."""
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not reaped yet
            pass
    return found


def jobs_state(config):
    with open(config.db_path + ".jobs.lock") as fp:
        return json.loads(fp.read() or "{}")


def post_report(base, token, report):
    http = urllib3.PoolManager(retries=False)  # a new connection each time: spread over the workers
    return http.request("POST", base + "/api/report", body=json.dumps(report).encode(),
                        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"}).status


def test_two_workers_store_every_report_once_and_both_take_requests(hub2):
    token = hub2.config.get("agent.token")
    before = {w.pid: w.cpu_times().user + w.cpu_times().system for w in workers(hub2)}
    now = time.time()
    reports = [sample_report(f"w-{i % 20}", gpus=8, processes=2, sample_time=now - 600 + i) for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda r: post_report(hub2.base_url, token, r), reports))
    assert statuses == [201] * 200
    conn = sqlite3.connect(hub2.config.db_path)
    stored = {r for (r,) in conn.execute("SELECT report_id FROM host_samples")}
    assert stored == {r["report_id"] for r in reports}
    assert conn.execute("SELECT count(*) FROM servers").fetchone()[0] == 20
    after = {w.pid: w.cpu_times().user + w.cpu_times().system for w in workers(hub2)}
    busy = [pid for pid in before if after.get(pid, 0) - before[pid] > 0.05]
    assert len(busy) == 2, f"only {busy} of {list(before)} did work"


def test_jobs_run_once_in_the_serve_process_and_survive_a_dying_worker(hub2):
    """The maintenance and alert threads run in the ``serve`` process (never on a worker's GIL),
    once for the hub; a worker that dies is replaced and the jobs go on."""
    assert jobs_state(hub2.config)["pid"] == hub2.pid
    # One maintenance thread in the whole hub: at a 1 s interval, about one pass a second (two
    # would make two).
    conn = sqlite3.connect(hub2.config.db_path)
    passes = "SELECT coalesce((SELECT value FROM maintenance_state WHERE name = 'passes'), 0)"
    time.sleep(1.5)
    first, t0 = conn.execute(passes).fetchone()[0], time.monotonic()
    time.sleep(6)
    done = conn.execute(passes).fetchone()[0] - first
    assert 3 <= done <= (time.monotonic() - t0) + 1.5, done
    victim = workers(hub2)[0].pid
    os.kill(victim, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and (victim in {w.pid for w in workers(hub2)} or len(workers(hub2)) < 2):
        time.sleep(0.2)
    assert len(workers(hub2)) == 2 and victim not in {w.pid for w in workers(hub2)}, hub2.log_path.read_text()[-3000:]
    assert jobs_state(hub2.config)["pid"] == hub2.pid
    # Maintenance still runs: a report's hour is rolled up into the 5-minute tier.
    token = hub2.config.get("agent.token")
    assert post_report(hub2.base_url, token, sample_report("moved", gpus=1, processes=0,
                                                           sample_time=time.time() - 3 * 3600)) == 201
    deadline = time.time() + 30
    while time.time() < deadline and not conn.execute("SELECT count(*) FROM gpu_samples_5m").fetchone()[0]:
        time.sleep(0.3)
    assert conn.execute("SELECT count(*) FROM gpu_samples_5m").fetchone()[0] > 0
    http = urllib3.PoolManager(retries=False)
    assert all(http.request("GET", hub2.base_url + "/-/health").status == 200 for _ in range(6))


def test_parallel_guesses_get_five_checks_across_workers(hub2):
    def guess(i):
        return Browserless(hub2.base_url).login("admin", f"wrong-{i}").status

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(guess, range(20)))
    assert statuses.count(401) == 5 and statuses.count(429) == 15, statuses


def test_one_analyst_query_at_a_time_in_the_whole_hub(hub2):
    client = Browserless(hub2.base_url)
    assert client.login("admin", hub2.config.password).status == 302
    slow = ("/monitor.json?sql=" + urllib.parse.quote(
        "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"))
    first = {}
    runner = threading.Thread(target=lambda: first.setdefault("r", client.request("GET", slow)))
    runner.start()
    time.sleep(0.5)  # the first query holds the hub's one slot (analyst time limit 2 s)
    others = []
    for _ in range(6):  # new connections: some land on the other worker
        other = Browserless(hub2.base_url)
        other.cookies = dict(client.cookies)
        others.append(other.request("GET", "/monitor.json?sql=select+1").status)
    runner.join(30)
    assert others == [429] * 6  # queue 0: refused in either worker while the slot is taken
    assert first["r"].status in (200, 400)  # ran (stopped by the time limit), not refused
    assert client.request("GET", "/monitor.json?sql=select+1").status == 200


def test_kill_9_of_the_hub_takes_its_workers_along(hub2):
    pids = [w.pid for w in workers(hub2)]
    assert len(pids) == 2
    os.kill(hub2.pid, signal.SIGKILL)
    hub2.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                         for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_maintenance_transactions_queue_with_ingest_on_the_writer_lock(tmp_path):
    """Issue 13: the maintenance pass's write transactions hold the same lock as ingest's, so an
    ingest write waits in the kernel's queue (woken at once) instead of SQLite's sleeping busy
    handler; the lock is released after COMMIT, ROLLBACK, and a BEGIN that failed."""
    from server_monitor.storage import schema
    from server_monitor.storage.instance import LockedWriter, WriterLock

    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    writer = schema.connect(path, factory=LockedWriter)
    writer.writer_lock = WriterLock(path)
    other = WriterLock(path)  # another worker's ingest: its own descriptor on the same file
    got = []

    def ingest():
        with other:
            got.append(time.monotonic())

    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO maintenance_state (name, value) VALUES ('x', 1)")
    waiter = threading.Thread(target=ingest)
    waiter.start()
    time.sleep(0.3)
    assert not got  # queued behind the maintenance transaction
    released = time.monotonic()
    writer.execute("COMMIT")
    waiter.join(5)
    assert got and got[0] - released < 0.05  # woken at once, not after a polling sleep
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("ROLLBACK")
    with other:  # free again after a rollback
        pass
    blocker = schema.connect(path)
    blocker.execute("BEGIN IMMEDIATE")  # a writer outside the lock: BEGIN fails after the timeout
    writer.execute("PRAGMA busy_timeout=100")
    with pytest.raises(sqlite3.OperationalError):
        writer.execute("BEGIN IMMEDIATE")
    blocker.execute("ROLLBACK")
    with other:  # the failed BEGIN did not keep the lock
        pass


def test_every_worker_reports_the_leaders_dead_job_threads(tmp_path):
    """M3 with several processes: the jobs' leader publishes its dead job threads in the lock
    file, so a worker that does not run them still answers /-/health 503 naming them."""
    from server_monitor.jobs.leader import JobsLeader

    class Dead:  # a started job thread that has died
        name = "alerts"
        stopped = threading.Event()

        def is_alive(self):
            return False

    path = str(tmp_path / "monitor.db")
    state = {"dead": []}
    leader = JobsLeader(path, lambda: None, lambda: list(state["dead"]), watch_s=0.05)
    leader.start()
    follower = JobsLeader(path, lambda: pytest.fail("a second leader"), lambda: ["never read"])
    follower.start()  # the lock is taken: waits in a thread
    assert leader.is_leader and not follower.is_leader
    assert follower.dead() == []
    from server_monitor.jobs.leader import dead_jobs

    holder = type("Holder", (), {"maintenance_thread": None, "alert_thread": Dead()})()
    state["dead"] = dead_jobs(holder)
    deadline = time.time() + 5
    while time.time() < deadline and follower.dead() != ["alerts"]:
        time.sleep(0.05)
    assert follower.dead() == ["alerts"]



def test_workers_opening_an_old_auth_db_at_once_all_start(tmp_path):
    """Every worker opens auth.db at start; on an auth.db of an older release they all found
    the sessions columns missing and all added them: one went on, the others died of
    "duplicate column name" (seen as a hub that did not start, in this file). Six processes,
    released together, eight times: before the fix 3 of 10 such rounds lost a process. (A new
    auth.db is made by the serve process before it starts the workers.)"""
    import multiprocessing

    from concurrent_open import open_accounts

    # Not "fork": forking this threaded pytest worker can hang a child on a lock held by a thread.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["concurrent_open"])
    for round_ in range(8):
        path = str(tmp_path / f"auth-{round_}.db")
        old = sqlite3.connect(path)
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE sessions (id_hash TEXT PRIMARY KEY, username TEXT NOT NULL, source TEXT NOT NULL,"
                    " created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, client TEXT)")
        old.close()
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=open_accounts, args=(path, barrier, results)) for _ in range(6)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert outcomes == ["ok"] * 6, outcomes
        columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(sessions)")}
        assert {"fingerprint", "last_seen_at"} <= columns
