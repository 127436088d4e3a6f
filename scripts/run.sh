#!/usr/bin/env bash
# Run Server Monitor from a checkout: the hub on 127.0.0.1:5100 plus an agent for this machine.
#
#   scripts/run.sh [--config PATH] [--init] [--host H] [--port N] [--no-agent] [--demo]
#
# First run: creates .venv, installs the pinned requirements, writes config.yaml with random
# secrets and prints the admin login once (a --config path elsewhere is created only with --init).
# --demo runs a separate demo hub instead: its own config and data in .run/demo/ (never your
# config.yaml or monitor.db; the demo database is recreated on each --demo start), ~25 simulated
# hosts with 24 h of history fed through POST /api/report by scripts/demo_feed.py, plus two real
# agents on a fake nvidia-smi. Everything runs in the foreground: an agent that exits is
# named and restarted with backoff; if the hub exits, everything stops with a non-zero status.
# Ctrl-C or SIGTERM stops all of it. A second run on the same database or port is refused.
set -euo pipefail
umask 077  # databases, logs and spools readable by this user only (security review L8)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG="$ROOT/config.yaml"
CONFIG_GIVEN=0
INIT=0
HOST=""
PORT=""
AGENT=1
DEMO=0

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 2; }
need_value() { [ "$2" -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --config) need_value "$1" $#; CONFIG=$2; CONFIG_GIVEN=1; shift 2 ;;
    --init) INIT=1; shift ;;
    --host) need_value "$1" $#; HOST=$2; shift 2 ;;
    --port) need_value "$1" $#; PORT=$2; shift 2 ;;
    --no-agent) AGENT=0; shift ;;
    --demo) DEMO=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -n "$PORT" ]; then
  case "$PORT" in
    *[!0-9]*) die "--port must be a number 1..65535, not '$PORT'" ;;
  esac
  if [ ${#PORT} -gt 5 ] || [ "$((10#$PORT))" -lt 1 ] || [ "$((10#$PORT))" -gt 65535 ]; then
    die "--port must be a number 1..65535, not '$PORT'"
  fi
  PORT=$((10#$PORT))
fi
DEMO_DIR="$ROOT/.run/demo"
if [ "$DEMO" = 1 ]; then
  # The demo never touches the real config or database: everything lives in .run/demo/.
  [ "$CONFIG_GIVEN" = 0 ] || die "--demo uses its own config in $DEMO_DIR; drop --config"
  AGENT=0
  CONFIG="$DEMO_DIR/config.yaml"
  mkdir -p "$DEMO_DIR"
  chmod 700 "$ROOT/.run" "$DEMO_DIR"
fi
if [ ! -f "$CONFIG" ] && [ "$DEMO" = 0 ]; then
  # A typo in --config must not silently start a second installation with new secrets.
  if [ "$CONFIG_GIVEN" = 1 ] && [ "$INIT" = 0 ]; then
    die "no such config file: $CONFIG (use --init to create one)"
  fi
  mkdir -p "$(dirname "$CONFIG")"
fi
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")

# shellcheck source=scripts/_venv.sh
. "$ROOT/scripts/_venv.sh"
ensure_venv "$ROOT" "$ROOT/requirements.txt"
PY="$ROOT/.venv/bin/python"

if [ "$DEMO" = 1 ]; then
  if [ ! -f "$CONFIG" ]; then
    (umask 077; "$PY" -c "import secrets; print(secrets.token_urlsafe(12))" > "$DEMO_DIR/admin-password")
    SERVER_MONITOR_INIT_PASSWORD=$(cat "$DEMO_DIR/admin-password") \
      "$PY" -m server_monitor init-config -c "$CONFIG" --data-dir "$DEMO_DIR" >/dev/null 2>&1 \
      || die "could not create the demo config in $DEMO_DIR"
  fi
  # A fresh demo each time: its metrics and its auth database (demo sessions) start empty;
  # never under a demo hub that is still running (it holds the lock next to monitor.db).
  "$PY" - "$DEMO_DIR/monitor.db" <<'PYEOF' || die "a demo hub is already running on $DEMO_DIR; stop it first"
import sys
from server_monitor.storage import instance
try:
    instance.acquire_data_lock(sys.argv[1], "run.sh --demo (resetting)")
except instance.InstanceError:
    sys.exit(1)
PYEOF
  rm -f "$DEMO_DIR"/monitor.db "$DEMO_DIR"/monitor.db-wal "$DEMO_DIR"/monitor.db-shm \
    "$DEMO_DIR"/auth.db "$DEMO_DIR"/auth.db-wal "$DEMO_DIR"/auth.db-shm
  rm -rf "$DEMO_DIR"/.run/spool-*
fi
if [ ! -f "$CONFIG" ]; then
  "$PY" -m server_monitor init-config -c "$CONFIG"
fi
# host, port and agent token as the hub will use them; a bad config is one line, no traceback
CFG_LINE=$("$PY" - "$CONFIG" <<'PYEOF'
import sys
from server_monitor.core import config
try:
    c = config.load(sys.argv[1])
    config.check_data_dirs(c)
except config.ConfigError as exc:
    sys.exit(f"run.sh: {exc}")
print(c.get("server.host"), c.get("server.port"), c.get("agent.token"))
PYEOF
) || exit 2
read -r CFG_HOST CFG_PORT TOKEN <<<"$CFG_LINE"
HOST=${HOST:-$CFG_HOST}
PORT=${PORT:-$CFG_PORT}
URL_HOST=$HOST
if [ "$URL_HOST" = "0.0.0.0" ] || [ "$URL_HOST" = "::" ]; then URL_HOST=127.0.0.1; fi
URL="http://$URL_HOST:$PORT"

RUN_DIR="$(dirname "$CONFIG")/.run"
mkdir -p "$RUN_DIR"
chmod 700 "$RUN_DIR"
PIDS=()
# shellcheck disable=SC2329  # invoked by the EXIT trap
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

# A random id the hub echoes in /-/health: the readiness check below accepts only our own hub,
# not another one that already answers on this port.
RUN_ID=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
SERVER_MONITOR_RUN_ID=$RUN_ID "$PY" -m server_monitor serve -c "$CONFIG" --host "$HOST" --port "$PORT" &
HUB_PID=$!
PIDS+=("$HUB_PID")

ready=0
"$PY" - "$URL/-/health" "$RUN_ID" "$HUB_PID" <<'PYEOF' || ready=$?
import json, os, sys, time, urllib.error, urllib.request
url, run_id, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        try:
            answer = urllib.request.urlopen(url, timeout=1)
        except urllib.error.HTTPError as exc:  # 503 "unhealthy" is still an answer from a hub
            answer = exc
        with answer:
            if json.load(answer).get("run_id") == run_id:
                sys.exit(0)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        os.kill(pid, 0)
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            sys.exit(1)
    except (ProcessLookupError, FileNotFoundError):
        sys.exit(1)
    time.sleep(0.2)
sys.exit(2)
PYEOF
if [ "$ready" != 0 ]; then
  if [ "$ready" = 2 ]; then
    echo "run.sh: the hub did not answer on $URL/ within 60 s; stopping" >&2
    exit 1
  fi
  rc=0
  wait "$HUB_PID" || rc=$?
  PIDS=()
  # The hub printed its one-line reason (exit 1); say more only for anything unexpected.
  [ "$rc" = 1 ] || echo "run.sh: the hub failed to start (exit $rc)" >&2
  exit 1
fi

describe_exit() {  # exit status as words
  if [ "$1" -gt 128 ]; then echo "was killed by signal $(($1 - 128))"; else echo "exited with code $1"; fi
}

supervise() {  # name, then the command: run it; when it exits, say so and restart it with backoff
  local name=$1; shift
  local child=0 delay=2 started rc
  trap '[ "$child" = 0 ] || kill "$child" 2>/dev/null; wait; exit 0' TERM
  while true; do
    started=$SECONDS
    "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    if [ $((SECONDS - started)) -ge 300 ]; then delay=2; fi  # it had been running fine: start over
    echo "run.sh: agent $name (pid $child) $(describe_exit "$rc"); restarting it in ${delay}s" >&2
    child=0
    sleep "$delay" &
    child=$!
    wait "$child" || true
    child=0
    delay=$((delay * 2 > 120 ? 120 : delay * 2))
  done
}

start_agent() {  # name, then KEY=VALUE environment for the fake nvidia-smi
  local name=$1; shift
  local cfg="$RUN_DIR/agent-$name.yaml"
  (
    umask 077
    echo "server_url: $URL"
    echo "token: $TOKEN"
    echo "interval: 30"
    echo "spool_dir: $RUN_DIR/spool-$name"
    if [ "$name" != "local" ]; then
      echo "hostname: $name"
      echo "machine_id: $name"
      echo "nvidia_smi: $ROOT/tests/fake_nvidia_smi.py"
    fi
  ) > "$cfg"
  chmod 600 "$cfg"
  supervise "$name" env "$@" "$PY" "$ROOT/agent.py" -c "$cfg" &
  PIDS+=($!)
}

if [ "$AGENT" = 1 ]; then
  start_agent local
fi
if [ "$DEMO" = 1 ]; then
  # Two hosts run the real agent (GPUs from a capture; their processes are the agent's own, so
  # they show this machine's user); the simulated lab comes through the same ingest.
  common=(FAKE_NVSMI_STATE=cycle FAKE_NVSMI_PID=parent)
  start_agent agent-h100 "${common[@]}" FAKE_NVSMI_CAPTURE=h100-80gb FAKE_NVSMI_GPUS=8 FAKE_NVSMI_SEED=a
  start_agent agent-rtx4080 "${common[@]}" FAKE_NVSMI_CAPTURE=rtx-4080 FAKE_NVSMI_GPUS=1 FAKE_NVSMI_SEED=e
  supervise demo-feed "$PY" "$ROOT/scripts/demo_feed.py" --url "$URL" --config "$CONFIG" &
  PIDS+=($!)
  echo "Demo login: admin / $(cat "$DEMO_DIR/admin-password")" >&2
  echo "Demo data: $DEMO_DIR (recreated on each --demo start; a plain run never sees it)." >&2
fi

echo "Server Monitor is running at $URL/ (Ctrl-C stops it)." >&2
rc=0
wait "$HUB_PID" || rc=$?
echo "run.sh: the hub (pid $HUB_PID) $(describe_exit "$rc"); stopping the agents" >&2
exit $((rc == 0 ? 1 : rc))
