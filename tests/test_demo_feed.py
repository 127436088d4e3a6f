"""The demo feeder (scripts/demo_feed.py) through the real ingest over loopback HTTP."""

import os
import sqlite3
import sys

import pytest

from server_monitor.storage.rollup import Maintenance

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import demo_feed  # noqa: E402


def test_demo_fleet_reports_satisfy_the_contract():
    from server_monitor.storage.contract import validate_report

    fleet = demo_feed.build_fleet(12, start=1_800_000_000)
    kinds = set()
    for host in fleet:
        for t in range(1_800_000_000 - 86400, 1_800_000_000, 3600):
            report = validate_report(host.report(t, 1_800_000_000, 60))
            kinds.update(p["container_kind"] for p in report["processes"])
    assert {"lxc", "docker", "slurm", "incus", "user-slice"} <= kinds
    # Deterministic: the same seed and time give the same report.
    again = demo_feed.build_fleet(12, start=1_800_000_000)
    assert again[3].report(1_799_990_000, 1_800_000_000, 60) == fleet[3].report(1_799_990_000, 1_800_000_000, 60)


def test_item7_demo_slurm_host_reports_an_allocation_without_a_process():
    """The demo's first Slurm host reports its jobs' GPUs in ``slurm_jobs`` (the agent's
    contract field), one of them allocated since 20 minutes before the start with no process
    on it yet, until its process starts 40 minutes after; the other Slurm jobs' GPUs run theirs."""
    from server_monitor.storage.contract import validate_report

    start = 1_800_000_000
    fleet = demo_feed.build_fleet(12, start=start)
    host = next(h for h in fleet if h.style == "slurm")
    waiting = {}
    for t in (start - 1500, start - 600, start, start + 2000, start + 2500):
        report = validate_report(host.report(t, t, 60))
        used = {p["gpu_uuid"] for p in report["processes"]}
        assert report["slurm_jobs"] and all(j["gpu_uuids"] for j in report["slurm_jobs"])
        waiting[t - start] = [(j["user"], j["gpu_indexes"]) for j in report["slurm_jobs"]
                              if any(uuid not in used for uuid in j["gpu_uuids"])]
    assert waiting[-1500] == [] and waiting[2500] == []
    assert waiting[-600] == waiting[0] == waiting[2000] and len(waiting[0]) == 1 and waiting[0][0][0] == "judy"
    # Hosts of other styles have no Slurm: no field.
    assert all(h.report(start, start, 60)["slurm_jobs"] is None for h in fleet if h.style != "slurm")


def test_demo_feed_backfills_through_ingest(ingest_server, hub_config):
    stored = demo_feed.run(ingest_server.base_url, hub_config.get("agent.token"), hosts=6, hours=6, interval=60,
                           once=True, log=lambda text: None)
    assert stored > 6 * 300
    conn = sqlite3.connect(hub_config.db_path)
    span = conn.execute("SELECT max(ts) - min(ts) FROM host_samples").fetchone()[0]
    assert span >= 6 * 3600 - 120
    states = dict(conn.execute("SELECT hostname, gpu_state FROM servers"))
    assert states["gpu-c01"] == "driver_mismatch" and states["dgx-a01"] == "gpu_lost"
    assert conn.execute("SELECT count(*) FROM gpus g JOIN servers s ON s.id = g.server_id"
                        " WHERE s.hostname = 'dgx-a01' AND NOT g.present").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM gpus WHERE mig_mode = 1 AND utilization_gpu IS NULL").fetchone()[0] == 2
    # The Slurm host's GPU allocated to a job that has no process yet (item 7).
    assert conn.execute("SELECT s.hostname, g.slurm_user FROM gpus g JOIN servers s ON s.id = g.server_id"
                        " WHERE g.slurm_job IS NOT NULL AND g.process_count = 0").fetchall() == [("dgx-b01", "judy")]
    # The offline host stopped 40 minutes ago.
    last = conn.execute("SELECT max(h.ts) FROM host_samples h JOIN servers s ON s.id = h.server_id"
                        " WHERE s.hostname = 'ws-f01'").fetchone()[0]
    newest = conn.execute("SELECT max(ts) FROM host_samples").fetchone()[0]
    assert newest - last >= 2400
    # The hub's own maintenance turns the history into roll-ups and GPU-hours per owner.
    Maintenance.from_config(hub_config).run_once()
    users = {u for (u,) in conn.execute("SELECT DISTINCT user FROM gpu_usage_1h")}
    assert len(users - {"root", ""}) >= 4
    assert conn.execute("SELECT count(*) FROM gpu_samples_5m").fetchone()[0] > 0
    # Posting the same period again stores nothing new (report ids derive from host and time).
    before = conn.execute("SELECT count(*) FROM host_samples").fetchone()[0]
    poster = demo_feed.Poster(ingest_server.base_url, hub_config.get("agent.token"))
    host = demo_feed.build_fleet(6)[0]
    t = conn.execute("SELECT min(ts) FROM host_samples").fetchone()[0]
    poster.post([host.report(t + 60 * k, t + 7 * 3600, 60) for k in range(5)])
    assert conn.execute("SELECT count(*) FROM host_samples").fetchone()[0] - before <= 5


def test_demo_feed_names_a_refusal(ingest_server):
    with pytest.raises(RuntimeError, match="401"):
        demo_feed.run(ingest_server.base_url, "wrong-token-wrong-token", hosts=1, hours=0.1, once=True,
                      log=lambda text: None)


def test_gpu_seen_only_in_a_replayed_report_is_not_present(ingest_server, hub_config):
    """A lost GPU that appears only in older (spooled) reports must not come back as present."""
    import time

    from browser import push
    from reports import sample_report

    now = time.time()
    newest = sample_report("replay-node", gpus=3, processes=0, sample_time=now)
    newest["gpus"].pop(1)
    newest["gpu_status"] = {"state": "gpu_lost", "message": "GPU lost", "stale": False,
                            "lost": [{"pci.bus_id": "0000:28:00.0", "message": "GPU is lost"}]}
    push(ingest_server, hub_config, newest)
    push(ingest_server, hub_config, sample_report("replay-node", gpus=3, processes=0, sample_time=now - 600))
    conn = sqlite3.connect(hub_config.db_path)
    present = dict(conn.execute("SELECT gpu_index, present FROM gpus"))
    assert present == {0: 1, 1: 0, 2: 1}
    assert conn.execute("SELECT count(*) FROM gpu_samples").fetchone()[0] == 5  # the history is kept


def test_gpus_seen_only_in_replays_stay_present_when_the_newest_report_cannot_list_gpus(ingest_server, hub_config):
    """Newest report: driver/library mismatch (no GPU list); older replays name the GPUs: not lost."""
    import time

    from browser import push
    from reports import sample_report

    now = time.time()
    newest = sample_report("broken-driver", gpus=0, processes=0, sample_time=now)
    newest["gpu_status"] = {"state": "driver_mismatch", "message": "Failed to initialize NVML", "lost": [],
                            "stale": False}
    push(ingest_server, hub_config, newest)
    push(ingest_server, hub_config, sample_report("broken-driver", gpus=2, processes=0, sample_time=now - 600))
    present = dict(sqlite3.connect(hub_config.db_path).execute("SELECT gpu_index, present FROM gpus"))
    assert present == {0: 1, 1: 1}


def test_F14_demo_feed_seed_gives_unique_host_names():
    """Newcomer finding 14: ``--seed lab1k`` fed into the ``--demo`` hub reused the demo's 25 host
    names (duplicates). Another seed now prefixes the names; the demo's own seed keeps them."""
    from server_monitor.storage.contract import validate_report

    demo = [h.name for h in demo_feed.build_fleet(25, start=1_800_000_000)]
    assert demo[:2] == ["dgx-a01", "gpu-c01"]
    big = demo_feed.build_fleet(1000, seed="lab1k", start=1_800_000_000)
    names = [h.name for h in big]
    assert len(set(names)) == 1000 and not set(names) & set(demo)
    assert names[0] == "lab1k-dgx-a01"
    assert len({h.machine_id for h in big} | {h.machine_id for h in demo_feed.build_fleet(25, start=1_800_000_000)}) == 1025
    # A seed that is no host-name label still gives valid names the contract accepts.
    odd = demo_feed.build_fleet(2, seed="Lab 1K / test!", start=1_800_000_000)
    assert odd[0].name == "lab-1k-test-dgx-a01"
    validate_report(odd[0].report(1_800_000_000, 1_800_000_000, 60))


def test_F14_demo_feed_hours_0_is_live_only(ingest_server, hub_config):
    """``--hours 0`` means no history, live reports only (it was refused: "(0, 48]")."""
    rc = demo_feed.main(["--url", ingest_server.base_url, "--token", hub_config.get("agent.token"),
                         "--hosts", "4", "--hours", "0", "--seed", "live", "--once"])
    assert rc == 0
    conn = sqlite3.connect(hub_config.db_path)
    # One report per live host, now (the 3rd demo host is the one that went offline 40 min ago).
    assert conn.execute("SELECT count(*) FROM host_samples").fetchone()[0] == 3
    assert sorted(n for (n,) in conn.execute("SELECT hostname FROM servers")) == ["live-dgx-a01", "live-dgx-b01",
                                                                                   "live-gpu-c01"]


def test_new_secrets_never_start_with_a_dash(monkeypatch, tmp_path):
    """A generated agent token, Prometheus token or first password goes on command lines
    (``demo_feed.py --token X``): one starting with ``-`` read as an option (argparse exit 2,
    test_F14_demo_feed_hours_0_is_live_only failed one run in 64). A draw starting with ``-`` is
    drawn again, and config.create uses it for every secret it writes."""
    import secrets as secrets_mod

    from server_monitor.core import config as config_mod

    draws = iter(["-starts-with-a-dash", "ok-" + "x" * 40] * 8)
    monkeypatch.setattr(secrets_mod, "token_urlsafe", lambda nbytes: next(draws))
    assert config_mod.new_secret(32) == "ok-" + "x" * 40
    cfg, password = config_mod.create(str(tmp_path / "config.yaml"))
    assert password == "ok-" + "x" * 40
    assert cfg.get("agent.token") == cfg.get("prometheus.token") == "ok-" + "x" * 40
