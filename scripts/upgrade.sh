#!/usr/bin/env bash
# Upgrade an installed hub and/or agent to this checkout's version, with automatic rollback.
#
#   sudo scripts/upgrade.sh [server|agent|all] [--url HUB_URL] [--sha256 HEX] [--timeout SECONDS] [--dry-run] [--root DIR]
#
# server: builds the new release beside the current one, takes an online backup of the
#   databases, switches DIR/current to the new release and restarts (the hub migrates the
#   schema on start), then checks GET /-/health. If the check fails within --timeout
#   (default 60 s) it switches back, restores the backup (an older release refuses a newer
#   schema) and restarts the old version. Config and data are kept.
# agent: downloads the new zipapp from the hub (--url, default: the server_url in
#   agent_config.yaml), keeps the old one, restarts, checks the unit is active, else
#   restores the old zipapp; --sha256 HEX pins the new zipapp's checksum (plain http: I-8).
#   With no argument, upgrades whatever is installed.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/_install_common.sh
. "$SRC/scripts/_install_common.sh"
# shellcheck source=scripts/_release.sh
. "$SRC/scripts/_release.sh"

WHAT=""
HUB_URL=""
PIN_SHA256=""
TIMEOUT=60
while [ $# -gt 0 ]; do
  case "$1" in
    server|agent|all) WHAT=$1; shift ;;
    --url) HUB_URL=${2%/}; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --sha256) PIN_SHA256=$(printf '%s' "$2" | tr 'A-F' 'a-f'); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -z "$PIN_SHA256" ] || [[ "$PIN_SHA256" =~ ^[0-9a-f]{64}$ ]] || die "--sha256 needs the 64 hex digits of the zipapp's SHA-256"
need_root
PREFIX="$ROOT$SERVER_PREFIX"
if [ -z "$WHAT" ]; then
  if [ -e "$PREFIX/current" ] && [ -f "$ROOT$AGENT_UNIT" ]; then WHAT=all
  elif [ -e "$PREFIX/current" ]; then WHAT=server
  elif [ -f "$ROOT$AGENT_UNIT" ]; then WHAT=agent
  else die "nothing installed under ${ROOT:-/}"
  fi
fi

# health_ok PORT: poll /-/health until it answers 200 or TIMEOUT passes
health_ok() {
  local port=$1 deadline=$((SECONDS + TIMEOUT))
  while [ $SECONDS -lt "$deadline" ]; do
    if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/-/health"; then
      return 0
    fi
    sleep 1
  done
  return 1
}

upgrade_server() {
  [ -e "$PREFIX/current" ] || die "no hub installed in $PREFIX"
  local old new config port backup version
  old=$(readlink -f "$PREFIX/current")
  config="$ROOT$SERVER_CONFIG_DIR/config.yaml"
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/server_monitor/__init__.py")
  new="$PREFIX/releases/$version-$(date -u +%Y%m%dT%H%M%SZ)"
  say "Upgrading the hub: $old -> $new"
  build_release "$SRC" "$new"
  backup="$ROOT$SERVER_DATA_DIR/backups/pre-upgrade-$(date -u +%Y%m%dT%H%M%SZ)"
  run "$old/.venv/bin/server-monitor" backup -c "$config" "$backup"
  port=$("$old/.venv/bin/python" -c "import sys, importlib, importlib.util; config = importlib.import_module('server_monitor.core.config' if importlib.util.find_spec('server_monitor.core') else 'server_monitor.config'); print(config.load(sys.argv[1]).get('server.port'))" "$config")
  run systemctl stop server-monitor.service
  switch_current "$PREFIX" "$new"
  run systemctl start server-monitor.service
  if [ "$DRY_RUN" = 1 ] || health_ok "$port"; then
    say "Hub upgraded to $version; old release kept in $old"
    return 0
  fi
  say "Health check failed: rolling back to $old"
  run systemctl stop server-monitor.service
  switch_current "$PREFIX" "$old"
  restore_databases "$config" "$backup" "$old"
  run systemctl start server-monitor.service
  health_ok "$port" || say "warning: the old release does not answer /-/health either"
  die "upgrade failed; rolled back to $old (the failed release is still in $new)"
}

# restore_databases CONFIG BACKUP_DIR RELEASE: put the pre-upgrade copies back
restore_databases() {
  local config=$1 backup=$2 release=$3 db auth name
  read -r db auth < <("$release/.venv/bin/python" -c "import sys, importlib, importlib.util; c = importlib.import_module('server_monitor.core.config' if importlib.util.find_spec('server_monitor.core') else 'server_monitor.config'); x = c.load(sys.argv[1]); print(x.db_path, x.auth_db_path)" "$config")
  for name in monitor auth; do
    local target=$db
    [ "$name" = auth ] && target=$auth
    local copy
    copy=$(find "$backup" -maxdepth 1 -type f -name "$name-*.db" | sort | tail -n 1)
    [ -n "$copy" ] || continue
    # As root in a directory the service user owns: never follow a link planted there (I-9).
    # --remove-destination replaces a link at $target instead of writing through it; chown -h
    # changes a link itself, never its target.
    run rm -f "$target-wal" "$target-shm"
    run cp --no-dereference --remove-destination "$copy" "$target"
    run chown -h "$SERVER_USER:$SERVER_USER" "$target"
  done
}

upgrade_agent() {
  local config="$ROOT$AGENT_CONFIG" pyz="$ROOT$AGENT_PREFIX/server-monitor-agent.pyz" arch url tmp
  [ -f "$pyz" ] || die "no agent installed in $ROOT$AGENT_PREFIX"
  url=$HUB_URL
  if [ -z "$url" ]; then
    url=$(sed -n 's/^server_url: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$config")
  fi
  [ -n "$url" ] || die "no hub URL: give --url"
  case "$(uname -m)" in x86_64|amd64) arch=x86_64 ;; aarch64|arm64) arch=aarch64 ;; *) die "unsupported CPU" ;; esac
  tmp=$(mktemp -d)
  run curl -fsSL "$url/static/agent/server-monitor-agent-$arch.pyz" -o "$tmp/agent.pyz"
  run curl -fsSL "$url/static/agent/server-monitor-agent-$arch.pyz.sha256" -o "$tmp/agent.sha256"
  if [ "$DRY_RUN" != 1 ]; then
    [ "$(cut -d' ' -f1 "$tmp/agent.sha256")" = "$(sha256sum "$tmp/agent.pyz" | cut -d' ' -f1)" ] || die "checksum mismatch"
    if [ -n "$PIN_SHA256" ]; then
      [ "$(sha256sum "$tmp/agent.pyz" | cut -d' ' -f1)" = "$PIN_SHA256" ] || die "the new agent does not match --sha256"
    fi
  fi
  if [ -z "$PIN_SHA256" ] && [[ "$url" == http://* ]]; then
    say "warning: plain http and no --sha256: the new agent (run as root) was not pinned (docs/security.md I-8)"
  fi
  run cp -p "$pyz" "$pyz.previous"
  run install -m 0755 "$tmp/agent.pyz" "$pyz.new"
  run mv -f "$pyz.new" "$pyz"
  run systemctl restart server-monitor-agent.service
  sleep "${SM_AGENT_SETTLE:-5}"
  if [ "$DRY_RUN" = 1 ] || systemctl is-active --quiet server-monitor-agent.service; then
    say "Agent upgraded from $url"
    rm -rf "$tmp"
    return 0
  fi
  say "The agent does not stay up: restoring the previous zipapp"
  run mv -f "$pyz.previous" "$pyz"
  run systemctl restart server-monitor-agent.service
  rm -rf "$tmp"
  die "agent upgrade failed; rolled back"
}

case "$WHAT" in
  server) upgrade_server ;;
  agent) upgrade_agent ;;
  all) upgrade_server; upgrade_agent ;;
esac
