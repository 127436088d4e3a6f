# shellcheck shell=bash disable=SC2034
# Shared by install_server.sh, upgrade.sh and uninstall.sh (install_agent.sh stands alone).
#
# ROOT (env SM_ROOT or --root) prefixes every system path, so tests can install into a
# temporary directory with fake systemctl/useradd/chown on PATH. DRY_RUN=1 prints every
# change instead of making it.

ROOT=${SM_ROOT:-}
DRY_RUN=${DRY_RUN:-0}

SERVER_PREFIX=/opt/server-monitor
SERVER_CONFIG_DIR=/etc/server-monitor
SERVER_DATA_DIR=/var/lib/server-monitor
SERVER_UNIT=/etc/systemd/system/server-monitor.service
SERVER_USER=server-monitor
# The agent's paths; install_agent.sh repeats them because it runs alone on GPU hosts.
AGENT_PREFIX=/opt/server-monitor-agent
AGENT_STATE_DIR=/var/lib/server-monitor-agent
AGENT_CONFIG=/etc/server-monitor/agent_config.yaml
AGENT_UNIT=/etc/systemd/system/server-monitor-agent.service

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# run CMD...: execute, or print it under --dry-run
run() {
  if [ "$DRY_RUN" = 1 ]; then
    say "+ $*"
  else
    "$@"
  fi
}

# write_file PATH MODE: content from stdin, written atomically (temp file + rename)
write_file() {
  local path=$1 mode=$2 tmp
  if [ "$DRY_RUN" = 1 ]; then
    say "+ write $path (mode $mode):"
    sed 's/^/    /' >&2
    return 0
  fi
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$path.XXXXXX")
  cat > "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

need_root() {
  if [ -z "$ROOT" ] && [ "$DRY_RUN" != 1 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 ...), or pass --dry-run to see what it would do"
  fi
}

# systemd_reload_enable UNIT: daemon-reload, enable and (re)start
systemd_enable_restart() {
  run systemctl daemon-reload
  run systemctl enable "$1"
  run systemctl restart "$1"
}
