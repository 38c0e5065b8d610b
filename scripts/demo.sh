#!/usr/bin/env bash
# `make demo`: pulih's main job on its embedded default, with no servers of yours.
#  1. the example data center's asset register: shown, checked against the SOP, read as inventory;
#  2. a throwaway lab of two servers (real sshd, PostgreSQL and MariaDB on loopback) audited
#     over SSH against its own register, after one of them drifted from it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

# The example register's review dates are fixed; count their age from the day it was
# last edited so the demo tells the same story on any date (PULIH_TODAY overrides).
example_today=${PULIH_TODAY:-2026-11-21}
reports=reports/demo
mkdir -p "$reports"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The asset register of the example data center"
pulih register show -i inventories/example --today "$example_today"

step "2. pulih register check (the SOP: every entry reviewed at least once a year)"
rc=0
pulih register check -i inventories/example --today "$example_today" || rc=$?
pulih register check -i inventories/example --today "$example_today" --json > "$reports/register_check.json" || true
if [[ $rc -ne 1 ]]; then
  echo "demo: expected exit 1 (one entry overdue for review), got $rc" >&2
  exit 1
fi
echo "-> exit 1: one finding, as the example intends (siak-arsip01 missed its yearly review)"

step "3. The register as Ansible inventory: only servers in operation, grouped by SKPD, engine, environment"
PULIH_TODAY=$example_today ansible-inventory -i inventories/example/ --graph

step "4. A lab of two servers and a backup repository host, on loopback"
lab_inventory=$(mktemp -d /tmp/pulih-demo-XXXXXX)
trap 'python -m pulih.lab down --inventory-dir "$lab_inventory" >/dev/null; rm -rf "$lab_inventory"' EXIT
python -m pulih.lab up --hosts 2 --inventory-dir "$lab_inventory" > "$reports/lab.json"

step "5. Someone creates a database on lab2 without registering it"
ansible -i "$lab_inventory" lab2 -m community.postgresql.postgresql_db -a "name=aplikasi_lama \
  login_host={{ pulih_data_items[0].host }} login_port={{ pulih_data_items[0].port }} \
  login_user={{ pulih_data_items[0].user }} login_password={{ lookup('vars', pulih_data_items[0].password_var) }}" \
  | sed -n 1p

step "6. ansible-playbook playbooks/register_audit.yml over SSH"
ansible-playbook -i "$lab_inventory" playbooks/register_audit.yml \
  -e "pulih_register_report_path=$PWD/$reports/register_audit.json"

step "Summary"
python - "$reports/register_audit.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for host, entry in sorted(report["hosts"].items()):
    drift = "; ".join(d["message"] for d in entry["drift"]) or "matches the register"
    print(f"  {host:8} {entry['asset_id']}: {drift}")
PY
echo
echo "Reports: $reports/register_check.json, $reports/register_audit.json"
echo "The lab is stopped on exit, every process by its PID."
