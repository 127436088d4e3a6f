#!/usr/bin/env bash
# Remove Server Monitor from this machine.
#
#   sudo scripts/uninstall.sh [server|agent|all] [--purge] [--dry-run] [--root DIR]
#
# Stops and removes the systemd units and the code (/opt/server-monitor,
# /opt/server-monitor-agent). Configuration (/etc/server-monitor) and data
# (/var/lib/server-monitor, the agent's spool) are kept unless --purge is given.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/_install_common.sh
. "$SRC/scripts/_install_common.sh"

WHAT=all
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    server|agent|all) WHAT=$1; shift ;;
    --purge) PURGE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
need_root

remove_unit() {  # remove_unit NAME PATH
  if [ -f "$2" ]; then
    run systemctl disable --now "$1" || true
    run rm -f "$2"
    run systemctl daemon-reload
  fi
}

if [ "$WHAT" = server ] || [ "$WHAT" = all ]; then
  remove_unit server-monitor.service "$ROOT$SERVER_UNIT"
  run rm -rf "$ROOT$SERVER_PREFIX"
  if [ "$PURGE" = 1 ]; then
    run rm -rf "$ROOT$SERVER_DATA_DIR" "$ROOT$SERVER_CONFIG_DIR/config.yaml"
    if id "$SERVER_USER" >/dev/null 2>&1; then run userdel "$SERVER_USER" || true; fi
  fi
fi
if [ "$WHAT" = agent ] || [ "$WHAT" = all ]; then
  remove_unit server-monitor-agent.service "$ROOT$AGENT_UNIT"
  run rm -rf "$ROOT$AGENT_PREFIX"
  if [ "$PURGE" = 1 ]; then
    run rm -rf "$ROOT$AGENT_STATE_DIR" "$ROOT$AGENT_CONFIG"
  fi
fi
if [ "$PURGE" = 1 ] && [ -d "$ROOT$SERVER_CONFIG_DIR" ]; then
  run rmdir "$ROOT$SERVER_CONFIG_DIR" 2>/dev/null || true
fi
say "Removed ($WHAT)$([ "$PURGE" = 1 ] && echo ', configuration and data too' || echo '; configuration and data kept')."
