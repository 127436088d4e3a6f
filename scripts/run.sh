#!/usr/bin/env bash
# Run Server Monitor from a checkout: the hub on 127.0.0.1:5100 plus an agent for this machine.
#
#   scripts/run.sh [--config PATH] [--host H] [--port N] [--no-agent] [--demo]
#
# First run: creates .venv, installs the pinned requirements, writes config.yaml with random
# secrets and prints the admin login once. --demo adds agents named demo-* whose GPUs come
# from the bundled real nvidia-smi captures (through tests/fake_nvidia_smi.py).
# Everything runs in the foreground; Ctrl-C or SIGTERM stops all of it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG="$ROOT/config.yaml"
HOST=""
PORT=""
AGENT=1
DEMO=0

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --host) HOST=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --no-agent) AGENT=0; shift ;;
    --demo) DEMO=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# shellcheck source=scripts/_venv.sh
. "$ROOT/scripts/_venv.sh"
ensure_venv "$ROOT" "$ROOT/requirements.txt"
PY="$ROOT/.venv/bin/python"

CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
if [ ! -f "$CONFIG" ]; then
  "$PY" -m server_monitor init-config -c "$CONFIG"
fi
# host, port and agent token as the hub will use them
read -r CFG_HOST CFG_PORT TOKEN < <("$PY" - "$CONFIG" <<'PYEOF'
import sys
from server_monitor import config
c = config.load(sys.argv[1])
print(c.get("server.host"), c.get("server.port"), c.get("agent.token"))
PYEOF
)
HOST=${HOST:-$CFG_HOST}
PORT=${PORT:-$CFG_PORT}
URL_HOST=$HOST
if [ "$URL_HOST" = "0.0.0.0" ] || [ "$URL_HOST" = "::" ]; then URL_HOST=127.0.0.1; fi
URL="http://$URL_HOST:$PORT"

RUN_DIR="$ROOT/.run"
mkdir -p "$RUN_DIR"
chmod 700 "$RUN_DIR"
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  if [ ${#PIDS[@]} -gt 0 ]; then
    kill "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PY" -m server_monitor serve -c "$CONFIG" --host "$HOST" --port "$PORT" &
PIDS+=($!)

for _ in $(seq 1 100); do
  if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$URL/login" 2>/dev/null; then
    break
  fi
  if ! kill -0 "${PIDS[0]}" 2>/dev/null; then echo "hub failed to start" >&2; exit 1; fi
  sleep 0.2
done

start_agent() {  # name, then KEY=VALUE environment for the fake nvidia-smi
  local name=$1; shift
  local cfg="$RUN_DIR/agent-$name.yaml"
  umask 077
  {
    echo "server_url: $URL"
    echo "token: $TOKEN"
    echo "interval: 30"
    echo "spool_dir: $RUN_DIR/spool-$name"
    if [ "$name" != "local" ]; then
      echo "hostname: $name"
      echo "machine_id: $name"
      echo "nvidia_smi: $ROOT/tests/fake_nvidia_smi.py"
    fi
  } > "$cfg"
  env "$@" "$PY" "$ROOT/agent.py" -c "$cfg" &
  PIDS+=($!)
}

if [ "$AGENT" = 1 ]; then
  start_agent local
fi
if [ "$DEMO" = 1 ]; then
  common=(FAKE_NVSMI_STATE=cycle FAKE_NVSMI_PID=parent)
  start_agent demo-h100-a "${common[@]}" FAKE_NVSMI_CAPTURE=h100-80gb FAKE_NVSMI_GPUS=8 FAKE_NVSMI_SEED=a
  start_agent demo-h100-b "${common[@]}" FAKE_NVSMI_CAPTURE=h100-80gb FAKE_NVSMI_GPUS=8 FAKE_NVSMI_SEED=b FAKE_NVSMI_MODE=lost:5
  start_agent demo-h200 "${common[@]}" FAKE_NVSMI_CAPTURE=h200 FAKE_NVSMI_GPUS=4 FAKE_NVSMI_SEED=c
  start_agent demo-h100-mig "${common[@]}" FAKE_NVSMI_CAPTURE=h100-mig FAKE_NVSMI_GPUS=2 FAKE_NVSMI_SEED=d
  start_agent demo-rtx4080-ws "${common[@]}" FAKE_NVSMI_CAPTURE=rtx-4080 FAKE_NVSMI_GPUS=1 FAKE_NVSMI_SEED=e
  start_agent demo-driver-broken "${common[@]}" FAKE_NVSMI_MODE=driver_mismatch
fi

echo "Server Monitor is running at $URL/ (Ctrl-C stops it)." >&2
wait -n "${PIDS[@]}" || true
echo "a process exited; stopping" >&2
