#!/usr/bin/env bash
# Installs pulih from its offline bundle (make bundle; this file is the bundle's install.sh) on a
# machine with no network:
#
#   ./install.sh DEST        e.g. /opt/pulih
#
#   DEST/venv         a virtualenv of this machine's python3 with pulih and its wheels, from the
#                     bundle alone (pip --no-index: no index, no pip configuration of the machine)
#   DEST/collections  the collection pulih.core (ansible-galaxy collection install --offline)
#   DEST/content      what pulih runs (PULIH_HOME, `pulih serve --init --content`): ansible.cfg,
#                     and the installed collection's playbooks/ and roles/
#   DEST/bin/pulih    pulih with PULIH_HOME=DEST/content
#
# First it checks the bundle (SHA256SUMS), the Debian packages the controller needs (it downloads
# none: it names the missing ones and the apt-get command) and the Python the wheels are for, and
# stops before it installs anything when one is wrong. Run it again at will.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-/usr/bin/python3}

die() {
  echo "install.sh: $*" >&2
  exit 2
}

(($# == 1)) && [[ $1 != -* ]] || die "usage: $0 DEST (the folder to install pulih into, e.g. /opt/pulih)"
dest=$(realpath -m -- "$1")

(cd "$here" && sha256sum --quiet --strict -c SHA256SUMS) >&2 ||
  die "the bundle is damaged (SHA256SUMS does not match): copy it again"

# The controller's lines of debian-packages.txt ("controller: PACKAGES  # why").
missing=()
while IFS= read -r line; do
  line=${line%%#*}
  [[ $line == controller:* ]] || continue
  read -ra packages <<<"${line#controller:}"
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
done <"$here/debian-packages.txt"
if ((${#missing[@]})); then
  die "these Debian packages are missing: ${missing[*]}. Install them from the office's Debian mirror" \
    "or the Debian 12 DVDs, as root: apt-get install --no-install-recommends ${missing[*]}; then run me again"
fi

[[ -x $python ]] || die "there is no $python (Debian's python3; another with PYTHON=...)"
bundle() { "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$here/BUNDLE.json" "$1"; }
version=$(bundle pulih_version)
wants=$(bundle python)
has=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $has == "$wants" ]] || die "the bundle's wheels are for Python $wants ($(bundle platform)); $python is $has"

# pip sees the bundle's wheels and nothing else: no index, no configuration file of this machine
# or its users, none of their sources or constraints.
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$dest/venv/bin/python" -m pip install --quiet --no-index --find-links "$here/wheels")

echo "install.sh: pulih $version into $dest"
mkdir -p "$dest/bin" "$dest/content"
"$python" -m venv "$dest/venv"
"${pip[@]}" --upgrade pip # the bundle's pip: Debian's may be older than the wheels' metadata
"${pip[@]}" "pulih==$version"

core=../collections/ansible_collections/pulih/core
cp "$here/ansible.cfg" "$dest/content/ansible.cfg"
ln -sfn ../collections "$dest/content/collections"
ln -sfn "$core/playbooks" "$dest/content/playbooks"
ln -sfn "$core/roles" "$dest/content/roles"

# With the content's config (collections_path: DEST/collections), whatever folder this runs in.
ANSIBLE_CONFIG="$dest/content/ansible.cfg" "$dest/venv/bin/ansible-galaxy" collection install \
  --offline --force -p "$dest/collections" "$here/$(bundle collection)" >/dev/null

printf '#!/bin/sh\n# pulih of the offline install in %s\nPULIH_HOME=${PULIH_HOME:-%q} exec %q "$@"\n' \
  "$dest" "$dest/content" "$dest/venv/bin/pulih" >"$dest/bin/pulih"
chmod 0755 "$dest/bin/pulih"

echo "install.sh: done: $dest/bin/pulih (PULIH_HOME=$dest/content; ansible-playbook and the rest in $dest/venv/bin)"
