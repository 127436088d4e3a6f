"""``agent_config.yaml``: where to report, with which token, how often."""

import yaml

DEFAULTS = {
    "server_url": None,
    "token": None,
    "interval": 30,
    "nvidia_smi": "nvidia-smi",
    "gpu_timeout": 10,
    "ca_file": None,
    "verify_tls": True,
    "proc_root": "/proc",
    # Identity overrides, for cloned machines sharing a machine-id or for demo agents.
    "hostname": None,
    "machine_id": None,
}


class AgentConfigError(ValueError):
    """A missing or malformed agent configuration value."""


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
    if require_hub or url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AgentConfigError("server_url must be an http:// or https:// URL")
    if require_hub and (not isinstance(cfg.get("token"), str) or not cfg["token"]):
        raise AgentConfigError("token is required (the hub's agent.token)")
    try:
        cfg["interval"] = float(cfg["interval"])
        cfg["gpu_timeout"] = float(cfg["gpu_timeout"])
    except (TypeError, ValueError):
        raise AgentConfigError("interval and gpu_timeout must be numbers of seconds")
    if not 1 <= cfg["interval"] <= 86400:
        raise AgentConfigError("interval must be between 1 and 86400 seconds")
    if not 0.5 <= cfg["gpu_timeout"] <= 600:
        raise AgentConfigError("gpu_timeout must be between 0.5 and 600 seconds")
    return cfg
