"""Fleet documents built once by the publisher process and served by every worker
(``server_monitor.serving.fleet_share``), on a real monitor.db filled through ``store_report``."""

import asyncio
import json
import os
import time

import pytest
from reports import sample_report

from server_monitor.serving import fleet, fleet_share
from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report

ADMIN = {"id": "admin", "role": "admin"}
SERVERS = fleet.REUSE_MIN_SERVERS + 20


def _report(n, ts, util=50):
    report = sample_report(f"node-{n:03d}", gpus=2, processes=1, disks=1, sample_time=ts)
    report["sent_at"] = ts
    for gpu in report["gpus"]:
        gpu["utilization.gpu"] = util
    return validate_report(report)


@pytest.fixture
def fleet_db(tmp_path):
    """monitor.db with SERVERS servers of 2 GPUs (a fleet large enough to be shared)."""
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    conn = schema.connect(path)
    now = int(time.time())
    for n in range(SERVERS):
        assert store_report(conn, _report(n, now - 30), now - 30)["stored"]
    yield path, conn
    conn.close()


def _doc(entry):
    doc = json.loads(entry.body)
    doc.pop("generated_at")
    return doc


def _never(previous, version):
    raise AssertionError("the worker built the document itself")


def test_one_build_serves_every_worker_the_same_document_and_etag(fleet_db):
    path, conn = fleet_db
    key = fleet.scope_key(ADMIN)
    first_worker, second_worker = fleet_share.Shelf(path), fleet_share.Shelf(path)
    assert first_worker.get(key) is None  # nothing published yet
    first_worker.want(key)
    assert oct(os.stat(fleet_share.share_dir(path)).st_mode & 0o777) == "0o700"
    publisher = fleet_share.Publisher(path)
    assert publisher.round() == 1
    a, b = first_worker.get(key), second_worker.get(key)
    assert a.entry.etag == b.entry.etag and a.entry.body == b.entry.body and a.servers == SERVERS
    # The document is what a worker would have built itself for that viewer.
    assert _doc(a.entry) == json.loads(fleet.build_content(conn, ADMIN, {}))
    assert json.loads(__import__("gzip").decompress(a.entry.gzip)) == json.loads(a.entry.body)

    # A worker's FleetCache answers from the shelf without building.
    cache = fleet.FleetCache(path, shelf=second_worker)
    served = asyncio.run(cache.get(key, _never))
    assert served.etag == a.entry.etag

    # A new report: the next round publishes it; a round with no commit only confirms the document.
    now = int(time.time())
    assert store_report(conn, _report(0, now, util=7), now)["stored"]
    publisher.round()
    changed = first_worker.get(key)
    assert changed.entry.etag != a.entry.etag
    node = next(s for s in _doc(changed.entry)["servers"] if s["name"] == "node-000")
    assert [g[3] for g in node["gpus"]] == [7, 7]  # utilization.gpu of the new report
    os.utime(os.path.join(fleet_share.share_dir(path), fleet_share.scope_name(key) + ".doc"), (now - 5, now - 5))
    publisher.round()
    confirmed = first_worker.get(key)
    assert confirmed.entry.etag == changed.entry.etag and confirmed.checked > now - 2


def test_workers_build_themselves_for_old_documents_small_fleets_and_fresh(fleet_db, monkeypatch):
    path, conn = fleet_db
    key = fleet.scope_key(ADMIN)
    shelf = fleet_share.Shelf(path)
    shelf.want(key)
    fleet_share.Publisher(path).round()
    doc_path = os.path.join(fleet_share.share_dir(path), fleet_share.scope_name(key) + ".doc")
    builds = []

    async def build(previous, version):
        builds.append(version)
        return fleet.encode(b'{"local":true}', previous, version)

    cache = fleet.FleetCache(path, shelf=shelf)
    time.sleep(0.01)
    fleet_share.note_write(path)  # a person changed something after the document was built
    assert asyncio.run(cache.get(key, build, fresh=True)).body.startswith(b'{"local":true')  # ?fresh=1
    old = time.time() - fleet.MAX_STALE_S - 1  # a publisher that stopped or fell behind
    os.utime(doc_path, (old, old))
    assert asyncio.run(fleet.FleetCache(path, shelf=shelf).get(key, build)).body.startswith(b'{"local":true')
    os.utime(doc_path)
    monkeypatch.setattr(fleet, "REUSE_MIN_SERVERS", SERVERS + 1)  # now a small fleet: exact documents
    assert asyncio.run(fleet.FleetCache(path, shelf=shelf).get(key, build)).body.startswith(b'{"local":true')
    assert len(builds) == 3
    # A half-written or foreign file is never served.
    with open(doc_path, "r+b") as fp:
        fp.truncate(100)
    assert fleet_share.Shelf(path).get(key) is None


def test_a_scope_nobody_asks_for_is_dropped_with_its_document(fleet_db):
    path, _ = fleet_db
    scoped = fleet.scope_key({"id": "scott", "role": "viewer", "servers": [1, 2], "processes": False})
    shelf = fleet_share.Shelf(path)
    shelf.want(scoped)
    publisher = fleet_share.Publisher(path)
    assert publisher.round() == 1
    doc = _doc(shelf.get(scoped).entry)
    assert [s["id"] for s in doc["servers"]] == [1, 2] and doc["processes"] is False
    assert all(g[10] == [] for s in doc["servers"] for g in s["gpus"])  # no processes for this viewer
    stem = os.path.join(fleet_share.share_dir(path), fleet_share.scope_name(scoped))
    old = time.time() - fleet_share.WANT_TTL_S - 1
    os.utime(stem + ".want", (old, old))
    assert publisher.round() == 0
    assert not os.path.exists(stem + ".want") and not os.path.exists(stem + ".doc")


def test_the_leader_runs_the_publisher_process_while_scopes_are_wanted(fleet_db):
    path, _ = fleet_db
    key = fleet.scope_key(ADMIN)
    thread = fleet_share.PublisherThread(path, interval=0.1)
    thread.start()
    try:
        time.sleep(0.5)
        assert thread.proc is None  # nobody asked: no process
        shelf = fleet_share.Shelf(path)
        shelf.want(key)
        deadline = time.monotonic() + 30
        while shelf.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        shared = shelf.get(key)
        assert shared is not None and shared.servers == SERVERS
        proc = thread.proc
        assert proc is not None and proc.poll() is None and proc.pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) >= fleet_share.NICE  # display after acknowledgements
    finally:
        thread.stop()
        thread.join(5)
    assert proc.poll() is not None and not thread.is_alive()


def test_item2_fresh_page_load_takes_the_shared_document_unless_a_person_wrote_since(fleet_db):
    """A page's first load (``?fresh=1``) on a large fleet is answered from the publisher's document
    (a worker's own build is 4.5 s at 10,000 servers) unless a person changed something after it
    was current; then it is built, and the next round's document is good again."""
    path, conn = fleet_db
    key = fleet.scope_key(ADMIN)
    shelf = fleet_share.Shelf(path)
    shelf.want(key)
    publisher = fleet_share.Publisher(path)
    publisher.round()
    builds = []

    async def build(previous, version):
        builds.append(version)
        return fleet.encode(b'{"local":true}', previous, version)

    shared = asyncio.run(fleet.FleetCache(path, shelf=shelf).get(key, build, fresh=True))
    assert shared.etag == shelf.get(key).entry.etag and builds == []
    time.sleep(0.01)
    fleet_share.note_write(path)  # e.g. an admin set a server to maintenance on /admin
    assert asyncio.run(fleet.FleetCache(path, shelf=shelf).get(key, build, fresh=True)).body.startswith(b'{"local":true')
    assert len(builds) == 1
    time.sleep(0.01)
    publisher.round()  # began after the write: current as of after it (nothing committed: confirmed)
    again = asyncio.run(fleet.FleetCache(path, shelf=shelf).get(key, build, fresh=True))
    assert again.etag == shared.etag and len(builds) == 1


def test_item2_large_fleet_document_kept_warm_after_its_viewers_left(fleet_db, monkeypatch):
    """A scope of KEEP_MIN_SERVERS or more servers stays built (every KEEP_PERIOD_S) for KEEP_S after
    the last viewer asked, so the next first page load is not a cold build; a small one is dropped."""
    path, conn = fleet_db
    big = fleet.scope_key(ADMIN)
    small = fleet.scope_key({"id": "scott", "role": "viewer", "servers": [1, 2], "processes": False})
    monkeypatch.setattr(fleet_share, "KEEP_MIN_SERVERS", SERVERS)  # this fleet counts as large
    shelf = fleet_share.Shelf(path)
    shelf.want(big)
    shelf.want(small)
    publisher = fleet_share.Publisher(path)
    assert publisher.round() == 2
    directory = fleet_share.share_dir(path)
    old = time.time() - fleet_share.WANT_TTL_S - 60  # the viewers left a while ago
    for key in (big, small):
        os.utime(os.path.join(directory, fleet_share.scope_name(key) + ".want"), (old, old))
    thread = fleet_share.PublisherThread(path)
    assert thread._wanted()  # the leader keeps (or starts again) the publisher for it
    now = int(time.time())
    assert store_report(conn, _report(0, now, util=9), now)["stored"]
    fresh_publisher = fleet_share.Publisher(path)  # as after a restart of the hub: built at once
    assert fresh_publisher.round() == 1
    assert shelf.get(small) is None
    doc = _doc(shelf.get(big).entry)
    assert [g[3] for g in next(s for s in doc["servers"] if s["name"] == "node-000")["gpus"]] == [9, 9]
    # Kept, not watched: rebuilt every KEEP_PERIOD_S, not every round.
    assert store_report(conn, _report(0, now + 1, util=11), now + 1)["stored"]
    fresh_publisher.round()
    assert shelf.get(big).entry.etag == fleet_share.Shelf(path).get(big).entry.etag
    assert [g[3] for g in next(s for s in _doc(shelf.get(big).entry)["servers"] if s["name"] == "node-000")["gpus"]] == [9, 9]
    fresh_publisher.round(now=time.time() + fleet_share.KEEP_PERIOD_S + 1)
    assert [g[3] for g in next(s for s in _doc(shelf.get(big).entry)["servers"] if s["name"] == "node-000")["gpus"]] == [11, 11]
    # Past KEEP_S it goes too.
    ancient = time.time() - fleet_share.KEEP_S - 1
    os.utime(os.path.join(directory, fleet_share.scope_name(big) + ".want"), (ancient, ancient))
    assert fresh_publisher.round() == 0 and shelf.get(big) is None


def test_item2_a_persons_write_is_noted_for_fresh_page_loads_an_agents_report_is_not(datasette, hub_config):
    """plugins/sm_gate.py: after a logged-in user's write (here an admin's silence) the hub touches
    ``<data.path>.fleet/written`` (a ``?fresh=1`` page load then takes no older shared document);
    reading pages and the agents' reports do not."""
    from test_hub_datasette import Client, ingest

    written = os.path.join(fleet_share.share_dir(hub_config.db_path), fleet_share.WRITTEN)
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    assert ingest(admin, sample_report("w-1", gpus=1, processes=0), hub_config.get("agent.token")).status_code == 201
    assert admin.get("/api/fleet").status_code == 200
    assert not os.path.exists(written)
    before = time.time() - 1
    made = admin.post("/api/silences", content=json.dumps({"server_id": 1, "minutes": 5}).encode(),
                      headers={"Content-Type": "application/json"})
    assert made.status_code == 201, made.text
    assert os.stat(written).st_mtime >= before
    assert fleet_share.Shelf(hub_config.db_path).written() >= before
