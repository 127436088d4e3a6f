"""``server-monitor``: run and manage the hub (a thin layer over ``datasette serve``)."""

import os
import sys

import click

from . import config as config_mod
from . import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_config(path, username="admin"):
    """Load ``path``, creating it with random secrets first when missing."""
    if not os.path.exists(path):
        cfg, password = config_mod.create(path, username=username)
        click.echo(f"Created {path} with new random secrets (mode 0600).", err=True)
        click.echo("Admin login (shown once; the file stores only its hash):", err=True)
        click.echo(f"    username: {username}", err=True)
        click.echo(f"    password: {password}", err=True)
        return cfg
    return config_mod.load(path)


def datasette_args(cfg, host=None, port=None):
    """The ``datasette serve`` argument list for a loaded config."""
    return [
        "datasette", "serve", cfg.db_path,
        "--metadata", os.path.join(ROOT, "metadata.yml"),
        "--plugins-dir", os.path.join(ROOT, "plugins"),
        "--template-dir", os.path.join(ROOT, "templates"),
        "--static", "static:" + os.path.join(ROOT, "static"),
        "--host", host or cfg.get("server.host"),
        "--port", str(port or cfg.get("server.port")),
        "--setting", "max_returned_rows", "1000",
        "--setting", "sql_time_limit_ms", "5000",
    ]


@click.group()
@click.version_option(package_name=None, version=__import__("server_monitor").__version__)
def cli():
    """Server Monitor hub."""


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True, help="Hub config file.")
@click.option("--host", default=None, help="Listen address (default: server.host).")
@click.option("--port", type=int, default=None, help="Listen port (default: server.port).")
def serve(config_path, host, port):
    """Create config and database if needed, then run Datasette with the hub plugins."""
    try:
        cfg = _ensure_config(config_path)
        schema.migrate(cfg.db_path)
    except (config_mod.ConfigError, schema.SchemaTooNew) as exc:
        raise click.ClickException(str(exc))
    env = dict(os.environ)
    env[config_mod.ENV_VAR] = cfg.path
    env["DATASETTE_SECRET"] = cfg.get("server.secret_key")
    args = datasette_args(cfg, host, port)
    click.echo(f"Server Monitor hub on http://{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}/", err=True)
    datasette = os.path.join(os.path.dirname(sys.executable), "datasette")
    os.execve(datasette, args, env)


@cli.command("init-config")
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
@click.option("--admin", default="admin", show_default=True, help="Admin username.")
def init_config(config_path, admin):
    """Write a new config with random secrets (refuses to overwrite)."""
    if os.path.exists(config_path):
        raise click.ClickException(f"{config_path} exists; not overwriting")
    _ensure_config(config_path, admin)


@cli.command()
@click.option("-c", "--config", "config_path", default="config.yaml", show_default=True)
def migrate(config_path):
    """Create or upgrade monitor.db to the current schema version."""
    cfg = config_mod.load(config_path)
    before = schema.migrate(cfg.db_path)
    click.echo(f"{cfg.db_path}: schema version {before} -> {schema.SCHEMA_VERSION}")


@cli.command("hash-password")
@click.password_option()
def hash_password(password):
    """Print a PBKDF2 hash for auth.password_hash."""
    from datasette_auth_passwords.utils import hash_password as make_hash

    click.echo(make_hash(password))


def main():
    cli()


if __name__ == "__main__":
    main()
