# shellcheck shell=bash
# Sourced by run.sh and test.sh: create .venv and install pinned requirements when they changed.
# Usage: ensure_venv ROOT REQUIREMENTS_FILE
ensure_venv() {
  local root=$1 requirements=$2
  local venv="$root/.venv" stamp
  if [ ! -x "$venv/bin/python" ]; then
    echo "Creating $venv" >&2
    python3 -m venv "$venv"
  fi
  stamp="$venv/.installed-$(basename "$requirements")"
  local want
  want=$(cat "$root/requirements.txt" "$requirements" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing $(basename "$requirements") into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root"
    write_stamp "$stamp" "$want"
  fi
  # requirements-dev.txt includes requirements.txt: run.sh then needs no install of its own.
  if [ "$(basename "$requirements")" != requirements.txt ] && grep -qx -- '-r requirements.txt' "$requirements"; then
    want=$(cat "$root/requirements.txt" "$root/requirements.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
    write_stamp "$venv/.installed-requirements.txt" "$want"
  fi
}

# write_stamp FILE VALUE: replace FILE's content with VALUE when it differs, atomically. A
# run.sh started from the same checkout while test.sh rewrote the stamp in place read it empty,
# said "Installing requirements.txt" and ran pip inside a running test suite.
write_stamp() {
  local stamp=$1 want=$2
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "$want" > "$stamp.$$"
    mv -f "$stamp.$$" "$stamp"
  fi
}
