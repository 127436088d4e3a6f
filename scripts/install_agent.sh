#!/usr/bin/env bash
# Install the Server Monitor agent on a GPU host, fetching it from the hub.
#
#   curl -fsSL http://HUB:5100/static/agent/install_agent.sh -o install_agent.sh
#   sudo bash install_agent.sh --url http://HUB:5100 --token-file /root/sm-token [--interval N]
#
# Needs only python3 (3.9+) and curl: the agent is a zipapp carrying its dependencies.
# Options: --token-file FILE (or --token TOKEN, which stays in your shell history; with
# neither, the token is asked for), --interval N, --ca-file PEM (private CA for an https
# hub), --sha256 HEX (the zipapp's checksum as install_server.sh printed it: pins the agent
# against a man-in-the-middle on plain http), --force (replace an existing
# agent_config.yaml), --dry-run, --root DIR (tests).
# Installs /opt/server-monitor-agent/server-monitor-agent.pyz (checksum-verified),
# /etc/server-monitor/agent_config.yaml (0600) and server-monitor-agent.service (root,
# restarts on failure), enabled and started.
set -euo pipefail

# Self-contained on purpose: this file is downloaded and run alone on GPU hosts.
ROOT=${SM_ROOT:-}
DRY_RUN=${DRY_RUN:-0}
AGENT_PREFIX=/opt/server-monitor-agent
AGENT_STATE_DIR=/var/lib/server-monitor-agent
AGENT_CONFIG=/etc/server-monitor/agent_config.yaml
AGENT_UNIT=/etc/systemd/system/server-monitor-agent.service

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
run() { if [ "$DRY_RUN" = 1 ]; then say "+ $*"; else "$@"; fi; }
write_file() {  # write_file PATH MODE < content
  local path=$1 mode=$2 tmp
  if [ "$DRY_RUN" = 1 ]; then say "+ write $path (mode $mode)"; cat > /dev/null; return 0; fi
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$path.XXXXXX")
  cat > "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

URL=""
TOKEN=""
TOKEN_FILE=""
INTERVAL=30
CA_FILE=""
PIN_SHA256=""
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --url) URL=${2%/}; shift 2 ;;
    --token) TOKEN=$2; shift 2; say "warning: --token leaves the token in your shell history; prefer --token-file" ;;
    --token-file) TOKEN_FILE=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --ca-file) CA_FILE=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --root) ROOT=$2; shift 2 ;;
    --sha256) PIN_SHA256=$(printf '%s' "$2" | tr 'A-F' 'a-f'); shift 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
[ -n "$URL" ] || die "--url is required"
case "$URL" in http://*|https://*) ;; *) die "--url must start with http:// or https://" ;; esac
[ -z "$PIN_SHA256" ] || [[ "$PIN_SHA256" =~ ^[0-9a-f]{64}$ ]] || die "--sha256 needs the 64 hex digits of the zipapp's SHA-256"
if [ -z "$PIN_SHA256" ] && [[ "$URL" == http://* ]]; then
  say "warning: plain http and no --sha256: anyone on the path can replace the agent, which runs as root." \
      "Pin it with --sha256 (install_server.sh prints it) or use https (docs/security.md I-8)"
fi
case "$INTERVAL" in ''|*[!0-9]*) die "--interval needs a whole number of seconds" ;; esac
if [ -z "$ROOT" ] && [ "$DRY_RUN" != 1 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo bash $0 ...), or pass --dry-run"
fi

PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] || die "python3 is required (3.9 or newer)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 is older than 3.9"

case "$(uname -m)" in
  x86_64|amd64) ARCH=x86_64 ;;
  aarch64|arm64) ARCH=aarch64 ;;
  *) die "no agent build for $(uname -m)" ;;
esac

CONFIG="$ROOT$AGENT_CONFIG"
if [ -f "$CONFIG" ] && [ "$FORCE" != 1 ]; then
  say "Keeping the existing $CONFIG (--force replaces it)"
  WRITE_CONFIG=0
else
  WRITE_CONFIG=1
  if [ -n "$TOKEN_FILE" ]; then
    TOKEN=$(tr -d ' \r\n' < "$TOKEN_FILE")
  elif [ -z "$TOKEN" ]; then
    [ -t 0 ] || die "give --token-file FILE (or run interactively to type the token)"
    read -r -s -p "Agent token (agent.token in the hub's config.yaml): " TOKEN; echo >&2
  fi
  [ -n "$TOKEN" ] || die "the token is empty"
fi

CURL=(curl -fsSL --retry 3)
[ -z "$CA_FILE" ] || CURL+=(--cacert "$CA_FILE")
PYZ="server-monitor-agent-$ARCH.pyz"
DEST="$ROOT$AGENT_PREFIX"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
say "Downloading $URL/static/agent/$PYZ"
run "${CURL[@]}" "$URL/static/agent/$PYZ" -o "$TMP/$PYZ"
run "${CURL[@]}" "$URL/static/agent/$PYZ.sha256" -o "$TMP/$PYZ.sha256"
if [ "$DRY_RUN" != 1 ]; then
  (cd "$TMP" && sha256sum -c --quiet "$PYZ.sha256") || die "checksum mismatch for $PYZ"
  if [ -n "$PIN_SHA256" ]; then  # the hub's .sha256 came over the same connection: only the pin is independent
    GOT=$(sha256sum "$TMP/$PYZ" | cut -d' ' -f1)
    [ "$GOT" = "$PIN_SHA256" ] || die "$PYZ from $URL has SHA-256 $GOT, which does not match --sha256 $PIN_SHA256; not installed"
  fi
fi
run mkdir -p "$DEST" "$ROOT$AGENT_STATE_DIR"
run install -m 0755 "$TMP/$PYZ" "$DEST/server-monitor-agent.pyz.new"
run mv -f "$DEST/server-monitor-agent.pyz.new" "$DEST/server-monitor-agent.pyz"

if [ "$WRITE_CONFIG" = 1 ]; then
  {
    echo "# Server Monitor agent (written by install_agent.sh)"
    echo "server_url: \"$URL\""
    echo "token: \"$TOKEN\""
    echo "interval: $INTERVAL"
    echo "spool_dir: $ROOT$AGENT_STATE_DIR/spool"
    [ -z "$CA_FILE" ] || echo "ca_file: \"$CA_FILE\""
  } | write_file "$CONFIG" 0600
fi

write_file "$ROOT$AGENT_UNIT" 0644 <<EOF
[Unit]
Description=Server Monitor agent (reports this host's metrics and GPUs)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=root
Environment=SHIV_ROOT=$ROOT$AGENT_STATE_DIR/shiv
ExecStart=$PYTHON $AGENT_PREFIX/server-monitor-agent.pyz -c $AGENT_CONFIG
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
run systemctl daemon-reload
run systemctl enable server-monitor-agent.service
run systemctl restart server-monitor-agent.service
say "Agent installed; it reports to $URL every ${INTERVAL}s (journalctl -u server-monitor-agent)."
