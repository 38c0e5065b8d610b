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

step "7. A backup of lab1's database, verified by a test restore"
export PULIH_STATE_DIR=$PWD/$reports/state PULIH_CONFIG=$PWD/$reports/config.yml
mkdir -p "$PULIH_STATE_DIR"
cat > "$PULIH_CONFIG" <<'YAML'
# demo only: PULIH_ACTOR plays the people of the SOP on one machine
allow_actor_override: true
actors:
  ani: [requester, approver]  # BKPSDM's head: approves others' requests, never her own
  sri: [receiver, approver]   # sub-coordinator, infrastructure and data center
  budi: [operator]            # data-center staff
YAML
pulih backup -i "$lab_inventory" --limit lab1 --item app-pg

step "8. The SOP: Ani files a recovery request (Form PPD), Sri receives it"
as() { PULIH_ACTOR=$1 pulih "${@:2}"; }
rid=$(as ani request new -i "$lab_inventory" --item LAB-001:app-pg --skpd bkpsdm --contact ani@bkpsdm.go.id \
      --reason accidental_deletion --reason-text "data pegawai terhapus oleh impor" --json \
      | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "filed $rid"
as sri request receive "$rid"
echo "Ani tries to approve her own request:"
rc=0; as ani request approve "$rid" || rc=$?
[[ $rc -eq 3 ]] || { echo "demo: expected a refusal (exit 3), got $rc" >&2; exit 1; }
as sri request approve "$rid" --valid-hours 24

step "9. Budi assesses (Form PD), checks the backups, plans, and asks the gate"
as budi request assess "$rid" --damage accidental_deletion --note "tabel pegawai kosong"
as budi request check-backups "$rid" -i "$lab_inventory" --json > "$reports/request.json"
backup_id=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["backups_found"][-1]["backup_id"])' \
            "$reports/request.json")
as budi request plan "$rid" --backup "LAB-001:app-pg=$backup_id" --window "malam ini"
as budi restore --request "$rid" --check -i "$lab_inventory"
echo "and a restore of an item outside the request:"
rc=0; as budi restore --request "$rid" --item LAB-001:app-mariadb --check -i "$lab_inventory" || rc=$?
[[ $rc -eq 3 ]] || { echo "demo: expected a refusal (exit 3), got $rc" >&2; exit 1; }
as budi request show "$rid"
as budi request form "$rid" --form ppd --lang id -o "$reports/form-ppd-$rid.html"
as budi request form "$rid" --form pd --lang id -o "$reports/form-pd-$rid.html"
pulih audit verify

step "Summary"
python - "$reports/register_audit.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for host, entry in sorted(report["hosts"].items()):
    drift = "; ".join(d["message"] for d in entry["drift"]) or "matches the register"
    print(f"  {host:8} {entry['asset_id']}: {drift}")
PY
echo
echo "Reports: $reports/register_check.json, $reports/register_audit.json, run reports in $reports/state/runs/,"
echo "         forms $reports/form-ppd-$rid.html and $reports/form-pd-$rid.html (Indonesian)"
echo "The lab is stopped on exit, every process by its PID."
