"""``python -m bench COMMAND [ARGS]``: one entry point for every benchmark and the proof suite."""

import importlib
import inspect
import sys

# command -> (module of this package, what it measures)
COMMANDS = {
    "ingest": ("ingest", "ingest throughput/latency over HTTP (wrk), SQLite limits, query times, disk per sample"),
    "fleet": ("fleet", "GET /api/fleet (changed, 304) beside the per-table calls it replaced"),
    "metrics": ("metrics", "/metrics whole and sharded, a real Prometheus with http_sd, ingest while it scrapes"),
    "browser": ("browser", "the dashboard in Chromium: time to visible, refresh cost, DOM, heap (vs an old revision)"),
    "agent": ("agent", "agent CPU, child processes and RSS per report cycle (NVIDIA and AMD)"),
    "commit": ("commit", "ingest transactions with the WAL checkpointed in the commit or by the checkpoint thread"),
    "gpu-history": ("gpu_history", "gpu_history canned query before/after the GPU-depth columns"),
    "maintenance": ("maintenance", "maintenance pass CPU at fleet size on a simulated clock"),
    "prove": ("prove", "the proof suite: load, outage, crash, disk full, bad collectors, fuzz, mixed"),
    "mixed": ("prove", "the mixed use (agents + viewers + analysts): prove --profile mixed (or --profile mixed-small)"),
    "fleet-pages": ("fleet_pages", "/admin and /free at 10,000 servers: server time, browser load, DOM (issue 24)"),
    "alerts": ("alerts", "one alert evaluation pass at 1,000 servers: built-in rules, and with rules made in /admin"),
    "user-page": ("user_page", "per-user page and disk/temperature history at 1,000 servers x 8 GPUs x 30 days (issue 26)"),
    "natsort": ("natsort", "servers in natural order at fleet size: stored name_key vs the per-row natural_key() (issue 24)"),
    "free": ("free", "/free's SQL (free_gpus) of this tree vs an older revision on one grown database: times, identical rows"),
    "fixture": ("fleet_fixture", "grow a lab-like fleet into a database through store_report"),
    "curve": ("curve", "the cost curve at 100 to 10,000 servers: fleet, /metrics, Prometheus, pages, RSS, ingest (issue 24)"),
}


def usage():
    lines = ["usage: python -m bench COMMAND [ARGS]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:12} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    """Run the command named by ``argv[0]`` with the rest of ``argv``; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    if name == "mixed" and "--profile" not in rest:
        rest = ["--profile", "mixed"] + rest
    module = importlib.import_module(f"bench.{COMMANDS[name][0]}")
    sys.argv = [f"python -m bench {name}"] + rest
    # Older commands parse sys.argv themselves (main() without parameters).
    result = module.main(rest) if inspect.signature(module.main).parameters else module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
