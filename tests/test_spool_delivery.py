"""Spool and delivery: no report lost or duplicated across hub outages (real files, real HTTP)."""

import json
import sqlite3
import threading
import time
from wsgiref.simple_server import make_server

import pytest
from conftest import _QuietHandler, free_port
from reports import sample_report

import ingest
from monitor_agent.delivery import Delivery
from monitor_agent.spool import Spool
from monitor_agent.transport import Transport


class Clock:
    """Test clock for the backoff schedule (the network and files stay real)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Hub:
    """The real ingest app on a fixed loopback port that can be stopped and started."""

    def __init__(self, config, port):
        self.app = ingest.make_application(config)
        self.port = port
        self.server = None

    def start(self):
        self.server = make_server("127.0.0.1", self.port, self.app, handler_class=_QuietHandler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def hub(hub_config):
    h = Hub(hub_config, free_port())
    yield h
    h.stop()


def make_delivery(hub, config, tmp_path, clock, **kw):
    transport = Transport(f"http://127.0.0.1:{hub.port}", config.get("agent.token"), timeout=2)
    spool = Spool(str(tmp_path / "spool"), **kw)
    return Delivery(transport, spool, retry_base_s=5, retry_max_s=60, clock=clock)


def one_process_report(i, t0):
    report = sample_report("outage-host", gpus=1, processes=1, disks=1, sample_time=t0 + 30 * i)
    report["sent_at"] = None
    report["processes"][0]["pid"] = 10000 + i  # lets the test read the hub's storage order
    return report


def stored_order(config):
    conn = sqlite3.connect(config.db_path)
    try:
        return [pid for (pid,) in conn.execute("select pid from gpu_processes order by id")]
    finally:
        conn.close()


def test_hub_down_for_120_intervals_then_everything_arrives_once_in_order(hub, hub_config, tmp_path):
    clock = Clock()
    delivery = make_delivery(hub, hub_config, tmp_path, clock)
    t0 = time.time() - 200 * 30
    # Hub up: the first 5 reports go straight through.
    hub.start()
    for i in range(5):
        assert delivery.submit(one_process_report(i, t0)) == "delivered"
        clock.now += 30
    # Hub down for 120 intervals: every report is spooled, retries back off.
    hub.stop()
    attempts_while_down = 0
    for i in range(5, 125):
        before = delivery.failures
        assert delivery.submit(one_process_report(i, t0)) == "spooled"
        attempts_while_down += delivery.failures > before
        clock.now += 30
    assert len(delivery.spool) == 120
    assert delivery.next_attempt > clock.now - 30  # still backing off
    assert attempts_while_down < 120  # backoff skipped most cycles
    # Hub back: the next cycle replays the spool before the new report.
    hub.start()
    clock.now = delivery.next_attempt
    assert delivery.submit(one_process_report(125, t0)) == "spooled"
    assert len(delivery.spool) == 0
    order = stored_order(hub_config)
    assert order == [10000 + i for i in range(126)]
    conn = sqlite3.connect(hub_config.db_path)
    assert conn.execute("select count(*), count(distinct report_id) from host_samples").fetchone() == (126, 126)


def test_lost_acknowledgement_resend_is_not_duplicated(hub, hub_config, tmp_path):
    clock = Clock()
    delivery = make_delivery(hub, hub_config, tmp_path, clock)
    hub.start()
    t0 = time.time() - 3600
    reports = [one_process_report(i, t0) for i in range(3)]
    for r in reports:
        delivery.spool.append(r)
    # The hub stores the batch but the agent never hears back: it sends the same batch again.
    delivery.transport.send({"reports": [dict(r) for r in reports]})
    assert delivery.flush() == 3
    assert stored_order(hub_config) == [10000, 10001, 10002]


def test_invalid_report_is_dropped_and_counted_not_retried(hub, hub_config, tmp_path):
    clock = Clock()
    delivery = make_delivery(hub, hub_config, tmp_path, clock)
    hub.start()
    bad = one_process_report(0, time.time() - 600)
    bad["cpu"]["percent"] = 400
    assert delivery.submit(bad) == "rejected"
    assert len(delivery.spool) == 0 and delivery.spool.stats()["rejected"] == 1
    # In a replayed batch, a bad report is dropped and the good ones are stored.
    hub.stop()
    good = one_process_report(1, time.time() - 600)
    bad2 = one_process_report(2, time.time() - 600)
    bad2["gpus"][0]["index"] = "zero"
    delivery.submit(good)
    delivery.submit(bad2)
    hub.start()
    clock.now = delivery.next_attempt
    delivery.flush()
    assert len(delivery.spool) == 0
    assert delivery.spool.stats()["rejected"] == 2
    assert stored_order(hub_config) == [10001]


def test_wrong_token_keeps_the_spool(hub, hub_config, tmp_path):
    clock = Clock()
    delivery = make_delivery(hub, hub_config, tmp_path, clock)
    delivery.transport.token = "revoked"
    hub.start()
    assert delivery.submit(one_process_report(0, time.time() - 60)) == "spooled"
    assert len(delivery.spool) == 1
    assert delivery.next_attempt - clock.now >= 30  # long backoff: max 60 s with jitter ≥ 0.5
    delivery.transport.token = hub_config.get("agent.token")
    clock.now = delivery.next_attempt
    delivery.flush()
    assert stored_order(hub_config) == [10000]


def test_spool_is_bounded_by_bytes_oldest_dropped_first(tmp_path):
    spool = Spool(str(tmp_path / "s"), max_bytes=20000)
    t0 = time.time() - 3600
    for i in range(60):
        spool.append(one_process_report(i, t0))
    files = spool.files()
    assert sum(size for _, size in files) <= 20000
    kept = [json.loads(__import__("gzip").open(p).read())["processes"][0]["pid"] for p, _ in files]
    assert kept == list(range(10060 - len(kept), 10060))  # the newest survive, in order
    assert spool.stats()["spool_dropped"] == 60 - len(kept)
    # The counter survives a restart.
    spool.close()
    assert Spool(str(tmp_path / "s")).stats()["spool_dropped"] == 60 - len(kept)


def test_spool_drops_reports_older_than_max_age(tmp_path):
    spool = Spool(str(tmp_path / "s"), max_age_s=3600)
    spool.append(one_process_report(0, time.time()))
    assert spool.enforce_limits(now=time.time() + 7200) == 1
    assert len(spool) == 0 and spool.stats()["spool_dropped"] == 1


def test_corrupt_spool_file_is_dropped_not_fatal(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    spool.append(one_process_report(0, time.time()))
    path = spool.files()[0][0]
    with open(path, "wb") as fp:
        fp.write(b"not gzip")
    assert spool.load(path) is None
    assert len(spool) == 0 and spool.stats()["spool_dropped"] == 1


def test_two_agents_cannot_share_a_spool(tmp_path):
    from monitor_agent.spool import SpoolInUse

    first = Spool(str(tmp_path / "s"))
    with pytest.raises(SpoolInUse):
        Spool(str(tmp_path / "s"))
    assert len(first) == 0
