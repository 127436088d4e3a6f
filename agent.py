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
from monitor_agent.collect import ReportBuilder, freeze_startup_objects
from monitor_agent.config import AgentConfigError
from monitor_agent.config import load as load_config
from monitor_agent.delivery import Delivery, describe_result
from monitor_agent.probes import Prober
from monitor_agent.spool import Spool, SpoolInUse
from monitor_agent.transport import Transport

log = logging.getLogger("server_monitor.agent")


def send_once(transport, report):
    """Stamp ``sent_at`` and POST one report (no spool); returns the ``SendResult``."""
    report["sent_at"] = time.time()
    result = transport.send(report)
    log.debug("report %s: %s %s", report["report_id"], result.outcome, result.status)
    return result


def _open_spool(cfg):
    return Spool(cfg["spool_dir"], max_bytes=int(cfg["spool_max_mb"] * 1024 * 1024),
                 max_age_s=cfg["spool_max_age_h"] * 3600)


def report_once(cfg, transport, report):
    """``--once``: send ``report``; print one line saying whether it was stored, or kept in the spool.

    Stored: ``stored report <id> at <hub>`` on stdout (then reports spooled earlier are sent
    too). The hub unreachable, failing (5xx) or refusing the token: the report is kept in the
    spool for the agent's next run, and the line says where (or why it could not be kept,
    e.g. a running agent holds the spool). Rejected as invalid (4xx): dropped, said so.
    Returns the exit status: 0 stored, 1 otherwise.
    """
    report_id, hub = report["report_id"], cfg["server_url"]
    spool = why = None

    def open_spool():  # only when needed: a stored report creates no spool directory
        nonlocal spool, why
        try:
            spool = _open_spool(cfg)
        except (SpoolInUse, OSError) as exc:
            why = str(exc)
        return spool

    try:
        result = send_once(transport, report)
        if result.outcome == "delivered":
            if os.path.isdir(cfg["spool_dir"]):
                open_spool()
            duplicate = isinstance(result.body, dict) and result.body.get("duplicate")
            click.echo(f"{'already stored' if duplicate else 'stored'} report {report_id} at {hub}")
            if spool is not None and len(spool):
                sent = Delivery(transport, spool).flush()
                click.echo(f"sent {sent} report(s) spooled earlier; {len(spool)} still waiting in {cfg['spool_dir']}")
            return 0
        problem = describe_result(result)
        if result.outcome == "rejected" and result.status not in (401, 403):
            click.echo(f"hub rejected report {report_id} ({problem}); it is not kept", err=True)
            return 1
        if result.outcome == "rejected":  # 401/403: kept, as the running agent keeps it
            problem = f"hub rejected the agent token, {problem}"
        if open_spool() is None:
            click.echo(f"report {report_id} not stored ({problem}) and NOT kept: {why}", err=True)
            return 1
        spool.append(report)
        click.echo(f"report {report_id} not stored ({problem}); kept in the spool {cfg['spool_dir']} "
                   f"({len(spool)} waiting), sent by the agent's next run", err=True)
        return 1
    finally:
        if spool is not None:
            spool.close()


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
            if tick == 0:
                freeze_startup_objects()  # full collections stay cheap (see its docstring)
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
    # urllib3 logs a WARNING for each internal retry ("Retrying (Retry(total=0, ...")); the
    # delivery's own one-line message says what matters.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    # A dry run needs no hub, nor even a config file.
    path = config_path if (os.path.exists(config_path) or not dry_run) else None
    try:
        cfg = load_config(path, {"interval": interval}, require_hub=not dry_run)
    except AgentConfigError as exc:
        raise click.ClickException(str(exc))
    builder = ReportBuilder(cfg)
    if once or dry_run:
        builder.gpu_background.wait = None  # one report: wait for nvidia-smi (each call still bounded)
    if once:
        time.sleep(0.5)  # give the CPU and network counter deltas something to measure
    if dry_run:
        click.echo(json.dumps(builder.build(), indent=2, sort_keys=True))
        return
    transport = Transport(cfg["server_url"], cfg["token"], ca_file=cfg.get("ca_file"),
                          verify_tls=cfg.get("verify_tls", True))
    if once:
        sys.exit(report_once(cfg, transport, builder.build()))
    try:
        spool = _open_spool(cfg)
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
    try:
        run_forever(builder, delivery, cfg["interval"], stop)
    finally:
        builder.gpu_background.close()
    prober.stop()


if __name__ == "__main__":
    main()
