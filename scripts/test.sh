#!/usr/bin/env bash
# Install what the tests need and run the whole suite: scripts/test.sh [pytest args]
#
# Browser tests drive Debian's chromium through Playwright. When chromium (or curl, openssl)
# is missing it is installed with apt (as root, or with sudo). Where that is impossible the
# browser tests are skipped with a loud message, except under CI=true where they must run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/_venv.sh
. "$ROOT/scripts/_venv.sh"
ensure_venv "$ROOT" "$ROOT/requirements-dev.txt"

# System tools the tests drive: chromium (browser tests), curl (install_agent.sh), openssl (TLS test),
# prometheus (a real Prometheus scrapes the hub).
MISSING=()
command -v chromium >/dev/null 2>&1 || MISSING+=(chromium)
command -v curl >/dev/null 2>&1 || MISSING+=(curl)
command -v openssl >/dev/null 2>&1 || MISSING+=(openssl)
command -v prometheus >/dev/null 2>&1 || MISSING+=(prometheus)  # tests/test_prometheus.py scrapes the hub
if [ ${#MISSING[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    echo "Installing ${MISSING[*]} for the tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null || echo "WARNING: could not install ${MISSING[*]}" >&2
  else
    echo "WARNING: ${MISSING[*]} missing and cannot be installed here; the tests that need them will skip or fail" >&2
  fi
fi

# The whole suite runs on parallel workers (pytest-xdist, $SM_TEST_WORKERS, default 3: most tests
# wait on real processes and sockets, not on the CPU), one test file per worker at a time, so the
# tests of a file share its fixtures and never race each other. Chosen tests (a path, -n or
# -p no:xdist in the arguments) run as asked.
ARGS=("$@")
PARALLEL=1
for arg in "$@"; do
  case "$arg" in
    -n|-n[0-9]*|--numprocesses*|no:xdist|-pno:xdist|tests|tests/*|*.py|*::*) PARALLEL=0 ;;
  esac
done
if [ "$PARALLEL" = 1 ]; then
  # --no-loadscope-reorder: files go to workers in collection order, which tests/conftest.py
  # starts with the longest files (LONG_FILES), instead of xdist's most-tests-first order.
  # Tests marked "timing" hold a wall-clock figure of a done-when (the dashboard filter's
  # keystroke-to-repaint at 1,000 servers): they run afterwards, alone, so the other workers'
  # browsers and hubs on the same cores are not part of the figure. Both phases always run;
  # the suite fails when either does.
  rc=0
  "$ROOT/.venv/bin/python" -m pytest -n "${SM_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder \
    -m "not timing" "${ARGS[@]}" || rc=$?
  timing=0
  "$ROOT/.venv/bin/python" -m pytest -p no:xdist -m timing "${ARGS[@]}" || timing=$?
  if [ "$timing" != 0 ] && [ "$timing" != 5 ]; then rc=$timing; fi  # 5: no test is marked (a -k chose others)
  exit "$rc"
fi
exec "$ROOT/.venv/bin/python" -m pytest "${ARGS[@]}"
