"""Hub configuration: ``config.yaml`` loading, defaults and first-run creation.

The file keeps the keys of the original product (``server.host``, ``server.port``,
``server.secret_key``, ``auth.username``, ``auth.password`` / ``auth.password_hash``,
``agent.token``, ``data.retention_days``) and adds a few of our own, all optional.
Relative paths in ``data.*`` are resolved against the directory holding the config file.
"""

import copy
import difflib
import os
import re
import secrets
from dataclasses import dataclass

import yaml
from datasette_auth_passwords.utils import hash_password

from . import peers

ENV_VAR = "SERVER_MONITOR_CONFIG"
# Secrets may come from the environment instead of the file (containers, secret stores).
ENV_OVERRIDES = {
    "SERVER_MONITOR_SECRET_KEY": ("server", "secret_key"),
    "SERVER_MONITOR_AGENT_TOKEN": ("agent", "token"),
    "SERVER_MONITOR_ADMIN_USERNAME": ("auth", "username"),
    "SERVER_MONITOR_ADMIN_PASSWORD_HASH": ("auth", "password_hash"),
}

# The ``notifications`` section: where notices go and how they are delivered
# (``server_monitor.jobs.notify``), idle-GPU nudges and weekly digests (``server_monitor.jobs.nudge``).
NOTIFY_DEFAULTS = {
    # [{name, url: <Apprise URL>, severities: [critical, warning, info]}] (no severities: all)
    "targets": [],
    "timeout_s": 10,        # per connection of one delivery
    "workers": 4,           # deliveries in parallel
    "pass_budget_s": 30,    # delivery time one alert pass may spend; the rest goes next pass
    # Apprise URL kinds a user may set as their own contact on /account (admins may set any):
    # services on their vendor's own host only (ntfy: ntfy.sh only), so a user cannot make the
    # hub post to an address inside the lab. Self-hosted kinds (mmosts, rockets, matrixs,
    # gotifys, json) added here let every user aim the hub at any host.
    "contact_schemes": ["tgram", "slack", "discord", "ntfy", "ntfys", "feishu", "lark", "dingtalk", "wecombot",
                        "pover"],
    # Idle-GPU nudges: a GPU held idle (features.idle_min_mib / idle_max_util) this long
    # (hours; null: features.idle_hours) nudges its holders, again every nudge_repeat_hours,
    # never between quiet_hours [start, end) (hours 0-23 on the holder's clock: their contact's
    # time zone, else hub local time; null: never quiet).
    "nudges": True,
    "nudge_after_hours": None,
    "nudge_repeat_hours": 24,
    "quiet_hours": [22, 7],
    "nudge_interval_s": 300,
    # Weekly digest to those who opted in: weekday (0 Monday .. 6 Sunday) and hour (holder's clock, as quiet_hours).
    "digest_weekday": 0,
    "digest_hour": 8,
}


DEFAULTS = {
    # workers: processes sharing the port (server_monitor/serving/asgi.py); 2 keeps ingest answered
    # while another process renders pages or runs SQL (docs/architecture.md, "Worker processes").
    # header_timeout_s .. max_connections_per_address: connection limits per worker (N3,
    # server_monitor/serving/netguard.py); shutdown_timeout_s: how long a SIGTERM waits for requests (I-10).
    "server": {"host": "127.0.0.1", "port": 5100, "secret_key": None, "public_url": None, "workers": 2,
               "header_timeout_s": 10, "body_timeout_s": 30, "max_connections": 1000,
               "max_connections_per_address": 128, "shutdown_timeout_s": 10},
    "auth": {
        "username": "admin",
        "password": None,
        "password_hash": None,
        "session_hours": 12,
        "trusted_proxy_header": None,
        # Socket peers whose trusted_proxy_header is believed (addresses or networks, I-6).
        "trusted_proxies": ["127.0.0.1", "::1"],
        # Right passwords too are budgeted (N10): per user per minute (per client address: 3x),
        # and live sessions per user (the oldest ends when a login goes past it). A class logging
        # in at once on one shared account from one NAT address still gets in.
        "logins_per_minute": 20,
        "max_sessions_per_user": 20,
        # Requests per minute one API token may make (issue 26 item 4, docs/security.md "API tokens").
        "api_token_requests_per_minute": 120,
        # ... and all API tokens of one user together (null: 3 x the per-token rate), so a user
        # holding many tokens does not multiply the rate (docs/security.md, attack run A2).
        "api_token_user_requests_per_minute": None,
    },
    # Single sign-on through a forward-auth proxy (issue 26 item 5, docs/operations.md "Single
    # sign-on"): off by default; the headers are believed only from a socket peer in ``proxies``.
    "sso": {
        "enabled": False,
        "proxies": [],
        "user_header": "X-Forwarded-User",
        "groups_header": "X-Forwarded-Groups",
        "groups_separator": ",",
        "default_role": "viewer",
        "default_scope": "all",
        "see_processes": True,
        "roles": {},
        "host_groups": {},
        "logout_url": None,
    },
    # max_new_hosts_per_hour: servers the shared token may create per hour (I-4; 0: no cap).
    "agent": {"token": None, "max_report_bytes": 1_048_576, "shared_token_enabled": True,
              "max_new_hosts_per_hour": 0},
    "alerts": {"enabled": True},
    "notifications": NOTIFY_DEFAULTS,
    # shards: how many targets /metrics/targets (Prometheus http_sd) splits the fleet into.
    "prometheus": {"token": None, "shards": 1},
    # Defaults of the fleet views (canned-query parameters left empty use these).
    "features": {
        "free_max_util": 10,
        "idle_min_mib": 1024,
        "idle_max_util": 5,
        "idle_hours": 2,
    },
    # Analysts' ad-hoc SQL (?sql= on /monitor): its own bounded path (server_monitor/serving/analyst.py).
    "sql": {
        "analyst_time_limit_ms": 2000,
        "analyst_concurrency": 1,
        "analyst_queue": 8,
    },
    # Continuous replication of both databases with Litestream (server_monitor/jobs/replication.py),
    # off by default: url is a directory, file:///path or s3://bucket/prefix; options are passed
    # to Litestream's replica (endpoint, region, force-path-style, ...).
    "replication": {"enabled": False, "url": None, "sync_interval": "1s", "litestream": None, "options": None},
    "data": {
        "path": "monitor.db",
        "auth_path": "auth.db",
        "retention_days": 7,
        "rollup_5m_days": 90,
        "rollup_1h_days": 730,
        "maintenance_interval_s": 60,
    },
}

# The ``alerts`` section: thresholds and delivery (``server_monitor.jobs.alerts`` evaluates and
# sends them, as its ``DEFAULTS``). Kept here so that the base layer knows every config key
# without importing the jobs layer; a new alert key is added here.
ALERT_DEFAULTS = {
    "enabled": True,
    "interval_s": 60,
    "repeat_minutes": 60,
    "host_offline_minutes": 5,
    "gpu_temperature_c": 85,
    "gpu_temperature_minutes": 5,
    "xid_minutes": 60,
    "disk_percent": 90,
    "dashboard_url": None,
    "webhooks": [],
    "smtp": None,
}

WORKERS_ENV = "SERVER_MONITOR_WORKERS"


def worker_count(config):
    """How many worker processes the hub runs (int >= 1): ``$SERVER_MONITOR_WORKERS``, which
    ``serve`` sets for its workers (so ``serve --workers N`` wins over the file), else
    ``server.workers``."""
    env = os.environ.get(WORKERS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, int(config.get("server.workers", 2)))


def idle_hours(config):
    """Hours (float) a GPU must be held idle to count as an *idle holder*: one threshold for the
    dashboard's Idle holders panel (the ``idle_holders`` query's default ``hours``) and the
    idle-GPU nudges, so a nudge is never about a GPU the panel does not list (newcomer finding
    11). ``notifications.nudge_after_hours`` when set (the older setting), else
    ``features.idle_hours`` (default 2)."""
    after = (config.get("notifications") or {}).get("nudge_after_hours")
    return float(after if after else config.get("features.idle_hours") or 2)


class ConfigError(ValueError):
    """Raised when ``config.yaml`` is missing a required key or holds a wrong type."""


@dataclass
class Config:
    """The parsed hub configuration (a dict tree) plus the file it came from."""

    data: dict
    path: str

    def get(self, dotted, default=None):
        """Value at ``"section.key"``, or ``default`` when absent or null."""
        node = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or node.get(part) is None:
                return default
            node = node[part]
        return node

    def resolve(self, dotted):
        """A path-valued key resolved against the config file's directory."""
        value = self.get(dotted)
        if value is None:
            return None
        if os.path.isabs(value):
            return value
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), value)

    @property
    def db_path(self):
        """Absolute path of the metrics database (Datasette name: its file stem)."""
        return self.resolve("data.path")

    @property
    def auth_db_path(self):
        """Absolute path of the accounts/sessions database, never served by Datasette."""
        return self.resolve("data.auth_path")


def _merge(defaults, given):
    out = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def known_keys():
    """``{section: set of key names}`` a config file may use: :data:`DEFAULTS` plus the
    ``alerts`` keys of :data:`ALERT_DEFAULTS`. A new key is added there."""
    known = {section: set(values) for section, values in DEFAULTS.items()}
    known["alerts"] |= set(ALERT_DEFAULTS)
    known["notifications"] |= set(NOTIFY_DEFAULTS)
    return known


def _did_you_mean(name, choices):
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_unknown(given):
    """Raise :class:`ConfigError` naming the first unknown section or key in ``given``
    (the file's mapping), with the closest known name: a misspelt key must not be ignored."""
    known = known_keys()
    for section, values in given.items():
        if section not in known:
            raise ConfigError(f"config: unknown section {section!r}{_did_you_mean(str(section), known)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config: '{section}' must be a mapping")
        for key in values:
            if key not in known[section]:
                raise ConfigError(f"config: unknown key {section}.{key}{_did_you_mean(str(key), known[section])}")


def _check(data):
    for section in ("server", "auth", "agent", "data"):
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"config: '{section}' must be a mapping")
    port = data["server"]["port"]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("config: server.port must be an integer 1..65535")
    workers = data["server"].get("workers", 2)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
        raise ConfigError("config: server.workers must be an integer 1..64")
    for key, low in (("header_timeout_s", 1), ("body_timeout_s", 1), ("max_connections", 16),
                     ("max_connections_per_address", 0), ("shutdown_timeout_s", 1)):
        value = data["server"].get(key, DEFAULTS["server"][key])
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"config: server.{key} must be a number >= {low}")
    for key in ("server.secret_key", "agent.token"):
        section, name = key.split(".")
        value = data[section][name]
        if not isinstance(value, str) or len(value) < 16:
            raise ConfigError(f"config: {key} must be a string of at least 16 characters")
    public_url = data["server"].get("public_url")
    if public_url is not None and (not isinstance(public_url, str)
                                   or not public_url.startswith(("http://", "https://"))):
        raise ConfigError("config: server.public_url must be an http:// or https:// URL (or null)")
    new_hosts = data["agent"].get("max_new_hosts_per_hour", 0)
    if not isinstance(new_hosts, int) or isinstance(new_hosts, bool) or new_hosts < 0:
        raise ConfigError("config: agent.max_new_hosts_per_hour must be an integer >= 0 (0: no cap)")
    if not isinstance(data["agent"].get("shared_token_enabled", True), bool):
        raise ConfigError("config: agent.shared_token_enabled must be true or false")
    auth = data["auth"]
    if not isinstance(auth.get("username"), str) or not auth["username"].strip():
        raise ConfigError("config: auth.username must be a non-empty string")
    if not (auth.get("password") or auth.get("password_hash")):
        raise ConfigError("config: set auth.password_hash (preferred) or auth.password")
    if auth.get("password_hash") and not str(auth["password_hash"]).startswith("pbkdf2_sha256$"):
        raise ConfigError("config: auth.password_hash must be a pbkdf2_sha256$... hash")
    _check_networks(auth.get("trusted_proxies"), "auth.trusted_proxies")
    for key in ("logins_per_minute", "max_sessions_per_user", "api_token_requests_per_minute"):
        if not isinstance(auth.get(key), int) or isinstance(auth.get(key), bool) or auth[key] < 1:
            raise ConfigError(f"config: auth.{key} must be an integer >= 1")
    per_user = auth.get("api_token_user_requests_per_minute")
    if per_user is not None and (not isinstance(per_user, int) or isinstance(per_user, bool) or per_user < 1):
        raise ConfigError("config: auth.api_token_user_requests_per_minute must be an integer >= 1 (or null)")
    _check_sso(data.get("sso"))
    days = data["data"]["retention_days"]
    # History charts up to 48 h read raw samples, so raw data must cover at least that.
    if not isinstance(days, (int, float)) or days < 2:
        raise ConfigError("config: data.retention_days must be a number >= 2")
    for key in ("rollup_5m_days", "rollup_1h_days", "maintenance_interval_s"):
        if not isinstance(data["data"][key], (int, float)) or data["data"][key] < 0:
            raise ConfigError(f"config: data.{key} must be a non-negative number")
    replication = data.get("replication")
    if not isinstance(replication, dict):
        raise ConfigError("config: 'replication' must be a mapping")
    if not isinstance(replication.get("enabled", False), bool):
        raise ConfigError("config: replication.enabled must be true or false")
    if replication.get("enabled") and not (isinstance(replication.get("url"), str) and replication["url"].strip()):
        raise ConfigError("config: replication.url must be set when replication.enabled is true "
                          "(a directory, file:///path or s3://bucket/prefix)")
    if not re.fullmatch(r"[0-9]+(ms|s|m|h)", str(replication.get("sync_interval") or "1s")):
        raise ConfigError("config: replication.sync_interval must be a duration like 1s, 500ms or 1m")
    if replication.get("options") is not None and not isinstance(replication["options"], dict):
        raise ConfigError("config: replication.options must be a mapping of Litestream replica settings")
    sql = data.get("sql")
    if not isinstance(sql, dict):
        raise ConfigError("config: 'sql' must be a mapping")
    for key, low in (("analyst_time_limit_ms", 1), ("analyst_concurrency", 1), ("analyst_queue", 0)):
        if not isinstance(sql[key], int) or isinstance(sql[key], bool) or sql[key] < low:
            raise ConfigError(f"config: sql.{key} must be an integer >= {low}")


ROLES = ("viewer", "analyst", "admin")
HEADER_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
# Host group names (server_monitor/storage/groups.py GROUP_PATTERN; the base layer cannot import it).
HOST_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_networks(value, key):
    """``value`` when it is a list of addresses or networks, else :class:`ConfigError` naming ``key``."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ConfigError(f"config: {key} must be a list of addresses or networks")
    for entry in value:
        try:
            peers.network(entry)
        except peers.NetworkError as exc:
            raise ConfigError(f"config: {key}: {entry!r} {exc}")
    return value


def _check_sso(sso):
    """Raise :class:`ConfigError` naming the one ``sso.*`` key that is wrong (see docs/operations.md)."""
    if not isinstance(sso, dict):
        raise ConfigError("config: 'sso' must be a mapping")
    if not isinstance(sso.get("enabled"), bool):
        raise ConfigError("config: sso.enabled must be true or false")
    proxies = _check_networks(sso.get("proxies"), "sso.proxies")
    if sso["enabled"] and not proxies:
        raise ConfigError("config: sso.proxies must list the proxy's address when sso.enabled is true")
    for key in ("user_header", "groups_header"):
        value = sso.get(key)
        if not (isinstance(value, str) and HEADER_RE.fullmatch(value)) and not (key == "groups_header" and value is None):
            raise ConfigError(f"config: sso.{key} must be an HTTP header name like X-Forwarded-User")
    if not isinstance(sso.get("groups_separator"), str) or len(sso["groups_separator"]) != 1:
        raise ConfigError("config: sso.groups_separator must be one character (',' for oauth2-proxy and Authelia)")
    if sso.get("default_role") not in ROLES:
        raise ConfigError(f"config: sso.default_role must be one of {', '.join(ROLES)}")
    if sso.get("default_scope") not in ("all", "none"):
        raise ConfigError("config: sso.default_scope must be all or none")
    if not isinstance(sso.get("see_processes"), bool):
        raise ConfigError("config: sso.see_processes must be true or false")
    roles = sso.get("roles")
    if not isinstance(roles, dict):
        raise ConfigError("config: sso.roles must be a mapping of proxy group -> role")
    for group, role in roles.items():
        if role not in ROLES:
            raise ConfigError(f"config: sso.roles.{group}: {role!r} is not a role ({', '.join(ROLES)})")
    host_groups = sso.get("host_groups")
    if not isinstance(host_groups, dict):
        raise ConfigError("config: sso.host_groups must be a mapping of proxy group -> list of host groups")
    for group, names in host_groups.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) and HOST_GROUP_RE.fullmatch(n) for n in names):
            raise ConfigError(f"config: sso.host_groups.{group} must be a list of host group names")
    logout = sso.get("logout_url")
    if logout is not None and not (isinstance(logout, str) and logout.startswith(("http://", "https://", "/"))):
        raise ConfigError("config: sso.logout_url must be a URL or a path on this host (or null)")


def load(path):
    """Read and validate ``path``; return a :class:`Config`.

    ``$SERVER_MONITOR_SECRET_KEY``, ``$SERVER_MONITOR_AGENT_TOKEN``,
    ``$SERVER_MONITOR_ADMIN_USERNAME`` and ``$SERVER_MONITOR_ADMIN_PASSWORD_HASH`` override
    the file. Raises :class:`ConfigError` for a missing file, bad YAML, an unknown section or
    key (with the closest known name) or a bad value.
    """
    try:
        with open(path, encoding="utf-8") as fp:
            given = yaml.safe_load(fp) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}")
    if not isinstance(given, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    check_unknown(given)
    data = _merge(DEFAULTS, {k: v for k, v in given.items() if v is not None})  # "agent:" left empty = defaults
    for var, (section, key) in ENV_OVERRIDES.items():
        if os.environ.get(var):
            data[section][key] = os.environ[var]
    _check(data)
    return Config(data=data, path=os.path.abspath(path))


def check_data_dirs(config):
    """Raise :class:`ConfigError` naming the key and directory when the directory of
    ``data.path`` or ``data.auth_path`` does not exist (SQLite would only say "unable to
    open database file")."""
    for key in ("data.path", "data.auth_path"):
        directory = os.path.dirname(config.resolve(key))
        if not os.path.isdir(directory):
            raise ConfigError(f"config: {key}: directory {directory} does not exist "
                              f"(create it, or fix {key} in {config.path})")


def admin_password_hash(config):
    """The admin's PBKDF2 hash: ``auth.password_hash``, else a hash of ``auth.password``.

    The plain password is hashed in memory once per process and never stored elsewhere.
    """
    stored = config.get("auth.password_hash")
    if stored:
        return stored
    cached = config.data["auth"].get("_derived_hash")
    if not cached:
        cached = hash_password(config.get("auth.password"))
        config.data["auth"]["_derived_hash"] = cached
    return cached


def new_secret(nbytes):
    """A random URL-safe text secret of ``nbytes`` random bytes (``secrets.token_urlsafe``) that
    never starts with ``-``: agent and Prometheus tokens and first passwords are pasted into
    command lines (``--token X``, ``curl -u admin:X``), where a leading ``-`` reads as an option
    (argparse: "expected one argument"). One draw in 64 starts with ``-``; it is drawn again."""
    while True:
        secret = secrets.token_urlsafe(nbytes)
        if not secret.startswith("-"):
            return secret


def create(path, username="admin", host="127.0.0.1", port=5100, data_dir=None, password=None):
    """Write a new config with random secrets to ``path`` (mode 0600).

    ``data_dir``: where monitor.db and auth.db go (absolute paths in the file; default:
    next to the config). ``password``: the admin password, else a random one.
    Returns ``(Config, password)``; the password exists only in the return value (the
    file stores its PBKDF2 hash). Raises ``FileExistsError`` if the file is already there.
    """
    password = password or new_secret(12)
    base = os.path.abspath(data_dir) if data_dir else ""
    data = {
        "server": {"host": host, "port": port, "secret_key": secrets.token_hex(32)},
        "auth": {"username": username, "password_hash": hash_password(password)},
        "agent": {"token": new_secret(32)},
        "prometheus": {"token": new_secret(32)},
        "data": {"path": os.path.join(base, "monitor.db"), "auth_path": os.path.join(base, "auth.db"),
                 "retention_days": 7},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fp:
        fp.write("# Server Monitor hub configuration (created on first run).\n")
        fp.write("# Keep this file private: it holds the session secret and the agent token.\n")
        yaml.safe_dump(data, fp, sort_keys=False)
    return load(path), password


def from_env():
    """Load the config named by ``$SERVER_MONITOR_CONFIG`` (default ``./config.yaml``)."""
    return load(os.environ.get(ENV_VAR, "config.yaml"))
