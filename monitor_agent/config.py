"""``agent_config.yaml``: where to report, with which token, how often."""

import os
import re

import yaml

from .probes import normalise

DEFAULTS = {
    "server_url": None,
    "token": None,
    "interval": 30,
    "nvidia_smi": "nvidia-smi",
    "gpu_timeout": 10,
    "ca_file": None,
    "verify_tls": True,
    # Where the kernel's sysfs and procfs are mounted (AMD/Intel GPUs, process owners);
    # tests and containers that bind-mount the host's point these elsewhere.
    "sysfs_root": "/sys",
    "procfs_root": "/proc",
    "drm": True,  # read AMD / Intel GPUs from sysfs and DRM fdinfo
    "temperatures": True,  # read host temperatures from <sysfs_root>/class/hwmon (monitor_agent/temperatures.py)
    "drm_min_vram_mib": 4096,  # AMD GPUs with less VRAM are integrated graphics (Ryzen iGPU): skipped
    "amd_smi": "amd-smi",
    # Kernel log read for NVIDIA XID errors (needs root or CAP_SYSLOG); null = not read.
    "kmsg_path": "/dev/kmsg",  # optional, only for ECC/RAS counts and XGMI links; missing = skipped
    # Reports the hub has not acknowledged wait here (bounded; oldest dropped first).
    "spool_dir": None,  # default: /var/lib/server-monitor-agent/spool as root, else ~/.cache/...
    "spool_max_mb": 64,
    "spool_max_age_h": 168,
    "retry_base_s": 5,
    "retry_max_s": 300,
    "inventory_interval": 60,  # seconds between `incus/lxc list` and `zpool list` calls
    "probes": [],  # [{name, url, proxy?, timeout?}]
    "probe_interval": 60,
    # Slurm GPU allocations (monitor_agent/slurm.py): read where scontrol is installed.
    "slurm": True,
    "scontrol": "scontrol",
    "slurm_node": None,  # this node's Slurm NodeName; default the short host name
    "slurm_interval": 60,  # seconds between `scontrol show job -d` calls
    # Host groups (cluster, rack, project) sent with every report; the hub's dashboard,
    # scopes and filters use them (docs/api.md "Host groups").
    "groups": [],
    # Identity overrides, for cloned machines sharing a machine-id or for demo agents.
    "hostname": None,
    "machine_id": None,
}


class AgentConfigError(ValueError):
    """A missing or malformed agent configuration value."""


# The hub's rule for a group name (server_monitor/storage/groups.py GROUP_PATTERN; a test keeps them equal).
GROUP_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
MAX_GROUPS = 32


def check_groups(value):
    """``groups:`` of the agent config: a list (or one comma-separated string) of names matching
    :data:`GROUP_PATTERN`, at most :data:`MAX_GROUPS`; returns the sorted list without duplicates.
    Raises :class:`AgentConfigError` naming the bad entry."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list):
        raise AgentConfigError("groups must be a list of group names, e.g. [cluster-a, rack-12]")
    names = set()
    for item in value:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)  # YAML reads `- 12` as a number
        if not isinstance(item, str) or not re.fullmatch(GROUP_PATTERN, item):
            raise AgentConfigError(f"groups: {item!r} is not a group name (1-64 letters, digits, '.', '_' or '-', "
                                   "starting with a letter or digit)")
        names.add(item)
    if len(names) > MAX_GROUPS:
        raise AgentConfigError(f"groups: at most {MAX_GROUPS} groups")
    return sorted(names)


def load(path, overrides=None, require_hub=True):
    """Read ``path`` (YAML mapping), apply defaults and ``overrides``; returns a dict.

    With ``require_hub=False`` (dry runs) a missing file or hub URL/token is allowed.
    Raises :class:`AgentConfigError` for a missing file, bad YAML, a missing
    ``server_url``/``token`` or an interval outside 1..86400 s.
    """
    if not require_hub and path is None:
        return check(_merged({}, overrides), require_hub=False)
    try:
        with open(path, encoding="utf-8") as fp:
            given = yaml.safe_load(fp) or {}
    except OSError as exc:
        raise AgentConfigError(f"cannot read agent config {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        raise AgentConfigError(f"agent config {path} is not valid YAML: {exc}")
    if not isinstance(given, dict):
        raise AgentConfigError(f"agent config {path} must be a mapping")
    return check(_merged(given, overrides), require_hub=require_hub)


def _merged(given, overrides):
    cfg = dict(DEFAULTS)
    cfg.update(given)
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg


def check(cfg, require_hub=True):
    """Validate a config dict in place and return it (see :func:`load`)."""
    url = cfg.get("server_url")
    if require_hub and not url:
        raise AgentConfigError("server_url is required (the hub's address, e.g. http://hub:5100)")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise AgentConfigError("server_url must be an http:// or https:// URL")
    if require_hub and (not isinstance(cfg.get("token"), str) or not cfg["token"]):
        raise AgentConfigError("token is required (the hub's agent.token)")
    numbers = ("interval", "gpu_timeout", "spool_max_mb", "spool_max_age_h", "retry_base_s", "retry_max_s",
               "inventory_interval", "probe_interval", "slurm_interval")
    for key in numbers:
        try:
            # A dict built without load() (tests, embedding) may lack a key added later: its default.
            cfg[key] = float(cfg.get(key, DEFAULTS[key]))
        except (TypeError, ValueError):
            raise AgentConfigError(f"{key} must be a number")
        if cfg[key] <= 0:
            raise AgentConfigError(f"{key} must be positive")
    for key in ("sysfs_root", "procfs_root", "drm", "amd_smi", "drm_min_vram_mib"):
        cfg.setdefault(key, DEFAULTS[key])
    if cfg.get("proc_root") and cfg.get("procfs_root") in (None, "/proc"):
        cfg["procfs_root"] = cfg["proc_root"]  # the key's earlier name
    for key in ("sysfs_root", "procfs_root"):
        if not isinstance(cfg.get(key), str) or not cfg[key].startswith("/"):
            raise AgentConfigError(f"{key} must be an absolute path (default {DEFAULTS[key]})")
    cfg.setdefault("temperatures", DEFAULTS["temperatures"])
    if not isinstance(cfg["temperatures"], bool):
        raise AgentConfigError("temperatures must be true or false")
    for key in ("slurm", "scontrol", "slurm_node"):
        cfg.setdefault(key, DEFAULTS[key])
    if not isinstance(cfg.get("slurm"), bool):
        raise AgentConfigError("slurm must be true or false")
    if cfg["slurm_node"] is not None and not isinstance(cfg["slurm_node"], str):
        raise AgentConfigError("slurm_node must be a Slurm node name")
    cfg["groups"] = check_groups(cfg.get("groups"))
    if not isinstance(cfg.get("drm"), bool):
        raise AgentConfigError("drm must be true or false")
    cfg.setdefault("kmsg_path", DEFAULTS["kmsg_path"])
    if cfg["kmsg_path"] is not None and (not isinstance(cfg["kmsg_path"], str) or not cfg["kmsg_path"].startswith("/")):
        raise AgentConfigError("kmsg_path must be an absolute path or null (default /dev/kmsg)")
    value = cfg["drm_min_vram_mib"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AgentConfigError("drm_min_vram_mib must be a whole number of MiB (0 keeps integrated AMD GPUs)")
    if cfg.get("amd_smi") is not None and not isinstance(cfg["amd_smi"], str):
        raise AgentConfigError("amd_smi must be a path or null")
    try:
        cfg["probes"] = normalise(cfg.get("probes"))
    except ValueError as exc:
        raise AgentConfigError(str(exc))
    if cfg.get("spool_dir") is None:
        cfg["spool_dir"] = default_spool_dir()
    if not 1 <= cfg["interval"] <= 86400:
        raise AgentConfigError("interval must be between 1 and 86400 seconds")
    if not 0.5 <= cfg["gpu_timeout"] <= 600:
        raise AgentConfigError("gpu_timeout must be between 0.5 and 600 seconds")
    return cfg


def default_spool_dir():
    """``/var/lib/server-monitor-agent/spool`` when running as root, else under ~/.cache."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/server-monitor-agent/spool"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "server-monitor-agent", "spool")
