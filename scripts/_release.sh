# shellcheck shell=bash
# Building a hub release directory and switching to it (install_server.sh, upgrade.sh).

# build_release SRC RELEASE: copy the project, create its venv, install the pinned
# requirements into it, and build the agent zipapps served under /static/agent/.
build_release() {
  local src=$1 release=$2
  run mkdir -p "$release"
  local item
  for item in agent.py ingest.py metadata.yml pyproject.toml README.md requirements.txt requirements-agent.txt \
      requirements-build.txt requirements-dev.txt config.example.yaml plugins templates static canned_queries \
      server_monitor monitor_agent scripts; do
    run cp -a "$src/$item" "$release/"
  done
  run find "$release" -name '__pycache__' -type d -prune -exec rm -rf {} +
  run python3 -m venv "$release/.venv"
  # $SM_WHEELHOUSE: a directory of wheels (pip wheel -r requirements.txt setuptools -w DIR) to
  # install from instead of the package index: offline installs, and the deployment tests.
  local pip_from=()
  if [ -n "${SM_WHEELHOUSE:-}" ]; then pip_from=(--no-index --find-links "$SM_WHEELHOUSE"); fi
  run "$release/.venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_from[@]}" \
    -r "$release/requirements.txt"
  # Editable: the hub finds metadata.yml, plugins/, templates/ and static/ in the release.
  run "$release/.venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_from[@]}" \
    --no-deps -e "$release"
  if [ -n "${SM_AGENT_DIST:-}" ]; then
    # Prebuilt zipapps (air-gapped installs, tests): copied instead of built.
    run mkdir -p "$release/static/agent"
    run cp "$SM_AGENT_DIST"/server-monitor-agent-*.pyz "$SM_AGENT_DIST"/server-monitor-agent-*.pyz.sha256 "$release/static/agent/"
  else
    run "$release/scripts/build_agent.sh" --out "$release/static/agent"
  fi
  run cp "$release/scripts/install_agent.sh" "$release/static/agent/"
}

# switch_current PREFIX RELEASE: point PREFIX/current at RELEASE atomically.
switch_current() {
  local prefix=$1 release=$2
  run ln -sfn "$release" "$prefix/current.new"
  run mv -T "$prefix/current.new" "$prefix/current"
}
