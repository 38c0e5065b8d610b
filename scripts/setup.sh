#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to a working state for pulih:
# the Debian packages the roles and the test lab use, then a .venv with the
# project and its tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every line of scripts/debian-packages.txt: the controller's, the servers' and the lab's
# packages (the bundle's install.sh reads the controller's from the same file).
debian_packages=()
while IFS= read -r line; do
  line=${line%%#*}
  [[ $line == *:* ]] || continue
  read -ra words <<<"${line#*:}"
  debian_packages+=("${words[@]}")
done <scripts/debian-packages.txt

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 2
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's Python by default: the service's account (pulih) and the staff who use its socket
# must be able to run it, which a Python under /root (pyenv) does not allow.
python=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
stamp=.venv/.pulih-setup
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if ! [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv --clear .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
  echo "setup: done"
fi

# The agent the roles copy to data servers: one zipapp, built from agent/ (a second or less).
.venv/bin/python scripts/build_agent.py >/dev/null
