"""The WSGI ingest app over real HTTP on loopback (wsgiref), writing a real SQLite file."""

import gzip
import json
import sqlite3

import pytest
import urllib3
from reports import sample_report

HTTP = urllib3.PoolManager(retries=False)
TABLES = ("servers", "gpus", "host_samples", "gpu_samples", "disk_samples", "gpu_processes")


def post(server, body, token=None, headers=None, method="POST", path="/api/report"):
    """Send ``body`` (dict/list → JSON, bytes as is); returns ``(status, decoded JSON)``."""
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    all_headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {token or server.config.get('agent.token')}"}
    all_headers.update(headers or {})
    response = HTTP.request(method, server.base_url + path, body=body if method == "POST" else None,
                            headers=all_headers)
    assert response.headers["Content-Type"].startswith("application/json")
    return response.status, json.loads(response.data)


def counts(server):
    conn = sqlite3.connect(server.config.db_path)
    try:
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


EMPTY = {t: 0 for t in TABLES}


def test_valid_report_lands(ingest_server):
    report = sample_report("gpu-01", gpus=8, processes=2, disks=4)
    status, body = post(ingest_server, report)
    assert status == 201, body
    assert body == {"report_id": report["report_id"], "stored": True}
    assert counts(ingest_server) == {"servers": 1, "gpus": 8, "host_samples": 1, "gpu_samples": 8,
                                     "disk_samples": 4, "gpu_processes": 16}
    conn = sqlite3.connect(ingest_server.config.db_path)
    row = conn.execute("select memory_total_mib, power_limit_w, power_draw_w, utilization_gpu, name"
                       " from gpus where gpu_index = 0").fetchone()
    assert row == (81559, 700, 631.95, 100, "NVIDIA H100 80GB HBM3")
    user, container = conn.execute("select user, container from gpu_processes order by id limit 1").fetchone()
    assert (user, container) == ("user0", "lab-0")


def test_gzip_body_accepted(ingest_server):
    report = sample_report("gz")
    status, _ = post(ingest_server, gzip.compress(json.dumps(report).encode()), headers={"Content-Encoding": "gzip"})
    assert status == 201
    assert counts(ingest_server)["host_samples"] == 1


def test_repeated_report_id_is_stored_once(ingest_server):
    report = sample_report("dup")
    assert post(ingest_server, report)[0] == 201
    status, body = post(ingest_server, report)
    assert status == 200 and body["duplicate"] is True
    assert counts(ingest_server)["host_samples"] == 1
    assert counts(ingest_server)["gpu_samples"] == 2


def test_two_reports_of_one_host_in_one_second_are_both_kept(ingest_server):
    """Found under load (tests/test_agent_process.py outage test, 1 s interval): a slow cycle
    sampled just past a second boundary and the next cycle sampled in that same second; the
    hub answered the second report "stored": false and the agent dropped it. Both are kept:
    the later one moves to the next free second."""
    import time

    now = int(time.time())
    first = sample_report("same-second", sample_time=now - 60 + 0.95)
    second = sample_report("same-second", sample_time=now - 60 + 0.40)
    third = sample_report("same-second", sample_time=now - 59 + 0.10)  # its own second, taken by then
    for report in (first, second, third):
        status, body = post(ingest_server, report)
        assert status == 201 and body["stored"] is True, body
    conn = sqlite3.connect(ingest_server.config.db_path)
    rows = conn.execute("select ts, report_id from host_samples order by ts").fetchall()
    assert rows == [(now - 60, first["report_id"]), (now - 59, second["report_id"]), (now - 58, third["report_id"])]
    assert conn.execute("select count(*) from gpu_samples").fetchone()[0] == 3 * len(first["gpus"])


@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_bad_token_is_401_and_writes_nothing(ingest_server, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
    status, body = post(ingest_server, sample_report(), headers=headers)
    assert status == 401
    assert "token" in body["error"]
    assert counts(ingest_server) == EMPTY


def mutate(path, value):
    report = sample_report("bad")
    node = report
    parts = path.split("/")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[parts[-1]]
    else:
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return report


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("report_id", KeyError, "report_id: is required"),
        ("host", KeyError, "host: is required"),
        ("host/hostname", KeyError, "host.hostname: is required"),
        ("host/hostname", 42, "host.hostname: expected string, got 42"),
        ("sample_time", "yesterday", "sample_time: expected number"),
        ("cpu/percent", 140, "cpu.percent: expected number from 0 to 100, got 140"),
        ("gpus/1/utilization.gpu", "high", "gpus[1].utilization.gpu: expected number"),
        ("gpus/0/memory.used", -5, "gpus[0].memory.used: expected integer"),
        ("gpus", None, None),  # null list is fine: a host without GPU data
        ("gpus", "none", "gpus: expected array"),
        ("processes/0/pid", 1.5, "processes[0].pid: expected integer, got 1.5"),
        ("disks/0", "disk", "disks[0]: expected object"),
        ("gpu_status/state", "exploded", "gpu_status.state: expected one of"),
        ("contract_version", 2, "contract_version: expected integer from 1 to 1, got 2"),
        ("host/hostname", "x" * 300, "host.hostname: longer than 253 characters"),
        ("host/hostname", "bad\x00name", "host.hostname: contains a NUL character"),
        ("host/hostname", "ab\u202egnp.exe", "host.hostname: contains the control character U+202E"),
        # Free text (process_name, user, ...) is cleaned and kept instead (tests/test_textrule.py).
        ("gpus/0/uuid", "GPU-\x1b[31m", "gpus[0].uuid: contains the control character U+001B"),
        ("gpus/0/temperature.gpu", True, "gpus[0].temperature.gpu: expected number, got True"),
        ("gpus/1", None, "gpus[1]: must not be null"),
        ("processes/0", None, "processes[0]: must not be null"),
        ("disks/1", None, "disks[1]: must not be null"),
        ("gpu_status/lost", [None], "gpu_status.lost[0]: must not be null"),
    ],
)
def test_contract_violations_are_400_naming_the_field(ingest_server, path, value, message):
    status, body = post(ingest_server, mutate(path, value))
    if message is None:
        assert status == 201
        return
    assert status == 400, body
    assert body["error"].startswith(message), body["error"]
    assert counts(ingest_server) == EMPTY


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"{not json", "body is not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'[{"report_id": "x"}]', "expected a JSON object"),
        (b'"a string"', "expected a JSON object"),
        (b"\xff\xfe\x00", "body is not UTF-8"),
        (b'{"contract_version": NaN}', "body is not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b'{"reports": "nope"}', "reports: expected array"),
        (b'{"host": {"hostname": "\\ud800"}, "contract_version": 1, "report_id": "abcdefgh", "sample_time": 2000000000}',
         "host.hostname: is not valid Unicode"),
    ],
)
def test_malformed_bodies_are_400(ingest_server, raw, message):
    status, body = post(ingest_server, raw)
    assert status == 400, body
    assert message in body["error"]
    assert counts(ingest_server) == EMPTY


def test_oversize_body_is_413_before_reading(ingest_server):
    limit = ingest_server.config.get("agent.max_report_bytes")
    status, body = post(ingest_server, b"x" * (limit + 1))
    assert status == 413
    assert str(limit) in body["error"]
    assert counts(ingest_server) == EMPTY


def test_gzip_bomb_is_413(ingest_server):
    bomb = gzip.compress(b" " * (ingest_server.config.get("agent.max_report_bytes") * 4))
    status, body = post(ingest_server, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert "decompressed" in body["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(ingest_server, method):
    response = HTTP.request(method, ingest_server.base_url + "/api/report")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


def test_unknown_fields_are_ignored(ingest_server):
    report = sample_report("extra")
    report["future_field"] = {"x": 1}
    report["gpus"][0]["clocks.video"] = 1500
    assert post(ingest_server, report)[0] == 201


def test_batch_stores_good_reports_and_names_bad_ones(ingest_server):
    good1, good2 = sample_report("b1"), sample_report("b2")
    bad = sample_report("b3")
    bad["cpu"]["percent"] = "busy"
    status, body = post(ingest_server, {"reports": [good1, bad, good2, good1]})
    assert status == 207
    assert [r["status"] for r in body["results"]] == [201, 400, 201, 200]
    assert body["results"][1]["error"].startswith("cpu.percent: expected number")
    assert counts(ingest_server)["host_samples"] == 2


def test_older_report_does_not_overwrite_latest_state(ingest_server):
    import time

    now = int(time.time())
    newer = sample_report("order", sample_time=now - 600)
    older = sample_report("order", sample_time=now - 900)  # replayed from the agent's spool
    older["cpu"]["percent"] = 1.0
    older["sent_at"] = newer["sent_at"] = None
    assert post(ingest_server, newer)[0] == 201
    assert post(ingest_server, older)[0] == 201
    conn = sqlite3.connect(ingest_server.config.db_path)
    assert conn.execute("select cpu_percent, last_ts from servers").fetchone() == (42.5, now - 600)
    assert conn.execute("select count(*) from host_samples").fetchone()[0] == 2


def test_clock_skew_is_recorded_and_corrected(ingest_server):
    import time

    report = sample_report("skewed")
    report["sample_time"] = report["sent_at"] = time.time() + 3600  # agent clock one hour fast
    assert post(ingest_server, report)[0] == 201
    conn = sqlite3.connect(ingest_server.config.db_path)
    skew, last_ts = conn.execute("select clock_skew_s, last_ts from servers").fetchone()
    assert 3590 <= skew <= 3610
    assert abs(last_ts - time.time()) < 60


def test_per_host_token_writes_only_its_own_host(ingest_server):
    from server_monitor.auth import tokens

    conn = tokens.connect(ingest_server.config.auth_db_path)
    own = sample_report("gpu-07", machine_id="a" * 32)
    other = sample_report("gpu-08", machine_id="b" * 32)
    token_id, token = tokens.issue(conn, "a" * 32, "gpu-07")
    assert post(ingest_server, own, token=token)[0] == 201
    status, body = post(ingest_server, other, token=token)
    assert status == 403 and "may only report for host" in body["error"]
    import time

    earlier = sample_report("gpu-07", machine_id="a" * 32, sample_time=time.time() - 60)
    status, body = post(ingest_server, {"reports": [earlier, other]}, token=token)
    assert [r["status"] for r in body["results"]] == [201, 403]
    assert tokens.revoke(conn, token_id)
    assert post(ingest_server, sample_report("gpu-07", machine_id="a" * 32), token=token)[0] == 401
    assert counts(ingest_server)["host_samples"] == 2
    assert "token_hash" not in tokens.list_tokens(conn)[0]
    stored = conn.execute("select token_hash from agent_tokens").fetchone()[0]
    assert token not in stored and stored == tokens.token_hash(token)


def test_bad_health_value_nulls_that_field_only(ingest_server):
    report = sample_report("soft", gpus=2, processes=0, disks=0)
    report["gpus"][0]["pcie.link.width.current"] = "sixteen"
    report["gpus"][1]["utilization.encoder"] = 140
    status, body = post(ingest_server, report)
    assert status == 201, body
    assert body["nulled"] == ["gpus[0].pcie.link.width.current: expected integer, got 'sixteen'",
                              "gpus[1].utilization.encoder: expected number from 0 to 100, got 140"]
    conn = sqlite3.connect(ingest_server.config.db_path)
    rows = conn.execute("select gpu_index, pcie_link_width_current, pcie_link_gen_current, utilization_encoder,"
                        " memory_free_mib from gpus order by gpu_index").fetchall()
    assert rows == [(0, None, 5, 0, 61263), (1, 16, 5, None, 61263)]


def test_encoder_busy_gpu_is_busy_and_health_stored(ingest_server):
    # The RTX 2080 capture under load: NVENC 100 %, utilization.gpu 8 %, no compute process.
    report = sample_report("nvenc", gpus=1, processes=0, disks=0, capture="rtx-2080-super__595")
    assert report["gpus"][0]["utilization.gpu"] == 8 and report["gpus"][0]["utilization.encoder"] == 100
    assert post(ingest_server, report)[0] == 201
    conn = sqlite3.connect(ingest_server.config.db_path)
    row = conn.execute("select busy, utilization_encoder, encoder_sessions, health, pcie_link_gen_current,"
                       " pcie_link_gen_max, memory_free_mib from gpus").fetchone()
    assert row == (1, 100, 2, "ok", 3, 3, 6967)
    assert conn.execute("select gpus_busy from servers").fetchone() == (1,)
    assert conn.execute("select utilization_encoder, pcie_link_gen_current from gpu_samples").fetchone() == (100, 3)


def test_stale_gpu_values_are_history_at_their_own_time(ingest_server):
    report = sample_report("slow-smi", gpus=1, processes=0, disks=0)
    report["gpu_status"] = {"state": "ok", "message": None, "lost": [], "stale": True, "age_s": 12.4}
    assert post(ingest_server, report)[0] == 201
    conn = sqlite3.connect(ingest_server.config.db_path)
    host_ts = conn.execute("select ts from host_samples").fetchone()[0]
    assert conn.execute("select ts from gpu_samples").fetchone()[0] == host_ts - 12
    assert conn.execute("select last_ts from gpus").fetchone()[0] == host_ts - 12
