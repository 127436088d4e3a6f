"""Analysts' ad-hoc SQL runs on its own bounded path and never holds up viewers (L6)."""

import asyncio
import statistics
import threading
import time
from urllib.parse import quote

import pytest
from http_client import Browserless

from server_monitor.serving.analyst import AnalystSQL, is_adhoc_sql

HEAVY = ("with recursive c(x) as (select 1 union all select x + 1 from c limit 2000000000) "
         "select count(*) from c")


def test_only_adhoc_sql_on_monitor_is_bounded(datasette):
    def adhoc(path, query=b"", raw=None):
        scope = {"path": path, "query_string": query}
        if raw is not None:
            scope["raw_path"] = raw
        return asyncio.run(is_adhoc_sql(scope, datasette))

    assert adhoc("/monitor", b"sql=select+1")
    assert adhoc("/monitor.json", b"_shape=array&sql=select+1")
    assert not adhoc("/monitor/servers.json", b"_shape=array")  # a canned query
    assert not adhoc("/monitor", b"")
    # N5: table pages (raw SQL in _where, filters, facets) and any spelling of the database.
    assert adhoc("/monitor/host_samples.json", b"_where=1")
    assert adhoc("/monitor/host_samples", b"")
    assert adhoc("/monitor.json", b"sql=select+1", raw=b"/~6Donitor.json")
    assert adhoc("/~6Donitor.csv", b"sql=select+1")
    assert not adhoc("/login", b"sql=select+1")


def test_time_limit_is_lowered_never_raised():
    gate = AnalystSQL(time_limit_ms=2000)
    scope = gate.limited_scope({"query_string": b"sql=select+1&_timelimit=60000"})
    assert scope["query_string"].endswith(b"_timelimit=2000")
    scope = gate.limited_scope({"query_string": b"sql=select+1&_timelimit=50"})
    assert scope["query_string"].endswith(b"_timelimit=50")
    assert gate.limited_scope({"query_string": b"sql=x"})["query_string"] == b"sql=x&_timelimit=2000"


def test_concurrency_cap_and_bounded_queue():
    gate = AnalystSQL(concurrency=1, queue=1, wait_s=5)
    peak = {"running": 0}

    async def slow_app(scope, receive, send):
        peak["running"] = max(peak["running"], gate.running)
        await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def one():
        statuses = []

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await gate(slow_app, {"query_string": b"sql=x"}, None, send)
        return statuses[0]

    async def main():
        return await asyncio.gather(*(one() for _ in range(4)))

    statuses = asyncio.run(main())
    # One runs, one waits, the two beyond the queue are refused at once with 429.
    assert sorted(statuses) == [200, 200, 429, 429]
    assert peak["running"] == 1


@pytest.fixture
def short_analyst_limit(hub_config):
    with open(hub_config.path, "a") as fp:
        fp.write("sql:\n  analyst_time_limit_ms: 1500\n  analyst_concurrency: 1\n  analyst_queue: 8\n")
    return hub_config


def _timed_get(client, path):
    t0 = time.perf_counter()
    response = client.request("GET", path)
    return (time.perf_counter() - t0) * 1000, response


def test_six_heavy_analyst_queries_leave_viewers_canned_queries_alone(short_analyst_limit, hub_process):
    base = hub_process.base_url
    viewer = Browserless(base)
    assert viewer.login("admin", short_analyst_limit.password).status == 302
    canned = "/monitor/servers.json?_shape=array"

    def sample(n=15):
        times = []
        for _ in range(n):
            ms, response = _timed_get(viewer, canned)
            assert response.status == 200, response.data[:200]
            times.append(ms)
            time.sleep(0.05)
        return times

    analysts = []
    for _ in range(6):  # logged in first: PBKDF2 logins are not what is measured here
        client = Browserless(base)
        assert client.login("admin", short_analyst_limit.password).status == 302
        analysts.append(client)
    sample(3)  # warm up (connections, first query)
    baseline = sample()
    stop = threading.Event()
    answers = []

    def analyst(client):
        while not stop.is_set():
            response = client.request("GET", "/monitor.json?sql=" + quote(HEAVY))
            answers.append((response.status, response.data[:300]))

    threads = [threading.Thread(target=analyst, args=(client,)) for client in analysts]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let the six pile up on the bounded path
    loaded = sample()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    base_p50, load_p50 = statistics.median(baseline), statistics.median(loaded)
    print("loaded", [round(x) for x in loaded], "baseline", [round(x) for x in baseline])
    print(f"viewer servers.json p50 {base_p50:.0f} ms alone, {load_p50:.0f} ms beside 6 analysts; "
          f"max {max(loaded):.0f} ms; analyst answers {sorted({s for s, _ in answers})}")
    # The analysts' queries ran and were stopped by their own time limit (Datasette answers
    # 400 "SQL query took too long"), or waited their turn; nothing failed otherwise.
    assert answers and {s for s, _ in answers} <= {400, 429, 503}, answers[:3]
    assert any(s == 400 and b"too long" in body for s, body in answers), answers[:2]
    # Viewers keep their own SQL threads: the median stays within 20 % of the baseline, or
    # 150 ms above it where the baseline is a few ms (CPU is shared with the analysts' query
    # on a small machine), and no request comes near an analyst's 1.5 s limit (the shared
    # pool this replaces made every viewer query wait: 9 s in issue 13; Datasette's rich
    # traceback of each timed-out query, printed on the event loop, stalled every request
    # for 3-10 s until plugins/sm_errors.py).
    assert load_p50 <= max(1.2 * base_p50, base_p50 + 150), (baseline, loaded)
    assert max(loaded) < 1500, loaded


def _nice_of(native_id):
    """A thread's niceness, from /proc/self/task/<tid>/stat (field 19)."""
    with open(f"/proc/self/task/{native_id}/stat") as fp:
        return int(fp.read().rsplit(")", 1)[1].split()[16])


def test_analyst_sql_runs_on_lower_priority_threads_of_its_own(datasette, hub_config):
    """Issue 13: an analyst's ad-hoc SQL runs on the analysts' own threads at nice +10, so on a
    small hub ingest and the viewers' queries get the CPU first; canned queries stay on the
    ordinary SQL threads (nice 0)."""
    from test_hub_datasette import Client

    from server_monitor.serving.analyst import ANALYST_NICE, RoutingExecutor

    executor = datasette.executor
    assert isinstance(executor, RoutingExecutor)
    client = Client(datasette)
    assert client.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    assert client.get("/monitor/servers.json?_shape=array").status_code == 200
    assert client.get("/monitor/gpus.json?_shape=array").status_code == 200
    assert not executor.analyst._threads  # viewers' queries never touched the analysts' pool
    ordinary = [t.native_id for t in executor._threads]
    assert ordinary and all(_nice_of(tid) == _nice_of(threading.get_native_id()) for tid in ordinary)
    response = client.get("/monitor.json?_shape=array&sql=" + quote("select count(*) as n from servers"))
    assert response.status_code == 200 and response.json() == [{"n": 0}]
    analysts = [t.native_id for t in executor.analyst._threads]
    assert analysts and all(_nice_of(tid) == _nice_of(threading.get_native_id()) + ANALYST_NICE for tid in analysts)
    assert len(executor._threads) == len(ordinary)  # no ordinary thread was needed for it
