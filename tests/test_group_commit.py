"""Ingest's group commit (issue 13): requests that queue while the writer is busy are written in
one transaction, each report in its own savepoint, and answered after the COMMIT. Real SQLite
file; the statements are observed with sqlite3's trace callback on the app's own connection."""

import io
import json
import sqlite3
import time

import ingest
from reports import sample_report

from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_reports


def environ(cfg, body, token=None):
    raw = json.dumps(body).encode()
    return {"REQUEST_METHOD": "POST", "PATH_INFO": ingest.REPORT_PATH, "CONTENT_LENGTH": str(len(raw)),
            "HTTP_AUTHORIZATION": "Bearer " + (token or cfg.get("agent.token")), "wsgi.input": io.BytesIO(raw)}


def statements(app):
    seen = []
    app._conn().set_trace_callback(seen.append)
    return seen


def test_queued_requests_are_written_in_one_transaction_and_answered_each(hub_config):
    app = ingest.make_application(hub_config)
    seen = statements(app)
    reports = [sample_report(f"gc-{i}", gpus=2) for i in range(5)]
    bad = dict(sample_report("gc-bad"), sample_time="yesterday")
    batch = {"reports": [sample_report("gc-batch-1"), reports[0]]}  # the second one is a duplicate
    answers = app.respond([environ(hub_config, r) for r in reports]
                          + [environ(hub_config, bad), environ(hub_config, batch),
                             environ(hub_config, reports[1], token="wrong")])
    statuses = [int(line.split()[0]) for line, _, _ in answers]
    assert statuses == [201] * 5 + [400, 207, 401]
    results = json.loads(answers[6][2])["results"]
    assert [r["status"] for r in results] == [201, 200] and results[1]["duplicate"] is True
    assert "sample_time" in json.loads(answers[5][2])["error"]
    assert sum(1 for s in seen if s.startswith("BEGIN IMMEDIATE")) == 1
    assert sum(1 for s in seen if s == "COMMIT") == 1
    conn = sqlite3.connect(hub_config.db_path)
    assert conn.execute("select count(*) from host_samples").fetchone()[0] == 6
    assert conn.execute("select count(distinct report_id) from host_samples").fetchone()[0] == 6


def test_one_failing_report_is_undone_alone(hub_config):
    """A report SQLite refuses (here a trigger raising for one host) is answered 503 and leaves
    no row behind; the reports before and after it in the same transaction are stored."""
    schema.migrate(hub_config.db_path)
    setup = sqlite3.connect(hub_config.db_path)
    setup.execute("CREATE TRIGGER refuse AFTER INSERT ON gpu_samples WHEN"
                  " (SELECT hostname FROM servers JOIN gpus ON gpus.server_id = servers.id WHERE gpus.id = NEW.gpu_id)"
                  " = 'gc-refused' BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")
    setup.close()
    app = ingest.make_application(hub_config)
    answers = app.respond([environ(hub_config, sample_report(name)) for name in ("gc-a", "gc-refused", "gc-b")])
    assert [int(line.split()[0]) for line, _, _ in answers] == [201, 503, 201]
    assert "refused by the test trigger" in json.loads(answers[1][2])["error"]
    assert ("Retry-After", "5") in answers[1][1]
    conn = sqlite3.connect(hub_config.db_path)
    names = [n for (n,) in conn.execute("select hostname from servers order by hostname")]
    assert names == ["gc-a", "gc-b"]  # nothing of gc-refused: its server row was undone too
    assert conn.execute("select count(*) from host_samples").fetchone()[0] == 2


def test_store_reports_answers_in_order_and_keeps_duplicates_out(tmp_path):
    path = str(tmp_path / "m.db")
    schema.migrate(path)
    conn = schema.connect(path)
    first, second = validate_report(sample_report("gc-1")), validate_report(sample_report("gc-2"))
    results = store_reports(conn, [(first, first["sample_time"]), (second, second["sample_time"]),
                                   (first, first["sample_time"])])
    assert [r["stored"] for r in results] == [True, True, False]
    assert not conn.in_transaction
    assert conn.execute("select count(*) from host_samples").fetchone()[0] == 2


def test_the_checkpoint_thread_copies_the_wal_so_writers_do_not(tmp_path):
    """Writers checkpoint only past a 64 MiB WAL; the hub's checkpoint thread copies the WAL
    into the database file while reports keep being written (a passive checkpoint, no lock)."""
    from server_monitor.storage.rollup import CheckpointThread

    path = str(tmp_path / "m.db")
    schema.migrate(path)
    conn = schema.connect(path)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == schema.WAL_AUTOCHECKPOINT_PAGES
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_empty = (tmp_path / "m.db").stat().st_size
    for i in range(60):  # ~1,200 WAL pages: past SQLite's default threshold (1,000), where a writer would copy them
        report = validate_report(sample_report(f"ck-{i}", gpus=8, processes=2, disks=4))
        store_reports(conn, [(report, report["sample_time"])])
    size_before = (tmp_path / "m.db").stat().st_size
    assert size_before == size_empty  # no writer copied the WAL into the database
    thread = CheckpointThread(path, interval=0.05)
    thread.start()
    try:
        for i in range(60, 80):  # writes go on while it runs
            report = validate_report(sample_report(f"ck-{i}", gpus=8, processes=2, disks=4))
            store_reports(conn, [(report, report["sample_time"])])
        deadline = time.time() + 10
        while time.time() < deadline and not (thread.last and thread.last[1] > 0 and thread.last[1] == thread.last[2]):
            time.sleep(0.05)
        busy, frames, copied = thread.last
        assert busy == 0 and frames > 0 and copied == frames
        assert (tmp_path / "m.db").stat().st_size > size_before  # the rows are in the database file now
        reader = sqlite3.connect(path)
        assert reader.execute("select count(*) from servers").fetchone()[0] == 80
    finally:
        thread.stopped.set()
        thread.join(5)


def test_a_wal_that_analysts_never_leave_is_brought_back_to_its_start(tmp_path, monkeypatch):
    """The 10-minute mixed run grew the WAL to 1.7 GB: analysts' scans ran back to back, so some
    reader always read from the WAL and SQLite never restarted it. Here two "analysts" on two
    analyst slots (their lock files, as server_monitor.serving.analyst takes them) hold overlapping read
    transactions of 0.3 s while a writer commits every few ms under the writer lock: the WAL
    grows past the restart threshold; the checkpoint thread holds both slots, restarts the WAL
    (writers held at most RESTART_WAIT_MS) and the analysts go on after. Without holding the
    slots a restart never finds a moment without an old reader."""
    import fcntl
    import os
    import threading

    from server_monitor.storage import rollup
    from server_monitor.storage.instance import WriterLock

    monkeypatch.setattr(rollup, "RESTART_FRAMES", 200)
    path = str(tmp_path / "m.db")
    schema.migrate(path)
    setup = schema.connect(path)
    setup.execute("create table t (x blob)")
    setup.close()
    slots = [path + ".analyst.0.lock", path + ".analyst.1.lock"]  # sql.analyst_concurrency: 2
    stop = threading.Event()
    scans, commits, waits = [0], [0], []

    def analyst(slot, offset):
        conn = sqlite3.connect(path, isolation_level=None)
        fd = os.open(slot, os.O_RDWR | os.O_CREAT, 0o600)
        time.sleep(offset)  # the two scans overlap: some reader is always in the WAL
        while not stop.is_set():
            try:  # as AnalystSQL takes a slot: without blocking, again after 20 ms
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            conn.execute("BEGIN")
            conn.execute("select count(*) from t").fetchone()
            time.sleep(0.3)
            conn.execute("COMMIT")
            scans[0] += 1
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(0.005)  # the next query comes a round trip later

    def writer():
        conn = schema.connect(path)
        lock = WriterLock(path)
        while not stop.is_set():
            started = time.monotonic()
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("insert into t values (randomblob(3000))")
                conn.execute("COMMIT")
            waits.append(time.monotonic() - started)
            commits[0] += 1
            time.sleep(0.003)

    workers = [threading.Thread(target=analyst, args=(slots[0], 0), daemon=True),
               threading.Thread(target=analyst, args=(slots[1], 0.15), daemon=True),
               threading.Thread(target=writer, daemon=True)]
    for t in workers:
        t.start()
    def wal_size():
        try:
            return os.path.getsize(path + "-wal")
        except FileNotFoundError:  # before the first connection opens it
            return 0

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and wal_size() < 300 * 4096:
        time.sleep(0.05)
    assert wal_size() >= 300 * 4096  # grown past the threshold: the readers never leave it
    thread = rollup.CheckpointThread(path, interval=0.05, analyst_locks=slots)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not thread.restarts:
            time.sleep(0.05)
        assert thread.restarts >= 1, thread.last
        before = scans[0], commits[0]
        time.sleep(1)
        assert scans[0] > before[0] and commits[0] > before[1]  # analysts and writes go on
        assert wal_size() <= schema.WAL_AUTOCHECKPOINT_PAGES * 4096  # journal_size_limit
        # Writers waited for the last frames' copy and RESTART's 100 ms at most, never for a long copy.
        assert max(waits) < 1.5, max(waits)
    finally:
        stop.set()
        thread.stopped.set()
        thread.join(5)
        for t in workers:
            t.join(5)


def test_after_a_failed_report_the_same_hosts_later_ones_wait(hub_config):
    """Disk full in the proof suite: a host's report refused, its next one in the same write stored,
    the first one stored on retry: the host's history out of order. Later reports of a host whose
    report failed are answered 503 without being written; other hosts' are stored."""
    schema.migrate(hub_config.db_path)
    setup = sqlite3.connect(hub_config.db_path)
    setup.execute("CREATE TRIGGER refuse AFTER INSERT ON host_samples WHEN NEW.report_id = 'refuse-me'"
                  " BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")
    setup.commit()
    first = dict(sample_report("gc-host", sample_time=1_796_000_000), report_id="refuse-me")
    second = sample_report("gc-host", sample_time=1_796_000_030)
    app = ingest.make_application(hub_config)
    answers = app.respond([environ(hub_config, {"reports": [first, sample_report("gc-other"), second]})])
    assert [r["status"] for r in json.loads(answers[0][2])["results"]] == [503, 201, 503]
    conn = sqlite3.connect(hub_config.db_path)
    assert conn.execute("select count(*) from host_samples join servers on servers.id = server_id"
                        " where hostname = 'gc-host'").fetchone()[0] == 0
    setup.execute("DROP TRIGGER refuse")
    setup.commit()
    answers = app.respond([environ(hub_config, {"reports": [first, second]})])  # the agent's retry, in order
    assert [r["status"] for r in json.loads(answers[0][2])["results"]] == [201, 201]
    assert [r for (r,) in conn.execute("select report_id from host_samples join servers on servers.id = server_id"
                                       " where hostname = 'gc-host' order by host_samples.ts")] == \
        ["refuse-me", second["report_id"]]
