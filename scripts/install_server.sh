#!/usr/bin/env bash
# Install the Server Monitor hub as a systemd service, from this checkout.
#
#   sudo scripts/install_server.sh [--prefix DIR] [--port N] [--listen ADDR] [--admin NAME] [--dry-run] [--root DIR]
#
# * the hub listens on 127.0.0.1 (--listen, default): put the reverse proxy whose config is
#   written to /etc/server-monitor/nginx-server-monitor.conf in front (TLS, header and body
#   timeouts, per-client connection limits; docs/operations.md). --listen 0.0.0.0 faces the
#   network directly, with only the hub's own connection limits (server.header_timeout_s ...).
# * code in DIR/releases/<version>-<time> with its own venv (never pip into the system
#   Python, so PEP 668 distributions work), DIR/current pointing at it (default DIR:
#   /opt/server-monitor); air-gapped: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels
# * config /etc/server-monitor/config.yaml (0600, random secret_key and agent token; the
#   admin password is asked on a TTY, otherwise generated and printed once)
# * data in /var/lib/server-monitor, owned by the system user server-monitor
# * unit server-monitor.service (hardened), enabled and started
# * the agent zipapps and install_agent.sh, served by the hub under /static/agent/
# Re-running keeps the existing config and data. --root prefixes every path (tests).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/_install_common.sh
. "$SRC/scripts/_install_common.sh"

PORT=5100
LISTEN=127.0.0.1
ADMIN="admin"
PREFIX=$SERVER_PREFIX
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --listen) LISTEN=$2; shift 2 ;;
    --admin) ADMIN=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
need_root
case "$PORT" in ''|*[!0-9]*) die "--port needs a number" ;; esac

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/server_monitor/__init__.py")
RELEASE="$ROOT$PREFIX/releases/$VERSION-$(date -u +%Y%m%dT%H%M%SZ)"
CONFIG="$ROOT$SERVER_CONFIG_DIR/config.yaml"
DATA="$ROOT$SERVER_DATA_DIR"

# shellcheck source=scripts/_release.sh
. "$SRC/scripts/_release.sh"

say "Installing Server Monitor $VERSION into $RELEASE"
if ! id "$SERVER_USER" >/dev/null 2>&1; then
  run useradd --system --home-dir "$SERVER_DATA_DIR" --shell /usr/sbin/nologin "$SERVER_USER"
fi
build_release "$SRC" "$RELEASE"
run mkdir -p "$DATA" "$ROOT$SERVER_CONFIG_DIR"
run chmod 0750 "$DATA"
run chown "$SERVER_USER:$SERVER_USER" "$DATA"
# The agent zipapps are built into the release (or copied from $SM_AGENT_DIST).

if [ -f "$CONFIG" ]; then
  say "Keeping the existing $CONFIG"
else
  PASSWORD=""
  if [ -t 0 ] && [ "$DRY_RUN" != 1 ]; then
    read -r -s -p "Admin password for '$ADMIN' (empty: generate one): " PASSWORD; echo >&2
    if [ -n "$PASSWORD" ]; then
      read -r -s -p "Again: " AGAIN; echo >&2
      [ "$PASSWORD" = "$AGAIN" ] || die "the passwords differ"
    fi
  fi
  # The password reaches the tool through its environment, never its command line.
  SERVER_MONITOR_INIT_PASSWORD="$PASSWORD" run "$RELEASE/.venv/bin/server-monitor" init-config -c "$CONFIG" \
    --admin "$ADMIN" --port "$PORT" --host "$LISTEN" --data-dir "$DATA"
  run chown "$SERVER_USER:$SERVER_USER" "$CONFIG"
  run chmod 0600 "$CONFIG"
fi

# The reverse proxy in front of a loopback hub (security review N3): nginx, to adapt (server_name,
# certificates) and link into /etc/nginx/sites-enabled/. Rewritten on every install.
sed "s/127\.0\.0\.1:5100/127.0.0.1:$PORT/" "$SRC/scripts/nginx-server-monitor.conf" \
  | write_file "$ROOT$SERVER_CONFIG_DIR/nginx-server-monitor.conf" 0644

switch_current "$ROOT$PREFIX" "$RELEASE"
write_file "$ROOT$SERVER_UNIT" 0644 <<EOF
[Unit]
Description=Server Monitor hub (Datasette + ingest)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$SERVER_USER
Group=$SERVER_USER
ExecStart=$PREFIX/current/.venv/bin/server-monitor serve -c $SERVER_CONFIG_DIR/config.yaml
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
ReadWritePaths=$SERVER_DATA_DIR

[Install]
WantedBy=multi-user.target
EOF
systemd_enable_restart server-monitor.service

HOST=$(hostname -f 2>/dev/null || hostname)
say ""
BOUND=""
if [ -f "$CONFIG" ]; then BOUND=$(sed -n 's/^  host: *//p' "$CONFIG" | head -1 | tr -d "\"'"); fi
case "${BOUND:-$LISTEN}" in
  127.*|localhost|::1)
    say "Server Monitor listens on http://${BOUND:-$LISTEN}:$PORT/ only (loopback). Agents and browsers reach it"
    say "through the reverse proxy: adapt $SERVER_CONFIG_DIR/nginx-server-monitor.conf (docs/operations.md)." ;;
  *)
    say "Server Monitor is at http://$HOST:$PORT/, facing the network directly (put HTTPS in front:"
    say "$SERVER_CONFIG_DIR/nginx-server-monitor.conf, docs/operations.md)." ;;
esac
say "Install an agent on each GPU host (the token is in $SERVER_CONFIG_DIR/config.yaml, agent.token):"
say "  curl -fsSL http://$HOST:$PORT/static/agent/install_agent.sh -o install_agent.sh"
say "  sudo bash install_agent.sh --url http://$HOST:$PORT --token-file /path/to/token --sha256 HASH"
say "with HASH the SHA-256 of the zipapp for the host's CPU (pins the agent over plain http, docs/security.md I-8):"
for sum in "$RELEASE"/static/agent/*.pyz.sha256; do
  if [ -f "$sum" ]; then say "  $(basename "${sum%.sha256}"): $(cut -d' ' -f1 "$sum")"; fi
done
