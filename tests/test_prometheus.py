"""A real Prometheus (Debian's ``prometheus``) scrapes the real hub's /metrics, and the queries of
NVIDIA's DCGM-exporter Grafana dashboard (grafana/dcgm-exporter-dashboard.json in
NVIDIA/dcgm-exporter) return one series per GPU, and per MIG instance grouped by GPU_I_ID."""

import json
import os
import shutil
import subprocess
import time

import pytest
import urllib3
from conftest import free_port
from reports import mig_report, sample_report

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(PROMETHEUS) and os.environ.get("CI") != "true",
                                 reason="Debian's prometheus is not installed (scripts/test.sh installs it)")]
HTTP = urllib3.PoolManager(retries=False)

# The dashboard's panel queries, with its $instance / $gpu template variables set to "All".
PANELS = {
    "GPU Temperature": 'DCGM_FI_DEV_GPU_TEMP{instance=~".+", gpu=~".+"}',
    "GPU Power Usage": 'DCGM_FI_DEV_POWER_USAGE{instance=~".+", gpu=~".+"}',
    "GPU SM Clocks": 'DCGM_FI_DEV_SM_CLOCK{instance=~".+", gpu=~".+"} * 1000000',
    "GPU Framebuffer Mem Used": 'DCGM_FI_DEV_FB_USED{instance=~".+", gpu=~".+", GPU_I_ID=""}',
    "GPU Framebuffer Mem Free": 'DCGM_FI_DEV_FB_FREE{instance=~".+", gpu=~".+", GPU_I_ID=""}',
}


def api(base, path, **params):
    response = HTTP.request("GET", base + path, fields=params, timeout=10)
    assert response.status == 200, response.data[:300]
    body = json.loads(response.data)
    assert body["status"] == "success", body
    return body["data"]


def start_prometheus(tmp_path, name, config_text):
    """Debian's prometheus with ``config_text`` on a free loopback port; returns (process, base URL, log file)."""
    port = free_port()
    (tmp_path / f"{name}.yml").write_text(config_text)
    log = open(tmp_path / f"{name}.log", "wb")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / f'{name}.yml'}",
                             f"--storage.tsdb.path={tmp_path / f'{name}-tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return prom, f"http://127.0.0.1:{port}", log


def stop_prometheus(prom, log):
    os.killpg(prom.pid, 15)
    prom.wait(timeout=20)
    log.close()


def test_prometheus_scrapes_the_hub_and_the_dcgm_dashboard_queries_work(hub_process, hub_config, tmp_path):
    token = hub_config.get("agent.token")
    for report in (sample_report("prom-a", gpus=2, processes=1), sample_report("prom-b", gpus=1, processes=0),
                   mig_report("prom-mig")):
        response = HTTP.request("POST", hub_process.base_url + "/api/report", body=json.dumps(report).encode(),
                                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert response.status == 201, response.data
    hub_port = hub_process.base_url.rsplit(":", 1)[1]
    (tmp_path / "token").write_text(hub_config.get("prometheus.token"))
    prom, base, log = start_prometheus(
        tmp_path, "prometheus",
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: server-monitor\n"
        "    metrics_path: /metrics\n"
        "    authorization:\n"
        f"      credentials_file: {tmp_path / 'token'}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{hub_port}']\n")
    try:
        deadline = time.time() + 60
        up = []
        while time.time() < deadline:
            try:
                up = api(base, "/api/v1/query", query='up{job="server-monitor"}')["result"]
                if up and up[0]["value"][1] == "1" and api(base, "/api/v1/query", query="DCGM_FI_DEV_FB_FREE")["result"]:
                    break
            except (urllib3.exceptions.HTTPError, AssertionError):
                pass
            time.sleep(0.5)
        assert up and up[0]["value"][1] == "1", (tmp_path / "prometheus.log").read_text()[-2000:]
        # The dashboard's host variable: label_values(DCGM_FI_DEV_FB_FREE, Hostname).
        hosts = api(base, "/api/v1/label/Hostname/values", **{"match[]": "DCGM_FI_DEV_FB_FREE"})
        assert sorted(hosts) == ["prom-a", "prom-b", "prom-mig"]
        # One series per GPU in each panel: 2 + 1 + 1 (the MIG GPU as a whole).
        for title, query in PANELS.items():
            result = api(base, "/api/v1/query", query=query)["result"]
            gpus = sorted((r["metric"]["Hostname"], r["metric"]["gpu"]) for r in result)
            assert gpus == [("prom-a", "0"), ("prom-a", "1"), ("prom-b", "0"), ("prom-mig", "0")], title
        # utilization.gpu is [N/A] under MIG (nvidia-smi, like DCGM, gives it per GPU only without MIG).
        util = api(base, "/api/v1/query", query='DCGM_FI_DEV_GPU_UTIL{instance=~".+", gpu=~".+"}')["result"]
        assert sorted((r["metric"]["Hostname"], r["metric"]["gpu"]) for r in util) == [
            ("prom-a", "0"), ("prom-a", "1"), ("prom-b", "0")]
        temps = {(r["metric"]["Hostname"], r["metric"]["gpu"]): float(r["value"][1])
                 for r in api(base, "/api/v1/query", query=PANELS["GPU Temperature"])["result"]}
        assert temps[("prom-a", "1")] == 59  # the H100 capture under load
        clocks = api(base, "/api/v1/query", query=PANELS["GPU SM Clocks"])["result"]
        assert {float(r["value"][1]) for r in clocks if r["metric"]["Hostname"] == "prom-a"} == {1980e6}
        # Per MIG instance, grouped by GPU_I_ID as the dashboard's MIG panels do.
        mig = api(base, "/api/v1/query",
                  query='sum by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE) (DCGM_FI_DEV_FB_USED{GPU_I_ID!=""})')["result"]
        assert sorted((r["metric"]["GPU_I_ID"], r["metric"]["GPU_I_PROFILE"], float(r["value"][1])) for r in mig) == [
            ("10", "1g.10gb", 9), ("2", "3g.40gb", 11091), ("3", "2g.20gb", 17), ("9", "1g.10gb", 9)]
    finally:
        stop_prometheus(prom, log)


def test_two_prometheus_split_the_fleet_by_http_sd_and_hashmod(hub_process, hub_config, tmp_path):
    """Issue 24 item 5: the hub lists 4 shard targets (/metrics/targets, http_sd_configs); two real
    Prometheus keep half of them each with hashmod relabeling, every target is up, and together they
    hold every GPU exactly once."""
    token = hub_config.get("agent.token")
    for i in range(12):
        response = HTTP.request("POST", hub_process.base_url + "/api/report",
                                body=json.dumps(sample_report(f"sd-{i:02d}", gpus=2, processes=0)).encode(),
                                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert response.status == 201, response.data
    (tmp_path / "token").write_text(hub_config.get("prometheus.token"))
    running = []
    try:
        for keep in (0, 1):
            running.append(start_prometheus(
                tmp_path, f"prom{keep}",
                "global:\n  scrape_interval: 1s\n"
                "scrape_configs:\n"
                "  - job_name: server-monitor\n"
                "    authorization:\n"
                f"      credentials_file: {tmp_path / 'token'}\n"
                "    http_sd_configs:\n"
                f"      - url: {hub_process.base_url}/metrics/targets?shards=4\n"
                "        refresh_interval: 5s\n"
                "        authorization:\n"
                "          type: Bearer\n"  # Prometheus 2.42's http_sd sends no scheme without it
                f"          credentials_file: {tmp_path / 'token'}\n"
                "    relabel_configs:\n"
                "      - source_labels: [shard]\n"
                "        modulus: 2\n"
                "        target_label: __tmp_hash\n"
                "        action: hashmod\n"
                "      - source_labels: [__tmp_hash]\n"
                f"        regex: '{keep}'\n"
                "        action: keep\n"))
        hosts, ups = {}, {}
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                for keep, (_, base, _) in enumerate(running):
                    ups[keep] = api(base, "/api/v1/query", query='up{job="server-monitor"}')["result"]
                    hosts[keep] = [r["metric"]["Hostname"] for r in
                                   api(base, "/api/v1/query", query="DCGM_FI_DEV_GPU_UTIL")["result"]]
                if sum(len(h) for h in hosts.values()) == 24 and all(len(u) == 2 for u in ups.values()):
                    break
            except (urllib3.exceptions.HTTPError, AssertionError):
                pass
            time.sleep(0.5)
        logs = "".join((tmp_path / f"prom{k}.log").read_text()[-1500:] for k in (0, 1))
        assert all(len(ups.get(k, [])) == 2 for k in (0, 1)), (ups, logs)
        assert all(r["value"][1] == "1" for k in (0, 1) for r in ups[k]), ups
        shards = sorted(r["metric"]["shard"] for k in (0, 1) for r in ups[k])
        assert shards == ["0", "1", "2", "3"]
        together = sorted(hosts[0] + hosts[1])
        assert together == sorted(f"sd-{i:02d}" for i in range(12) for _ in range(2))  # every GPU once
        assert hosts[0] and hosts[1] and not set(hosts[0]) & set(hosts[1])
        durations = [float(r["value"][1]) for k in (0, 1) for r in
                     api(running[k][1], "/api/v1/query", query="scrape_duration_seconds")["result"]]
        assert len(durations) == 4 and max(durations) < 2
    finally:
        for prom, _, log in running:
            stop_prometheus(prom, log)
