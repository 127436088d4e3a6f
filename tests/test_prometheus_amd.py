"""The real Prometheus (Debian's prometheus binary) scrapes the real hub's /metrics with AMD
(device-metrics-exporter names) and NVIDIA (DCGM names) GPUs side by side."""

import json
import os
import shutil
import subprocess
import time
import urllib.parse

import pytest
import urllib3
from browser import push
from conftest import free_port
from reports import sample_report
from test_browser_amd import mi300x_report

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def query(http, base, promql):
    response = http.request("GET", base + "/api/v1/query?query=" + urllib.parse.quote(promql), timeout=5)
    return json.loads(response.data)["data"]["result"]


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="Debian's prometheus is not installed")
def test_prometheus_scrapes_amd_and_nvidia_gpus(hub_process, hub_config, tmp_path):
    push(hub_process, hub_config, mi300x_report(tmp_path))
    push(hub_process, hub_config, sample_report("h100-node", gpus=2, processes=1))
    port = free_port()
    hub = urllib.parse.urlparse(hub_process.base_url)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: server-monitor\n"
        "    metrics_path: /metrics\n"
        f"    authorization: {{type: Bearer, credentials: '{hub_config.get('prometheus.token')}'}}\n"
        f"    static_configs: [{{targets: ['{hub.hostname}:{hub.port}']}}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    http = urllib3.PoolManager(retries=False)
    try:
        deadline = time.time() + 60
        gfx = []
        while time.time() < deadline:
            try:
                gfx = query(http, base, 'gpu_gfx_activity{hostname="mi300x-01"}')
            except (urllib3.exceptions.HTTPError, ValueError, KeyError):
                gfx = []
            if len(gfx) == 8:
                break
            time.sleep(0.5)
        assert len(gfx) == 8, (tmp_path / "prometheus.log").read_text()[-2000:]
        up = query(http, base, 'up{job="server-monitor"}')
        assert [r["value"][1] for r in up] == ["1"]  # the scrape parsed cleanly
        by_id = {r["metric"]["gpu_id"]: r for r in gfx}
        assert by_id["0"]["value"][1] == "100" and by_id["0"]["metric"]["card_model"] == "AMD Instinct MI300X"
        assert by_id["0"]["metric"]["gpu_compute_partition_type"] == "SPX"
        vram = query(http, base, 'sum(gpu_used_vram{hostname="mi300x-01"})')
        assert float(vram[0]["value"][1]) == 181200 * 2 + 283 * 2 + 99408 + 65536 + 190000 + 8200
        nvidia = query(http, base, 'DCGM_FI_DEV_GPU_UTIL{Hostname="h100-node"}')
        assert len(nvidia) == 2 and {r["metric"]["vendor"] for r in nvidia} == {"nvidia"}
        assert query(http, base, 'DCGM_FI_DEV_GPU_UTIL{Hostname="mi300x-01"}') == []
        procs = query(http, base, 'sum by (vendor) (server_monitor_gpu_processes)')
        assert {r["metric"]["vendor"] for r in procs} == {"amd", "nvidia"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
