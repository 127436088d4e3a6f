"""LXC/Incus inventory, ZFS pools and reachability probes."""

import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from conftest import TESTS, free_port

from monitor_agent.collect import incus_display_names
from monitor_agent.inventory import Inventory, parse_instances, parse_zpool
from monitor_agent.probes import Prober, check
from monitor_agent.runner import BoundedRunner

INCUS = os.path.join(TESTS, "fixtures", "inventory", "incus_list.json")


def test_parse_incus_list():
    items = parse_instances(open(INCUS).read(), "incus")
    assert items[0] == {"name": "trainbox", "project": "default", "kind": "incus", "type": "container",
                        "state": "Running", "memory_bytes": 4294967296, "disk_bytes": 10737418240,
                        "cpu_seconds": 123.456789, "ipv4": "10.20.0.5"}
    assert items[1]["project"] == "vision" and items[1]["state"] == "Stopped" and items[1]["ipv4"] is None
    assert items[2]["type"] == "virtual-machine" and items[2]["memory_bytes"] is None
    assert parse_instances("not json", "lxc") == [] and parse_instances('{"a": 1}', "lxc") == []


def test_incus_project_names_for_attribution():
    items = parse_instances(open(INCUS).read(), "incus")
    assert incus_display_names(items) == {"vision_ws-3": "ws-3 (vision)"}


def test_parse_zpool():
    pools = parse_zpool("tank\t15994458112000\t8203883421696\tONLINE\nscratch\t1000\t10\tDEGRADED\nbad line\n")
    assert pools[0] == {"mountpoint": "zpool:tank", "device": "tank", "fstype": "zpool",
                        "total_bytes": 15994458112000, "used_bytes": 8203883421696, "health": "ONLINE"}
    assert pools[1]["health"] == "DEGRADED" and len(pools) == 2


def test_inventory_runs_the_real_tool_and_caches(tmp_path):
    tool = tmp_path / "incus"
    calls = tmp_path / "calls"
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\ncat {INCUS}\n")
    tool.chmod(0o755)
    inv = Inventory(interval=60, timeout=5, runner=BoundedRunner(),
                    which=lambda name: str(tool) if name == "incus" else None)
    containers, pools = inv.refresh(now=0)
    assert [c["name"] for c in containers] == ["trainbox", "ws-3", "win-vm"] and pools == []
    inv.refresh(now=30)
    assert calls.read_text().splitlines() == ["list --format json --all-projects"]
    inv.refresh(now=61)
    assert len(calls.read_text().splitlines()) == 2


def test_no_container_tools_means_empty_lists():
    assert Inventory(which=lambda name: None).refresh() == ([], [])


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_probes_against_a_local_server_and_a_closed_port():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        ok = check(base + "/ok", timeout=2)
        assert ok["ok"] is True and ok["status"] == 204 and ok["latency_ms"] >= 0 and ok["error"] is None
        bad = check(base + "/down", timeout=2)
        assert bad["ok"] is False and bad["status"] == 503
        closed = check(f"http://127.0.0.1:{free_port()}/", timeout=2)
        assert closed["ok"] is False and closed["status"] is None and "Error" in closed["error"]
        prober = Prober([{"name": "local", "url": base + "/ok", "proxy": None, "timeout": 2}], interval=60)
        prober.run_once()
        assert [(r["name"], r["ok"]) for r in prober.results()] == [("local", True)]
    finally:
        server.shutdown()
