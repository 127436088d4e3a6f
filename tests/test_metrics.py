"""/metrics in the Prometheus text format with DCGM-exporter names, parsed by prometheus_client."""

import re
import sqlite3
import time

from prometheus_client.parser import text_string_to_metric_families
from reports import sample_report
from test_hub_datasette import Client, ingest

HOSTILE = 'evil"host\\name\n{le="1"}'


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, **labels):
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_metrics_values_labels_and_stale_hosts(datasette, hub_config):
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    token = hub_config.get("agent.token")
    assert ingest(admin, sample_report("gpu-live", gpus=2, processes=1), token).status_code == 201
    hostile = sample_report("x", gpus=1, processes=0)
    assert ingest(admin, hostile, token).status_code == 201
    # Agents may only send RFC 1123-ish host names now (L10); a name stored before that may not be.
    with sqlite3.connect(hub_config.db_path) as stored:
        stored.execute("update servers set hostname = ? where hostname = 'x'", (HOSTILE,))
    assert ingest(admin, sample_report("gpu-dead", gpus=1, processes=0), token).status_code == 201
    conn = sqlite3.connect(hub_config.db_path)
    conn.execute("update servers set last_seen = last_seen - 3600 where hostname = 'gpu-dead'")
    conn.commit()

    response = admin.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = families(response.text)
    util = found["DCGM_FI_DEV_GPU_UTIL"]
    live = samples(util, Hostname="gpu-live")
    assert sorted(s.labels["gpu"] for s in live) == ["0", "1"]
    assert live[0].value == 100 and live[0].labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert live[0].labels["UUID"].startswith("GPU-gpu-live-") and live[0].labels["device"] in ("nvidia0", "nvidia1")
    assert samples(found["DCGM_FI_DEV_FB_USED"], Hostname="gpu-live", gpu="0")[0].value == 19818
    # memory.free as the driver reports it (total - reserved - used), not total - used.
    assert samples(found["DCGM_FI_DEV_FB_FREE"], Hostname="gpu-live", gpu="0")[0].value == 61263
    assert samples(found["DCGM_FI_DEV_FB_RESERVED"], Hostname="gpu-live", gpu="0")[0].value == 479
    assert samples(found["DCGM_FI_DEV_GPU_TEMP"], Hostname="gpu-live", gpu="1")[0].value == 59
    assert samples(found["DCGM_FI_DEV_POWER_USAGE"], Hostname="gpu-live", gpu="0")[0].value == 631.95
    # The offline host: up 0 and no GPU values that would look live.
    assert samples(found["server_monitor_up"], Hostname="gpu-dead")[0].value == 0
    assert samples(util, Hostname="gpu-dead") == []
    assert samples(found["server_monitor_up"], Hostname="gpu-live")[0].value == 1
    # A hostile hostname round-trips through label escaping.
    assert samples(util, Hostname=HOSTILE)[0].value == 100
    assert samples(found["server_monitor_cpu_percent"], Hostname="gpu-live")[0].value == 42.5


def test_metrics_access(datasette, hub_config):
    anonymous = Client(datasette)
    for headers in ({}, {"Accept": "text/html"}, {"Authorization": "Bearer wrong"}):
        refused = anonymous.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        # A scraper set up without the token is told what to send, not "login required".
        assert refused.json()["error"] == ("metrics need the prometheus token (Authorization: Bearer ...)"
                                           " or an admin session"), headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
    scraped = anonymous.get("/metrics", headers={"Authorization": f"Bearer {hub_config.get('prometheus.token')}"})
    assert scraped.status_code == 200 and "server_monitor_up" in scraped.text
    viewer_hash = __import__("datasette_auth_passwords.utils", fromlist=["x"]).hash_password("viewer password", iterations=1000)
    from server_monitor.serving import hub

    hub.context(datasette).accounts.create_user("vic", viewer_hash, "viewer")
    viewer = Client(datasette)
    assert viewer.login("vic", "viewer password").status_code == 302
    assert viewer.get("/metrics").status_code == 403


def test_health_metrics_under_dcgm_names(datasette, hub_config):
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    token = hub_config.get("agent.token")
    h100 = sample_report("h100-host", gpus=1, processes=0)
    h100["gpus"][0]["remapped_rows.failure"] = True
    h100["gpus"][0]["ecc.errors.corrected.volatile.total"] = 7
    assert ingest(admin, h100, token).status_code == 201
    nvenc = sample_report("nvenc-host", gpus=1, processes=0, capture="rtx-2080-super__595")
    assert ingest(admin, nvenc, token).status_code == 201
    found = families(admin.get("/metrics").text)

    def value(metric, host):
        (sample,) = samples(found[metric], Hostname=host, gpu="0")
        return sample.value

    # Values of the captures (H100 under load; RTX 2080 SUPER encoding at 100 %).
    assert value("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "h100-host") == 7
    assert value("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "h100-host") == 0
    assert value("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "h100-host") == 0
    assert value("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "h100-host") == 0
    assert value("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "h100-host") == 0
    assert value("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "h100-host") == 0
    assert value("DCGM_FI_DEV_ROW_REMAP_FAILURE", "h100-host") == 1
    assert value("DCGM_FI_DEV_ROW_REMAP_PENDING", "h100-host") == 0
    assert value("DCGM_FI_DEV_PCIE_LINK_GEN", "h100-host") == 5
    assert value("DCGM_FI_DEV_PCIE_LINK_WIDTH", "h100-host") == 16
    assert value("server_monitor_gpu_health", "h100-host") == 2
    assert value("server_monitor_gpu_temperature_tlimit_celsius", "h100-host") == 26
    assert samples(found["DCGM_FI_DEV_RETIRED_SBE"], Hostname="h100-host") == []  # [N/A] on H100: no series
    assert value("DCGM_FI_DEV_ENC_UTIL", "nvenc-host") == 100
    assert value("DCGM_FI_DEV_DEC_UTIL", "nvenc-host") == 0
    assert value("DCGM_FI_DEV_GPU_UTIL", "nvenc-host") == 8
    assert value("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "nvenc-host") == 0
    assert value("DCGM_FI_DEV_POWER_VIOLATION", "nvenc-host") == 221310321
    assert value("DCGM_FI_DEV_FB_FREE", "nvenc-host") == 6967
    assert value("server_monitor_gpu_health", "nvenc-host") == 0


def test_xid_errors_metric_is_the_last_xid(datasette, hub_config):
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    report = sample_report("xid-host", gpus=2, processes=0)
    report["kmsg_state"] = "ok"
    report["xid_events"] = [{"xid": 79, "pci.bus_id": "00000000:28:00.0", "seq": 7, "usec": 9000,
                             "time": report["sample_time"] - 5, "message": "NVRM: Xid (PCI:0000:28:00): 79, ..."}]
    assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    blind = sample_report("no-kmsg", gpus=1, processes=0)
    blind["kmsg_state"] = "permission_denied"
    assert ingest(admin, blind, hub_config.get("agent.token")).status_code == 201
    found = families(admin.get("/metrics").text)
    xid = found["DCGM_FI_DEV_XID_ERRORS"]
    assert [(s.labels["gpu"], s.value) for s in samples(xid, Hostname="xid-host")] == [("0", 0), ("1", 79)]
    assert samples(xid, Hostname="no-kmsg") == []  # unknown, not "no error"
    assert admin.get("/monitor/xid_events.json?_shape=array").json()[0]["xid"] == 79


def test_mig_instances_carry_gpu_i_id_and_profile(datasette, hub_config):
    from reports import mig_report

    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    assert ingest(admin, mig_report("mig-m"), hub_config.get("agent.token")).status_code == 201
    found = families(admin.get("/metrics").text)
    used = samples(found["DCGM_FI_DEV_FB_USED"], Hostname="mig-m")
    by_instance = {(s.labels.get("GPU_I_ID", ""), s.labels.get("GPU_I_PROFILE", "")): s.value for s in used}
    assert by_instance == {("", ""): 11125, ("2", "3g.40gb"): 11091, ("3", "2g.20gb"): 17, ("9", "1g.10gb"): 9,
                           ("10", "1g.10gb"): 9}
    assert {s.labels["gpu"] for s in used} == {"0"}


def test_gpus_query_shows_throttle_time_in_hours(datasette, hub_config):
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    # The Windows RTX 2080 SUPER capture: 5451018134 us held by the power cap since driver load.
    report = sample_report("capped", gpus=1, processes=0, capture="windows", state="idle")
    assert report["gpus"][0]["clocks_event_reasons_counters.sw_power_cap"] == 5451018134
    assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    row = admin.get("/monitor/gpus.json?_shape=array").json()[0]
    assert row["power_capped_h"] == 1.5 and row["thermal_slowdown_h"] == 0.0
    assert row["clocks_event_reasons"] == "gpu_idle" and row["health"] == "ok"


def test_gpus_query_shows_throttle_time_today_from_the_stored_samples(datasette, hub_config):
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    now = int(time.time())
    day = now // 86400 * 86400  # the current UTC day
    hour = 3600 * 10**6

    def send(sample_time, power_cap, sw_thermal, hw_thermal):
        report = sample_report("capped-today", gpus=1, processes=0, sample_time=sample_time)
        gpu = report["gpus"][0]
        gpu["clocks_event_reasons_counters.sw_power_cap"] = power_cap
        gpu["clocks_event_reasons_counters.sw_thermal_slowdown"] = sw_thermal
        gpu["clocks_event_reasons_counters.hw_thermal_slowdown"] = hw_thermal
        assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201

    send(day - 600, 1 * hour, 0, 0)  # yesterday: not part of today's figure
    send(min(day + 1, now), 2 * hour, hour // 10, 0)  # the first sample of today
    send(now, 6 * hour, hour // 10 + hour // 4, hour // 4)
    row = admin.get("/monitor/gpus.json?_shape=array").json()[0]
    assert row["power_capped_h"] == 6.0  # since the driver loaded
    assert row["power_capped_today_h"] == 4.0 and row["thermal_slowdown_today_h"] == 0.5
    assert row["throttle_today_since"] == min(day + 1, now)
    # The driver reloaded during the day (counters back near zero): counted from the reload.
    send(now + 1, hour // 2, 0, 0)
    row = admin.get("/monitor/gpus.json?_shape=array").json()[0]
    assert row["power_capped_today_h"] == 0.5 and row["thermal_slowdown_today_h"] == 0.0


def test_throttle_today_starts_at_the_viewers_local_midnight(datasette, hub_config):
    """day_start (the viewer's local midnight, epoch s) moves "today": /api/servers/<id> and the
    gpus query count from the GPU's first sample at or after it; bad values are a 400."""
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    now = int(time.time())
    hour = 3600 * 10**6
    for sample_time, power_cap in ((now - 3 * 3600, 1 * hour), (now - 3600, 2 * hour), (now, 5 * hour)):
        report = sample_report("local-day", gpus=1, processes=0, sample_time=sample_time)
        report["gpus"][0]["clocks_event_reasons_counters.sw_power_cap"] = power_cap
        assert ingest(admin, report, hub_config.get("agent.token")).status_code == 201
    server_id = admin.get("/api/servers").json()[0]["server_id"]

    def today(query):
        gpu = admin.get(f"/api/servers/{server_id}?{query}").json()["gpus"][0]
        return gpu["power_capped_today_h"], gpu["throttle_today_since"], gpu["throttle_day_start"]

    # A viewer whose midnight was 2 h ago: today began with the report of an hour ago.
    assert today(f"day_start={now - 7200}") == (3.0, now - 3600, now - 7200)
    # Midnight 4 h ago (a viewer further west): the report of 3 h ago is today's first.
    assert today(f"day_start={now - 4 * 3600}") == (4.0, now - 3 * 3600, now - 4 * 3600)
    # The whole fleet list takes it too; the Datasette query takes it as a parameter.
    assert admin.get(f"/api/servers?day_start={now - 7200}").json()[0]["gpus"][0]["power_capped_today_h"] == 3.0
    row = admin.get(f"/monitor/gpus.json?_shape=array&day_start={now - 7200}").json()[0]
    assert row["power_capped_today_h"] == 3.0
    # A start further back than a day (25 h) is clamped, one in the future becomes now.
    assert today("day_start=0")[2] in (now - 90000, now - 90000 + 1, now - 90000 + 2)
    assert now <= today(f"day_start={now + 86400}")[2] <= time.time()
    # Without it: the UTC day, as before.
    assert today("")[2] == now // 86400 * 86400
    for bad in ("yesterday", "1.5", "1e9"):
        response = admin.get(f"/api/servers/{server_id}?day_start={bad}")
        assert response.status_code == 400 and "day_start" in response.json()["error"]
    assert admin.get("/api/servers?day_start=x").status_code == 400


def test_metrics_gzip_when_asked_and_no_empty_labels(hub_process, hub_config):
    """Issue 24 item 5: /metrics compressed on the wire when the scraper accepts gzip (as Prometheus
    does), and lean (no empty labels). Through the real hub: the bytes on the wire are checked."""
    import gzip
    import json

    import urllib3

    http = urllib3.PoolManager(retries=False)
    report = json.dumps(sample_report("lean-a", gpus=2, processes=1)).encode()
    assert http.request("POST", hub_process.base_url + "/api/report", body=report, headers={
        "Authorization": f"Bearer {hub_config.get('agent.token')}", "Content-Type": "application/json"}).status == 201
    auth = {"Authorization": f"Bearer {hub_config.get('prometheus.token')}"}
    plain = http.request("GET", hub_process.base_url + "/metrics", headers={**auth, "Accept-Encoding": "identity"})
    packed = http.request("GET", hub_process.base_url + "/metrics", decode_content=False,
                          headers={**auth, "Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip" and "Accept-Encoding" in packed.headers["vary"]
    # Two builds (a fleet this small is not worth reusing one): the same text, but for the
    # report age, which is read from the clock at build time and may have moved on a second.
    def without_ages(body):
        return re.sub(rb"(?m)^(server_monitor_last_report_age_seconds\S*) \S+$", rb"\1 AGE", body)

    assert without_ages(gzip.decompress(packed.data)) == without_ages(plain.data)
    assert without_ages(plain.data) != plain.data  # there is an age, and only its value was set aside
    assert len(packed.data) * 3 < len(plain.data)
    text = plain.data.decode()
    assert '=""' not in text
    util = samples(families(text)["DCGM_FI_DEV_GPU_UTIL"], Hostname="lean-a")
    assert set(util[0].labels) == {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "vendor"}


def test_metrics_shards_partition_the_fleet_and_one_server_has_no_host_labels(datasette, hub_config):
    """Issue 24 item 5: ?shard=I&of=N splits the servers (every one in exactly one shard), and
    /metrics/servers/<id> leaves the labels its http_sd target carries off the samples."""
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    for i in range(7):
        assert ingest(admin, sample_report(f"shard-{i}", gpus=2, processes=0),
                      hub_config.get("agent.token")).status_code == 201

    def hosts(text):
        return sorted(s.labels["Hostname"] for s in families(text)["DCGM_FI_DEV_GPU_UTIL"].samples)

    whole = hosts(admin.get("/metrics").text)
    parts = [hosts(admin.get(f"/metrics?shard={i}&of=3").text) for i in range(3)]
    assert sorted(sum(parts, [])) == whole and len(whole) == 14
    assert all(parts) and len({tuple(p) for p in parts}) == 3
    one = admin.get("/metrics/servers/1")
    assert one.status_code == 200
    found = families(one.text)
    assert [s.labels for s in found["server_monitor_up"].samples] == [{}]
    assert {s.labels["gpu"] for s in found["DCGM_FI_DEV_GPU_UTIL"].samples} == {"0", "1"}
    assert "Hostname" not in one.text and "server_id" not in one.text
    for bad in ("?shard=3&of=3", "?shard=0", "?of=2", "?shard=-1&of=2", "?shard=a&of=2", "?shard=0&of=5000"):
        refused = admin.get("/metrics" + bad)
        assert refused.status_code == 400, bad
        assert "shard" in refused.json()["error"] or "of" in refused.json()["error"]


def test_metrics_targets_for_http_sd(datasette, hub_config):
    """Issue 24 item 5: /metrics/targets answers Prometheus HTTP service discovery, by shard or server."""
    anonymous = Client(datasette)
    assert anonymous.get("/metrics/targets").status_code == 401
    assert anonymous.get("/metrics/servers/1").status_code == 401
    token = {"Authorization": f"Bearer {hub_config.get('prometheus.token')}"}
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    for name in ("sd-a", "sd-b"):
        assert ingest(admin, sample_report(name, gpus=1, processes=0), hub_config.get("agent.token")).status_code == 201
    one = anonymous.get("/metrics/targets", headers=token).json()
    assert len(one) == 1 and one[0]["labels"]["__metrics_path__"] == "/metrics"
    four = anonymous.get("/metrics/targets?shards=4", headers={**token, "Host": "hub.example:5100"}).json()
    assert [g["labels"]["shard"] for g in four] == ["0", "1", "2", "3"]
    assert {g["targets"][0] for g in four} == {"hub.example:5100"}
    assert all(g["labels"]["__param_of"] == "4" and g["labels"]["__param_shard"] == g["labels"]["shard"] for g in four)
    per_server = anonymous.get("/metrics/targets?per=server", headers=token).json()
    assert [(g["labels"]["Hostname"], g["labels"]["__metrics_path__"]) for g in per_server] == [
        ("sd-a", "/metrics/servers/1"), ("sd-b", "/metrics/servers/2")]
    assert anonymous.get("/metrics/targets?shards=0", headers=token).status_code == 400


def test_item5_steady_scraper_is_answered_from_a_build_made_ahead(hub_config, monkeypatch):
    """Issue 24 (4 shards of 10,000 servers, scrape_duration_seconds <= 2 s): after scrapes at a
    steady interval, the next build runs before the next scrape is due and that scrape is answered
    from it without a build of its own; irregular scrapes are not predicted."""
    import asyncio
    import importlib.util
    import os

    from server_monitor.storage import schema
    from server_monitor.storage.contract import validate_report
    from server_monitor.storage.store import store_report

    spec = importlib.util.spec_from_file_location(
        "sm_metrics_ahead", os.path.join(os.path.dirname(__file__), "..", "plugins", "sm_metrics.py"))
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    assert plugin.next_scrape([0.0, 15.0, 30.1], 30.1) == 30.1 + 15.1
    assert plugin.next_scrape([0.0, 15.0, 45.0], 45.0) is None  # irregular
    assert plugin.next_scrape([0.0, 15.0], 15.0) is None  # not enough scrapes yet

    db_path = hub_config.db_path
    schema.migrate(db_path)
    conn = schema.connect(db_path)
    now = time.time()
    for i in range(3):
        store_report(conn, validate_report(sample_report(f"ahead-{i}", gpus=2, processes=0, sample_time=now)), now)

    class Database:
        path = db_path

    class Datasette:
        def get_database(self, name):
            return Database()

    monkeypatch.setattr(plugin, "REUSE_S", 0.3)
    monkeypatch.setattr(plugin, "AHEAD_MIN_COST_S", 0.0)
    builds = []
    real_build = plugin._build

    async def counted(*args):
        builds.append(time.monotonic())
        return await real_build(*args)

    monkeypatch.setattr(plugin, "_build", counted)
    # Two workers (their own caches, the same hub): a scraper's connection is closed after 5 s
    # idle (uvicorn), so its scrapes come to either.
    first_worker, second_worker = Datasette(), Datasette()
    key, scope = ("shard", 0, 1), (None, None, None)

    interval = 0.8  # Prometheus' scrape_interval here: scrapes start on a fixed schedule, as
    # Prometheus starts them, whatever the previous scrape took (a loaded machine's slower
    # build must not make the schedule look irregular)

    async def scenario():
        start = time.time()
        for i, worker in enumerate((first_worker, second_worker, first_worker)):
            await asyncio.sleep(max(0.0, start + i * interval - time.time()))
            await plugin._body(worker, key, scope, True)
        # The third scrape planned the next build ahead of the fourth, due one interval after it.
        assert len(builds) == 3 and key in plugin._cache(first_worker).ahead
        await plugin._cache(first_worker).ahead[key]
        assert len(builds) == 4  # built (and done) before the fourth scrape comes
        await asyncio.sleep(max(0.0, start + 3 * interval - time.time()))
        # the fourth scrape, on time, to the other worker: the build made ahead, none of its own
        packed = await plugin._body(second_worker, key, scope, True)
        assert len(builds) == 4
        assert oct(os.stat(hub_config.db_path + ".metrics").st_mode & 0o777) == "0o700"
        return packed

    import gzip

    packed = asyncio.run(scenario())
    assert "ahead-2" in gzip.decompress(packed).decode()
    plugin._pool.shutdown()


def test_item5_per_server_scrapes_keep_no_shared_record(datasette, hub_config):
    """Issue 24 item 5 (http_sd, one target per server, 10,000 servers): a scrape of
    /metrics/servers/<id> is built fresh each time and writes nothing to <data.path>.metrics/
    (before: two file writes per scrape and a record per server, 10,000 files), while a
    shard's scrapes are still recorded for the build ahead."""
    import os

    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    token = hub_config.get("agent.token")
    assert ingest(admin, sample_report("per-a", gpus=2, processes=0), token).status_code == 201
    first = admin.get("/metrics/servers/1")
    assert first.status_code == 200 and "DCGM_FI_DEV_GPU_UTIL" in first.text
    report = sample_report("per-a", gpus=2, processes=0, sample_time=time.time() + 1)
    report["gpus"][0]["utilization.gpu"] = 77
    assert ingest(admin, report, token).status_code == 201
    again = families(admin.get("/metrics/servers/1").text)
    assert 77 in {s.value for s in samples(again["DCGM_FI_DEV_GPU_UTIL"], gpu="0")}  # fresh, not reused
    shared = hub_config.db_path + ".metrics"
    assert not [n for n in (os.listdir(shared) if os.path.isdir(shared) else []) if n.startswith("server-")]
    assert admin.get("/metrics?shard=0&of=2").status_code == 200
    assert "shard-0-2.json" in os.listdir(shared)


def test_item5_builder_streams_each_family_into_gzip(hub_config):
    """Issue 24 (hub RSS <= 1.5 GB at 10,000 servers): the builder hands the exposition to the gzip
    stream one family at a time instead of holding its whole text (a 2,500-server shard: 142 MB,
    536 MiB peak RSS of the builder; streamed 114 MiB). Same samples as the text built whole."""
    import gzip

    from server_monitor.serving import metrics
    from server_monitor.storage import schema
    from server_monitor.storage.contract import validate_report
    from server_monitor.storage.store import store_report

    schema.migrate(hub_config.db_path)
    conn = schema.connect(hub_config.db_path)
    now = time.time()
    for i in range(4):
        store_report(conn, validate_report(sample_report(f"stream-{i}", gpus=4, processes=1, sample_time=now)), now)
    packed, length = metrics.build_gzip(hub_config.db_path)
    text = gzip.decompress(packed).decode()
    assert len(text.encode()) == length
    conn.row_factory = sqlite3.Row
    rows = [[dict(r) for r in conn.execute(sql, params)] for sql, params in metrics.scoped_queries()]
    whole = metrics.exposition(*rows).decode()

    def sample_set(exposed, ages=False):
        # A host's report age is read from the clock at build time, and the two builds may fall in
        # different seconds (CI: -0.96 in one, 0.04 in the other); its value is checked below.
        return sorted((s.name, tuple(sorted(s.labels.items())), "age" if s.name == AGE and not ages else s.value)
                      for f in text_string_to_metric_families(exposed) for s in f.samples)

    AGE = "server_monitor_last_report_age_seconds"
    assert sample_set(text) == sample_set(whole) and len(sample_set(text)) > 100
    ages = [value for name, _, value in sample_set(text, ages=True) if name == AGE]
    assert len(ages) == 4 and all(-1 < value < 60 for value in ages), ages  # this test's clock is a float
    parts = []
    assert metrics.exposition(*rows, sink=parts.append) == length
    assert len(parts) >= 30 and max(map(len, parts)) < length / 10  # a family at a time
    assert all(p.startswith(b"# HELP ") for p in parts)


def test_F4_same_named_hosts_give_no_duplicate_series(datasette, hub_config):
    """Two servers with one host name (the hub keeps them apart by machine id) must not give two
    series with the same name and labels in any family: Prometheus drops such samples. Parsed as
    Prometheus' text format by prometheus_client, every (name, label set) counted."""
    admin = Client(datasette)
    assert admin.login(hub_config.get("auth.username"), hub_config.password).status_code == 302
    token = hub_config.get("agent.token")
    for n in range(2):
        report = sample_report("dgx-a01", gpus=2, processes=1, machine_id=f"m{n:031d}")
        report["gpus"][0]["uuid"] = f"GPU-{n}0000000-0000-0000-0000-000000000000"  # boards differ
        report["gpus"][1]["uuid"] = None  # a GPU that reported no UUID
        assert ingest(admin, report, token).status_code == 201
    response = admin.get("/metrics")
    assert response.status_code == 200
    seen, duplicates, checked = set(), [], set()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in seen:
                duplicates.append(key)
            seen.add(key)
            checked.add(sample.name)
    assert duplicates == []
    assert {"server_monitor_filesystem_used_bytes", "server_monitor_filesystem_size_bytes", "server_monitor_up",
            "DCGM_FI_DEV_GPU_UTIL", "server_monitor_cpu_percent"} <= checked
    # Both hosts' series are there, told apart by server_id like every other host series.
    used = [s for s in text_string_to_metric_families(response.text)
            if s.name == "server_monitor_filesystem_used_bytes"][0]
    assert len({s.labels.get("server_id") for s in samples(used, Hostname="dgx-a01", mountpoint="/")}) == 2
