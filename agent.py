"""Server Monitor agent: report this host's CPU, memory, disks, network and NVIDIA GPUs.

    python agent.py -c agent_config.yaml [-i SECONDS] [--once] [--dry-run]

``--dry-run --once`` prints one report as JSON and sends nothing. Without ``--once`` the
agent reports on a fixed-rate schedule until SIGINT/SIGTERM. The same entry point is the
``__main__`` of the zipapp built by ``scripts/build_agent.sh``.
"""

import json
import logging
import os
import signal
import sys
import threading
import time

import click

from monitor_agent import __version__
from monitor_agent.collect import ReportBuilder
from monitor_agent.config import AgentConfigError
from monitor_agent.config import load as load_config
from monitor_agent.delivery import Delivery
from monitor_agent.probes import Prober
from monitor_agent.spool import Spool, SpoolInUse
from monitor_agent.transport import Transport

log = logging.getLogger("server_monitor.agent")


def send_once(transport, report):
    """Stamp ``sent_at`` and POST one report (no spool); logs and returns the ``SendResult``."""
    report["sent_at"] = time.time()
    result = transport.send(report)
    if result.outcome == "delivered":
        log.debug("delivered %s (%s)", report["report_id"], result.status)
    elif result.outcome == "rejected":
        log.error("hub rejected report %s with %s: %s", report["report_id"], result.status, result.body)
    else:
        log.warning("hub unreachable (%s): %s", result.status, result.body)
    return result


def run_forever(builder, delivery, interval, stop, clock=time.monotonic):
    """Collect every ``interval`` seconds and hand each report to ``delivery`` until ``stop``.

    Fixed-rate: ticks are ``start + k * interval``; a slow cycle does not stretch the
    period, and ticks missed while a cycle overran are skipped, not bunched. Between
    ticks the spool is replayed whenever the delivery backoff allows.
    """
    start = clock()
    tick = 0
    while not stop.is_set():
        now = clock()
        next_at = start + tick * interval
        if now >= next_at:
            delivery.submit(builder.build())
            tick += 1
            now = clock()
            if start + tick * interval < now:  # overran: skip to the next future tick
                tick = int((now - start) // interval) + 1
            continue
        if delivery.due():
            delivery.flush()
            continue
        wake = next_at
        if len(delivery.spool):
            wake = min(wake, max(delivery.next_attempt, now + 0.05))
        stop.wait(max(0.0, wake - now))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", default="agent_config.yaml", show_default=True,
              help="Agent config file (YAML).")
@click.option("-i", "--interval", type=float, default=None, help="Reporting interval in seconds (overrides the config).")
@click.option("--once", is_flag=True, help="Collect and send one report, then exit.")
@click.option("--dry-run", is_flag=True, help="Print the report JSON instead of sending it.")
@click.option("-v", "--verbose", is_flag=True, help="Log every delivery.")
@click.version_option(__version__, prog_name="server-monitor-agent")
def main(config_path, interval, once, dry_run, verbose):
    """Report this host's metrics and NVIDIA GPUs to a Server Monitor hub."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # A dry run needs no hub, nor even a config file.
    path = config_path if (os.path.exists(config_path) or not dry_run) else None
    try:
        cfg = load_config(path, {"interval": interval}, require_hub=not dry_run)
    except AgentConfigError as exc:
        raise click.ClickException(str(exc))
    builder = ReportBuilder(cfg)
    if once:
        time.sleep(0.5)  # give the CPU and network counter deltas something to measure
    if dry_run:
        click.echo(json.dumps(builder.build(), indent=2, sort_keys=True))
        return
    transport = Transport(cfg["server_url"], cfg["token"], ca_file=cfg.get("ca_file"),
                          verify_tls=cfg.get("verify_tls", True))
    if once:
        result = send_once(transport, builder.build())
        if result.outcome != "delivered":
            sys.exit(1)
        return
    try:
        spool = Spool(cfg["spool_dir"], max_bytes=int(cfg["spool_max_mb"] * 1024 * 1024),
                      max_age_s=cfg["spool_max_age_h"] * 3600)
    except (SpoolInUse, OSError) as exc:
        raise click.ClickException(str(exc))
    delivery = Delivery(transport, spool, retry_base_s=cfg["retry_base_s"], retry_max_s=cfg["retry_max_s"])
    prober = Prober(cfg["probes"], interval=cfg["probe_interval"])
    builder.extra = lambda: {"agent": spool.stats(), "probes": prober.results()}
    prober.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("reporting to %s every %gs (spool: %s, %d waiting)", cfg["server_url"], cfg["interval"],
             cfg["spool_dir"], len(spool))
    run_forever(builder, delivery, cfg["interval"], stop)
    prober.stop()


if __name__ == "__main__":
    main()
