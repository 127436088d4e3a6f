#!/usr/bin/env bash
# Build the self-contained agent zipapp, one per CPU architecture:
#
#   scripts/build_agent.sh [--arch x86_64|aarch64|all] [--out DIR]
#
# Each dist/server-monitor-agent-<arch>.pyz carries agent.py, monitor_agent/ and the
# wheels of requirements-agent.txt for Python 3.9+ on manylinux <arch> (psutil's wheel is
# abi3, so one build serves every Python from 3.9). Run it with
#   python3 server-monitor-agent-<arch>.pyz -c agent_config.yaml
# on a host with no pip packages. shiv unpacks the dependencies once into ~/.shiv (or
# $SHIV_ROOT). A .sha256 file is written next to each .pyz.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHES="x86_64 aarch64"
OUT="$ROOT/dist"

while [ $# -gt 0 ]; do
  case "$1" in
    --arch) [ "$2" = all ] || ARCHES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

# shiv lives in its own venv: it pins an older click than the hub's dependencies allow.
BUILD_VENV="$ROOT/.venv-build"
if [ ! -x "$BUILD_VENV/bin/shiv" ]; then
  python3 -m venv "$BUILD_VENV"
  "$BUILD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-build.txt"
fi
PY="$BUILD_VENV/bin/python"
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$OUT"

for arch in $ARCHES; do
  site="$BUILD/site-$arch"
  # Binary wheels for the target platform only; nothing is compiled here.
  "$PY" -m pip install --quiet --disable-pip-version-check --no-compile \
    --target "$site" --only-binary=:all: --implementation cp --python-version 3.9 \
    --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" \
    -r "$ROOT/requirements-agent.txt"
  cp "$ROOT/agent.py" "$site/"
  cp -r "$ROOT/monitor_agent" "$site/"
  find "$site" -name '__pycache__' -type d -prune -exec rm -rf {} +
  pyz="$OUT/server-monitor-agent-$arch.pyz"
  "$BUILD_VENV/bin/shiv" --site-packages "$site" --entry-point agent:main \
    --python "/usr/bin/env python3" --reproducible --compressed -o "$pyz"
  (cd "$OUT" && sha256sum "$(basename "$pyz")" > "$(basename "$pyz").sha256")
  echo "$pyz ($(du -k "$pyz" | cut -f1) KiB)"
done
