"""``server-monitor``: run and manage the hub (Datasette and the ingest endpoint under uvicorn, see ``server_monitor.serving.asgi``)."""

import os
import signal
import sqlite3
import time

import click
from datasette_auth_passwords.utils import hash_password as make_hash

from .auth import tokens
from .auth.accounts import Accounts
from .core import config as config_mod
from .jobs import leader, replication
from .serving import fleet_share, netguard
from .serving.analyst import AnalystSQL
from .storage import instance, schema
from .storage.rollup import Maintenance, refresh_statistics


def _ensure_config(path, username="admin", **options):
    """Load ``path``, creating it with random secrets first when missing."""
    if not os.path.exists(path):
        chosen = options.get("password")
        cfg, password = config_mod.create(path, username=username, **options)
        click.echo(f"Created {path} with new random secrets (mode 0600).", err=True)
        if chosen:
            click.echo(f"Admin login: {username} with the password you chose.", err=True)
        else:
            click.echo("Admin login (shown once; the file stores only its hash):", err=True)
            click.echo(f"    username: {username}", err=True)
            click.echo(f"    password: {password}", err=True)
        return cfg
    return config_mod.load(path)


def _load(path):
    """``config_mod.load`` with a one-line click error instead of a traceback."""
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc))


def _private_files(cfg):
    """chmod 0600 the databases and their WAL/SHM files (made 0644 by releases before the fix of docs/security.md L8)."""
    for base in (cfg.db_path, cfg.auth_db_path):
        for path in (base, base + "-wal", base + "-shm"):
            try:
                if os.path.exists(path) and os.stat(path).st_mode & 0o077:
                    os.chmod(path, 0o600)
            except OSError as exc:  # not ours (e.g. made by root): say so, do not refuse to start
                click.echo(f"WARNING: could not make {path} private (chmod 600): {exc.strerror}", err=True)


def _check_lock_files(cfg):
    """Open (creating) every lock file the workers and jobs will use and check the fleet shelf,
    so a planted one stops the start with one line naming it (N8) rather than a worker later.
    Raises ``instance.UnsafeFileError`` or ``OSError``."""
    for path in [cfg.db_path + ".write.lock", leader.lock_path(cfg.db_path),
                 *AnalystSQL.from_config(cfg).lock_paths()]:
        os.close(instance.open_lock_file(path))
    instance.check_private_dir(fleet_share.share_dir(cfg.db_path))


def _prepare_auth_db(path):
    """Create or upgrade the sessions/users/tokens database at ``path`` (``data.auth_path``)
    and close it again. Raises ``sqlite3.Error``."""
    Accounts(path).connection().close()


def _prepare_statistics(db_path):
    """Planner statistics before Datasette opens its (long-lived) connections; best effort."""
    try:
        conn = schema.connect(db_path, timeout=30)
        try:
            refresh_statistics(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        click.echo(f"warning: could not gather query statistics: {exc}", err=True)


@click.group()
@click.version_option(package_name=None, version=__import__("server_monitor").__version__)
def cli():
    """Server Monitor hub."""
    # Everything a command creates (databases, backups, journals, configs) is private from its
    # first byte: a chmod afterwards leaves a window in which others can open the file (N12).
    os.umask(os.umask(0o077) | 0o077)


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True, help="Hub config file.")
@click.option("--init", is_flag=True,
              help="Create the config (random secrets) when it does not exist. Without it only the default "
                   "./config.yaml is created; any other missing path is an error.")
@click.option("--host", default=None, help="Listen address (default: server.host).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Listen port (default: server.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes sharing the port (default: server.workers).")
def serve(config_path, init, host, port, workers):
    """Create config and database if needed, then serve the hub (Datasette + ingest, ``server_monitor.serving.asgi``)
    with uvicorn in ``server.workers`` processes.

    Refuses to start (one line, exit 1) when another hub holds the same database (a lock
    next to it, see ``server_monitor.storage.instance``) or the port is taken.
    Files it creates are private (umask 077, see docs/security.md L8); existing database files are made 0600.
    """
    os.umask(0o077)
    default_path = click.get_current_context().get_parameter_source("config_path") == click.core.ParameterSource.DEFAULT
    if not os.path.exists(config_path) and not (init or default_path):
        raise click.ClickException(f"no such config file: {config_path} (use --init to create one)")
    try:
        cfg = _ensure_config(config_path)
        config_mod.check_data_dirs(cfg)
        host = host or cfg.get("server.host")
        port = port or cfg.get("server.port")
        url = f"http://{host}:{port}/"
        instance.acquire_data_lock(cfg.db_path, url)  # fd stays open through exec: held for life
        _check_lock_files(cfg)
        instance.check_port_free(host, port)
        if not os.path.exists(cfg.db_path) and os.path.exists(cfg.auth_db_path):
            click.echo(f"WARNING: {cfg.db_path} does not exist but {cfg.auth_db_path} does: starting with an "
                       "EMPTY metrics database (was monitor.db deleted or moved?)", err=True)
        schema.migrate(cfg.db_path)
        # auth.db created or upgraded here, once, before the worker processes all open it at
        # the same moment (switching a new file to WAL at once could fail "database is locked").
        try:
            _prepare_auth_db(cfg.auth_db_path)
        except sqlite3.Error as exc:
            raise click.ClickException(f"{cfg.auth_db_path}: {exc}")
        _private_files(cfg)
        if replication.enabled(cfg):
            replication.binary(cfg)  # a missing Litestream is one line now, not a dead job thread later
    except (config_mod.ConfigError, schema.SchemaTooNew, instance.InstanceError, instance.UnsafeFileError,
            replication.ReplicationError) as exc:
        raise click.ClickException(str(exc))
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or config_path}: {exc.strerror}")
    except sqlite3.Error as exc:
        raise click.ClickException(f"{cfg.db_path}: {exc}")
    _prepare_statistics(cfg.db_path)
    workers = workers or config_mod.worker_count(cfg)
    os.environ[config_mod.WORKERS_ENV] = str(workers)  # what each worker reads (config.worker_count)
    os.environ[config_mod.ENV_VAR] = cfg.path
    # uvicorn must not take the client address from X-Forwarded-For (it trusts 127.0.0.1 by
    # default): the hub reads auth.trusted_proxy_header itself, only when configured (see docs/security.md L4).
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    if workers > 1:
        leader.run_jobs_here(cfg)  # maintenance and alerts in this process, off the workers' GILs
    click.echo(f"Server Monitor hub on {url}" + (f" ({workers} worker processes)" if workers > 1 else ""), err=True)
    if replication.enabled(cfg):
        click.echo(f"Replicating {cfg.db_path} and {cfg.auth_db_path} to {cfg.get('replication.url')} "
                   f"with Litestream (every {cfg.get('replication.sync_interval') or '1s'})", err=True)
    # Deferred: only serve runs the ASGI server; the other subcommands start without loading it.
    import uvicorn

    # One process by default; with server.workers > 1 uvicorn binds the port here and starts
    # that many worker processes sharing it (restarting one that dies), see docs/architecture.md.
    # No access log: at fleet size it is one line per agent report (200 a second for 1,000
    # hosts) and cost the hub more CPU than the fleet document; a reverse proxy keeps access
    # logs (docs/operations.md). uvicorn picks httptools and uvloop (requirements.txt).
    # Connection limits (security review N3, server_monitor/serving/netguard.py, netproto.py): header and body deadlines
    # and connection caps in the HTTP protocol, uvicorn's limit_concurrency at the same cap, idle
    # keep-alive connections closed after 5 s. A SIGTERM waits server.shutdown_timeout_s for
    # running requests, then cancels them (I-10; serving/asgi.py's watchdog ends a worker whose SQL
    # thread still runs).
    limits = netguard.configure(cfg)
    # uvicorn re-raises the signals it caught once it has stopped, under the handlers it found: a
    # SIGTERM (run.sh sends one right after the terminal's Ctrl-C) then killed the process before
    # its atexit clean-up. Under this handler it raises SystemExit instead, and the clean-up runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run("server_monitor.serving.asgi:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level="info", access_log=False, lifespan="on", proxy_headers=False, forwarded_allow_ips="",
                    http="server_monitor.serving.netproto:GuardedHttpToolsProtocol",
                    limit_concurrency=limits["max_connections"], timeout_keep_alive=5,
                    timeout_graceful_shutdown=int(cfg.get("server.shutdown_timeout_s", 10)))
    finally:
        # The server has stopped (Ctrl-C, SIGTERM): the interpreter's exit (atexit: the /metrics
        # builder's shutdown, multiprocessing's clean-up) must not be cut short by the SIGTERM
        # run.sh sends right after the terminal's SIGINT, or the resource tracker reports
        # "leaked semaphore objects" (newcomer finding 14). SIGKILL still ends it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_on_sigterm(signum, frame):
    """SIGTERM handler of the hub's main process: exit 143 through SystemExit (atexit runs)."""
    raise SystemExit(128 + signal.SIGTERM)


@cli.command("init-config")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.option("--admin", default="admin", show_default=True, help="Admin username.")
@click.option("--host", default="127.0.0.1", show_default=True, help="server.host")
@click.option("--port", type=click.IntRange(1, 65535), default=5100, show_default=True, help="server.port")
@click.option("--data-dir", help="Directory for monitor.db and auth.db (default: next to the config).")
def init_config(config_path, admin, host, port, data_dir):
    """Write a new config with random secrets (refuses to overwrite).

    The admin password is $SERVER_MONITOR_INIT_PASSWORD when set, else generated and
    printed once.
    """
    if os.path.exists(config_path):
        raise click.ClickException(f"{config_path} exists; not overwriting")
    os.makedirs(os.path.dirname(os.path.abspath(config_path)), exist_ok=True)
    _ensure_config(config_path, admin, host=host, port=port, data_dir=data_dir,
                   password=os.environ.get("SERVER_MONITOR_INIT_PASSWORD") or None)


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
def migrate(config_path):
    """Create or upgrade monitor.db to the current schema version."""
    cfg = _load(config_path)
    try:
        config_mod.check_data_dirs(cfg)
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc))
    before = schema.migrate(cfg.db_path)
    click.echo(f"{cfg.db_path}: schema version {before} -> {schema.SCHEMA_VERSION}")


@cli.group()
def token():
    """Per-host agent tokens (stored hashed in auth.db)."""


def _token_db(config_path):
    return tokens, tokens.connect(_load(config_path).auth_db_path)


@token.command("issue")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.option("--server-id", type=int, help="Bind to this server (its machine id).")
@click.option("--machine-id", help="Bind to this machine id (/etc/machine-id of the host).")
@click.option("--label", help="Free text, e.g. the hostname.")
def token_issue(config_path, server_id, machine_id, label):
    """Issue a token that can only report for one host; prints it once."""
    if (server_id is None) == (machine_id is None):
        raise click.UsageError("give exactly one of --server-id or --machine-id")
    if server_id is not None:
        cfg = _load(config_path)
        row = sqlite3.connect(cfg.db_path).execute("SELECT machine_id, hostname FROM servers WHERE id = ?",
                                                    (server_id,)).fetchone()
        if row is None:
            raise click.ClickException(f"no server with id {server_id}")
        machine_id, label = row[0], label or row[1]
    tokens, conn = _token_db(config_path)
    token_id, value = tokens.issue(conn, machine_id, label)
    click.echo(f"token {token_id} for {machine_id} ({label or '-'}):")
    click.echo(value)


@token.command("list")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
def token_list(config_path):
    """List per-host tokens (never their values)."""
    tokens, conn = _token_db(config_path)
    for t in tokens.list_tokens(conn):
        state = "revoked" if t["revoked_at"] else "live"
        click.echo(f"{t['id']}\t{state}\t{t['machine_id']}\t{t['label'] or ''}")


@token.command("revoke")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.argument("token_id", type=int)
def token_revoke(config_path, token_id):
    """Revoke a per-host token; it stops working at once."""
    tokens, conn = _token_db(config_path)
    if not tokens.revoke(conn, token_id):
        raise click.ClickException(f"no live token {token_id}")
    click.echo(f"token {token_id} revoked")


@cli.group()
def sessions():
    """Login sessions (stored in auth.db as hashes of their ids)."""


def _utc(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch else "-"


def _accounts(config_path):
    cfg = _load(config_path)
    return cfg, Accounts(cfg.auth_db_path)


@sessions.command("list")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
def sessions_list(config_path):
    """List live sessions: user, created, last seen, expires (UTC), login address. No session ids."""
    _, accounts = _accounts(config_path)
    rows = accounts.live_sessions()
    click.echo("ref       username              source  created (UTC)        last seen (UTC)      expires (UTC)        client")
    for r in rows:
        click.echo(f"{r['ref']:<9} {r['username']:<21} {r['source']:<7} {_utc(r['created_at']):<20} "
                   f"{_utc(r['last_seen_at']):<20} {_utc(r['expires_at']):<20} {r['client'] or '-'}")
    click.echo(f"{len(rows)} live session{'' if len(rows) == 1 else 's'}", err=True)


@sessions.command("revoke")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.option("--all", "everyone", is_flag=True, help="End every session (everyone logs in again).")
@click.argument("username", required=False)
def sessions_revoke(config_path, everyone, username):
    """End every session of USERNAME (or of everyone with --all); takes effect on the next request,
    also on a running hub. Use it after a password leak or when someone leaves.

    USERNAME is matched without regard to case. Exits 1 for an unknown user, or when the user
    had no session to end."""
    if everyone == bool(username):
        raise click.UsageError("give a USERNAME or --all (not both)")
    cfg, accounts = _accounts(config_path)
    if everyone:
        count = accounts.end_all_sessions()
        click.echo(f"ended {count} session{'' if count == 1 else 's'} (all users)")
        return
    # Names are compared without case, as at login: the stored name is the canonical one (N11).
    admin = cfg.get("auth.username") or ""
    if username.lower() == admin.lower():
        username = admin
    else:
        user = accounts.user(username)
        if user is None:
            raise click.ClickException(f"no user {username!r} (nor is it auth.username); see: server-monitor sessions list")
        username = user["username"]
    count = accounts.end_sessions_of(username)
    if not count:
        raise click.ClickException(f"{username} has no live session: nothing ended")
    click.echo(f"ended {count} session{'' if count == 1 else 's'} of {username}")


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
def maintain(config_path):
    """Run one maintenance pass now (roll-ups, retention, WAL checkpoint)."""
    click.echo(Maintenance.from_config(_load(config_path)).run_once())


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.argument("destination")
def backup(config_path, destination):
    """Online backup of monitor.db and auth.db (SQLite backup API; safe while running).

    DESTINATION is a directory (created 0700 when missing); files are written as
    monitor-<UTC time>.db and auth-<UTC time>.db, created 0600 (never an existing file).
    """
    cfg = _load(config_path)
    os.makedirs(destination, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name, path in (("monitor", cfg.db_path), ("auth", cfg.auth_db_path)):
        if not os.path.exists(path):
            continue
        target = os.path.join(destination, f"{name}-{stamp}.db")
        # Created 0600 before a byte is written, and never an existing file or a planted link.
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            raise click.ClickException(f"{target} already exists; not overwritten")
        src = sqlite3.connect(path)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=4096)  # in steps, so writers are not held up for long
        finally:
            dst.close()
            src.close()
        os.chmod(target, 0o600)
        click.echo(target)


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Replace existing databases (kept as <name>.before-restore).")
@click.option("--timestamp", help="Restore to this RFC 3339 time (default: the latest replicated state).")
def restore(config_path, force, timestamp):
    """Rebuild monitor.db and auth.db from the Litestream replica (replication.url).

    The hub must be stopped. Each database is restored beside its path, checked with
    integrity_check, then moved into place. See docs/operations.md "Replication and restore".
    """
    os.umask(0o077)
    cfg = _load(config_path)
    if not cfg.get("replication.url"):
        raise click.ClickException("replication.url is not set in " + cfg.path + ": nothing to restore from")
    try:
        config_mod.check_data_dirs(cfg)
        instance.acquire_data_lock(cfg.db_path, "restore")  # no hub may run on these files meanwhile
        replication.restore(cfg, force=force, timestamp=timestamp, echo=lambda line: click.echo(line, err=True))
    except (config_mod.ConfigError, instance.InstanceError, replication.ReplicationError) as exc:
        raise click.ClickException(str(exc))
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or cfg.db_path}: {exc.strerror}")


@cli.command("hash-password")
@click.password_option()
def hash_password(password):
    """Print a PBKDF2 hash for auth.password_hash."""
    click.echo(make_hash(password))


def main():
    cli()


if __name__ == "__main__":
    main()
