"""Alert rules fire, deduplicate and resolve, delivered to a local webhook receiver."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from reports import sample_report

from server_monitor.jobs import alerts
from server_monitor.storage import schema
from server_monitor.storage.contract import validate_report
from server_monitor.storage.store import store_report


class Receiver:
    """A real HTTP server collecting webhook bodies."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def of(self, path):
        return [body for p, body in self.received if p == path]


@pytest.fixture
def setup(tmp_path):
    path = str(tmp_path / "monitor.db")
    schema.migrate(path)
    receiver = Receiver()
    cfg = alerts.settings(type("C", (), {"get": lambda self, key, default=None: {
        "webhooks": [{"url": receiver.url + "/generic", "format": "generic"},
                     {"url": receiver.url + "/slack", "format": "slack"},
                     {"url": receiver.url + "/feishu", "format": "feishu"}],
        "repeat_minutes": 30, "dashboard_url": "https://monitor.example.org/"}})())
    engine = alerts.AlertEngine(path, cfg)
    conn = schema.connect(path)
    yield engine, receiver, conn
    receiver.server.shutdown()


def put(conn, report, received):
    store_report(conn, validate_report(report), received)


def test_rules_fire_dedupe_repeat_and_resolve(setup):
    engine, receiver, conn = setup
    now = int(time.time())
    healthy = sample_report("node-a", gpus=2, processes=0, sample_time=now)
    put(conn, healthy, now)
    assert engine.run_once(now) == {"fired": [], "repeated": [], "resolved": []}

    # The driver breaks after an upgrade: reported by name.
    broken = sample_report("node-a", gpus=0, processes=0, sample_time=now + 30)
    broken["gpu_status"] = {"state": "driver_mismatch", "lost": [], "stale": False,
                            "message": "Failed to initialize NVML: Driver/library version mismatch"}
    put(conn, broken, now + 30)
    result = engine.run_once(now + 30)
    assert result["fired"] == ["gpu_failure:1:driver_mismatch"]
    generic = receiver.of("/generic")[-1]
    assert generic["status"] == "firing" and generic["rule"] == "gpu_failure" and generic["severity"] == "critical"
    assert "driver/library version mismatch" in generic["message"]
    assert receiver.of("/slack")[-1]["text"].startswith("[FIRING] [critical] node-a:")
    assert receiver.of("/feishu")[-1] == {"msg_type": "text", "content": {"text": receiver.of("/slack")[-1]["text"]}}
    # Still broken a minute later: no second notice before repeat_minutes.
    assert engine.run_once(now + 90)["fired"] == [] and len(receiver.of("/generic")) == 1
    still = sample_report("node-a", gpus=0, processes=0, sample_time=now + 1830)
    still["gpu_status"] = broken["gpu_status"]
    put(conn, still, now + 1830)
    assert engine.run_once(now + 1830)["repeated"] == ["gpu_failure:1:driver_mismatch"]
    assert receiver.of("/generic")[-1]["event"] == "reminder"

    # Fixed, but one GPU went missing: the failure resolves, the lost GPU fires.
    fixed = sample_report("node-a", gpus=1, processes=0, sample_time=now + 2000)
    put(conn, fixed, now + 2000)
    result = engine.run_once(now + 2000)
    assert result["resolved"] == ["gpu_failure:1:driver_mismatch"]
    assert result["fired"] == ["gpu_lost:1:00000000:28:00.0"]
    assert sorted(b["status"] for b in receiver.of("/generic")[-2:]) == ["firing", "resolved"]

    # The host stops reporting: host_offline replaces the per-GPU alerts.
    result = engine.run_once(now + 2000 + 600)
    assert result["fired"] == ["host_offline:1:"]
    assert "gpu_lost:1:00000000:28:00.0" in result["resolved"]
    history = conn.execute("select rule, resolved_at is not null from alerts order by id").fetchall()
    assert history == [("gpu_failure", 1), ("gpu_lost", 1), ("host_offline", 0)]


def test_temperature_ecc_disk_and_maintenance(setup):
    engine, receiver, conn = setup
    now = int(time.time())
    for i in range(12):
        report = sample_report("hot", gpus=1, processes=0, disks=1, sample_time=now - 330 + i * 30)
        report["gpus"][0]["temperature.gpu"] = 91
        report["gpus"][0]["ecc.errors.uncorrected.volatile.total"] = 2
        report["disks"][0]["used_bytes"] = report["disks"][0]["total_bytes"] * 95 // 100
        put(conn, report, now - 330 + i * 30)
    fired = sorted(engine.run_once(now)["fired"])
    assert [key.split(":")[0] for key in fired] == ["disk_full", "gpu_ecc", "gpu_temperature"]
    messages = [b["message"] for b in receiver.of("/generic")]
    assert any("91 °C" in m for m in messages) and any("2 uncorrectable ECC errors" in m for m in messages)
    # An admin puts the host into maintenance: its alerts resolve, nothing new fires.
    conn.execute("update servers set status = 'maintenance'")
    result = engine.run_once(now + 60)
    assert sorted(result["resolved"]) == fired and result["fired"] == []


def test_failed_delivery_is_retried(setup, tmp_path):
    engine, receiver, conn = setup
    engine.notifier.cfg = dict(engine.cfg, webhooks=[{"url": "http://127.0.0.1:9/nowhere", "format": "generic"}])
    now = int(time.time())
    report = sample_report("x", gpus=0, processes=0, sample_time=now)
    report["gpu_status"] = {"state": "no_devices", "message": "No devices were found", "lost": [], "stale": False}
    put(conn, report, now)
    assert engine.run_once(now)["fired"] == ["gpu_failure:1:no_devices"]
    assert conn.execute("select last_notified_at, notifications from alerts").fetchone() == (None, 0)
    engine.notifier.cfg = engine.cfg
    assert engine.run_once(now + 60)["repeated"] == ["gpu_failure:1:no_devices"]
    assert receiver.of("/generic")[-1]["event"] == "firing"


class SmtpSink:
    """A minimal real SMTP server on loopback that keeps the messages it receives."""

    def __init__(self):
        import socket

        self.messages = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as rfile:
                conn.sendall(b"220 sink ESMTP\r\n")
                data = None
                for line in rfile:
                    if data is not None:
                        if line == b".\r\n":
                            self.messages.append(b"".join(data).decode())
                            data = None
                            conn.sendall(b"250 queued\r\n")
                        else:
                            data.append(line)
                        continue
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        data = []
                        conn.sendall(b"354 go on\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")


def test_alert_by_email(tmp_path):
    sink = SmtpSink()
    cfg = dict(alerts.DEFAULTS, smtp={"host": "127.0.0.1", "port": sink.port, "from": "monitor@example.org",
                                      "to": ["admins@example.org"]})
    assert alerts.Notifier(cfg).send("firing", {"rule": "host_offline", "severity": "critical", "server_id": 1,
                                                "subject": "", "message": "node-9: no report for 7 min"})
    assert len(sink.messages) == 1
    mail = sink.messages[0]
    assert "Subject: [FIRING] [critical] node-9: no report for 7 min" in mail and "To: admins@example.org" in mail
    sink.sock.close()


def test_health_rules_remap_failure_reset_throttle_and_degraded_link(setup):
    engine, receiver, conn = setup
    now = int(time.time())
    report = sample_report("sick", gpus=4, processes=1, sample_time=now)
    g0, g1, g2, g3 = report["gpus"]
    g0["remapped_rows.failure"] = True
    g1["state"] = "requires_reset"
    g2["clocks_event_reasons.active"] = 0x40 | 0x4  # HW thermal slowdown + power cap
    g3["pcie.link.gen.current"], g3["pcie.link.width.current"] = 3, 8  # busy (a process) on gen 3 x8 of 5 x16
    put(conn, report, now)
    fired = sorted(engine.run_once(now)["fired"])
    assert fired == ["gpu_ecc:1:gpu1", "gpu_ecc:1:gpu2", "gpu_pcie_degraded:1:gpu4", "gpu_throttle:1:gpu3"]
    messages = {b["rule"] + str(b["subject"]): b["message"] for b in receiver.of("/generic")}
    assert "row remapping failed (RMA)" in messages["gpu_eccgpu1"]
    assert "GPU requires reset" in messages["gpu_eccgpu2"]
    assert messages["gpu_throttlegpu3"] == "sick: GPU 2 is throttled by hw_thermal_slowdown"
    assert "PCIe gen 3 of 5, PCIe x8 of x16" in messages["gpu_pcie_degradedgpu4"]
    health = conn.execute("select gpu_index, health, health_reasons from gpus order by gpu_index").fetchall()
    assert [h[1] for h in health] == ["critical", "critical", "warning", "warning"]
    # An idle GPU at a low link generation is power saving, not a fault.
    idle = sample_report("sick", gpus=4, processes=0, sample_time=now + 30)
    for g in idle["gpus"]:
        g["utilization.gpu"] = 0
    idle["gpus"][3]["pcie.link.gen.current"] = 1
    put(conn, idle, now + 30)
    result = engine.run_once(now + 30)
    assert sorted(result["resolved"]) == fired


def test_acknowledged_and_silenced_alerts_stop_notifying(setup):
    engine, receiver, conn = setup
    now = int(time.time())
    for name in ("node-a", "node-b"):
        put(conn, sample_report(name, gpus=1, processes=0, sample_time=now), now)
    # node-a goes offline: announced once, its text follows the outage ("since …", minutes).
    assert engine.run_once(now + 600)["fired"] == ["host_offline:1:", "host_offline:2:"]
    assert len(receiver.of("/generic")) == 2
    assert conn.execute("select message from alerts where server_id = 1").fetchone()[0].endswith("(10 min)")
    engine.run_once(now + 1500)
    assert conn.execute("select message from alerts where server_id = 1").fetchone()[0].endswith("(25 min)")
    # An admin acknowledges node-a's alert: no reminder after repeat_minutes, node-b still reminds.
    alert_a = conn.execute("select id from alerts where server_id = 1").fetchone()[0]
    conn.execute("insert into alert_acks (alert_id, note, acked_by, acked_at) values (?, 'on it', 'admin', ?)",
                 (alert_a, now + 700))
    result = engine.run_once(now + 600 + 1800)
    assert result["repeated"] == ["host_offline:2:"]
    assert [b["server_id"] for b in receiver.of("/generic")[2:]] == [2]
    # A silence on node-b (any rule): nothing more for it while the silence lasts.
    conn.execute("insert into silences (server_id, rule, created_by, created_at, until) values (2, null, 'admin', ?, ?)",
                 (now, now + 7200))
    assert engine.run_once(now + 600 + 3600)["repeated"] == []
    # A rule-wide silence keeps a new firing quiet, and its clearing sends no "resolved" either.
    conn.execute("insert into silences (server_id, rule, created_by, created_at, until)"
                 " values (null, 'gpu_temperature', 'admin', ?, ?)", (now, now + 7200))
    t = now + 4300
    for i in range(12):
        hot = sample_report("node-c", gpus=1, processes=0, sample_time=t - 330 + i * 30)
        hot["gpus"][0]["temperature.gpu"] = 95
        put(conn, hot, t - 330 + i * 30)
    assert engine.run_once(t)["fired"] == ["gpu_temperature:3:gpu3"]
    sent_before = len(receiver.of("/generic"))
    assert all(b["rule"] != "gpu_temperature" for b in receiver.of("/generic"))
    cool = sample_report("node-c", gpus=1, processes=0, sample_time=t + 400)
    put(conn, cool, t + 400)
    resolved = engine.run_once(t + 400)["resolved"]
    assert any(k.startswith("gpu_temperature") for k in resolved)
    assert len(receiver.of("/generic")) == sent_before


def test_a_lost_gpu_marked_removed_stops_alerting(setup):
    engine, receiver, conn = setup
    now = int(time.time())
    put(conn, sample_report("node-a", gpus=2, processes=0, sample_time=now), now)
    put(conn, sample_report("node-a", gpus=1, processes=0, sample_time=now + 30), now + 30)
    assert engine.run_once(now + 30)["fired"] == ["gpu_lost:1:00000000:28:00.0"]
    conn.execute("update gpus set removed_at = ? where present = 0", (now + 40,))
    assert engine.run_once(now + 60)["resolved"] == ["gpu_lost:1:00000000:28:00.0"]


def test_a_gpu_the_driver_names_lost_is_one_problem_not_two(setup):
    """Seen in the demo's problem strip: the lost-GPU line (``0000:28:00.0``) and the GPU
    missing from the report (``00000000:28:00.0``) fired two gpu_lost alerts for one GPU."""
    engine, receiver, conn = setup
    now = int(time.time())
    put(conn, sample_report("node-a", gpus=2, processes=0, sample_time=now), now)
    lost = sample_report("node-a", gpus=1, processes=0, sample_time=now + 30)
    lost["gpu_status"] = {"state": "gpu_lost", "stale": False, "message": "1 GPU lost",
                          "lost": [{"pci.bus_id": "0000:28:00.0",
                                    "message": "Unable to determine the device handle for GPU0000:28:00.0: Unknown Error"}]}
    put(conn, lost, now + 30)
    assert engine.run_once(now + 30)["fired"] == ["gpu_lost:1:00000000:28:00.0"]
    (message,) = conn.execute("select message from alerts where resolved_at is null").fetchone()
    assert "Unknown Error" in message


def test_xid_events_stored_attributed_and_critical_ones_alerted(setup):
    from monitor_agent.kmsg import KmsgReader

    engine, receiver, conn = setup
    now = int(time.time())
    report = sample_report("xid-host", gpus=4, processes=0, sample_time=now)
    # The kernel-log fixture read by the agent's reader; its bus ids name GPUs 0 (18), 1 (28), 2 (38).
    boot = now - 9200
    found = KmsgReader(os.path.join(os.path.dirname(__file__), "fixtures", "kmsg", "xid.kmsg"),
                       boot_time=boot, history_s=10**9).collect(now=now)
    report.update(found)
    put(conn, report, now)
    rows = conn.execute("select g.gpu_index, e.xid, e.ts from xid_events e left join gpus g on g.id = e.gpu_id"
                        " order by e.seq").fetchall()
    assert rows == [(0, 13, boot + 3600), (1, 31, boot + 3600), (1, 48, boot + 7200), (2, 79, boot + 9000),
                    (0, 999, boot + 9100)]
    assert conn.execute("select gpu_index, xid_last from gpus order by gpu_index").fetchall() == [
        (0, 999), (1, 48), (2, 79), (3, None)]
    assert conn.execute("select kmsg_state from servers").fetchone() == ("ok",)
    # The same records again (an agent restart re-reading the ring buffer): stored once.
    again = sample_report("xid-host", gpus=4, processes=0, sample_time=now + 30)
    again.update(found)
    put(conn, again, now + 30)
    assert conn.execute("select count(*) from xid_events").fetchone() == (5,)
    fired = sorted(engine.run_once(now + 30)["fired"])
    assert fired == ["gpu_xid:1:00000000:28:00.0:xid48", "gpu_xid:1:00000000:38:00.0:xid79"]
    messages = sorted(b["message"] for b in receiver.of("/generic"))
    assert messages == ["xid-host: GPU 1 (00000000:28:00.0): Xid 48 Double Bit ECC Error",
                        "xid-host: GPU 2 (00000000:38:00.0): Xid 79 GPU has fallen off the bus"]
    # An hour later (xid_minutes) they resolve.
    later = sample_report("xid-host", gpus=4, processes=0, sample_time=now + 4000)
    put(conn, later, now + 4000)
    assert sorted(engine.run_once(now + 4000)["resolved"]) == fired
