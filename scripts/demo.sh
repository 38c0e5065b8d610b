#!/usr/bin/env bash
# `make demo`: pulih's main job on its embedded default, with no servers of yours.
#  1. the example data center's asset register: shown, checked against the SOP, read as inventory;
#  2. a throwaway lab of two servers (real sshd, PostgreSQL and MariaDB on loopback) audited
#     over SSH against its own register, after one of them drifted from it;
#  3. the whole SOP on lab1's sample data of a fictional agency, through a pulih serve the demo
#     starts (state and socket in reports/demo/service; ani, sri and budi as accounts with
#     tokens): a verified backup, damage, a recovery request filed, received, approved by a
#     second person with her SSH signature (the office's policy wants one), assessed, planned,
#     restored (verified, the damage saved as a pre-restore backup), confirmed and closed; spoof
#     attempts refused; then a backup request of procedure B with the agency's letter, carried
#     out as a verified backup; the audit log checked against its anchor and the signed
#     approval checked offline with ssh-keygen alone.
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
service_pid='' service_state=''
cleanup() {
  if [[ -n $service_pid ]]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  python -m tests.lab down --inventory-dir "$lab_inventory" >/dev/null
  rm -rf "$lab_inventory"
}
trap cleanup EXIT
python -m tests.lab up --hosts 2 --inventory-dir "$lab_inventory" > "$reports/lab.json"

step "5. Someone creates a database on lab2 without registering it"
ansible -i "$lab_inventory" lab2 -m community.postgresql.postgresql_db -a "name=aplikasi_lama \
  login_host={{ pulih_data_items[0].host }} login_port={{ pulih_data_items[0].port }} \
  login_user={{ pulih_data_items[0].user }} login_password={{ lookup('vars', pulih_data_items[0].password_var) }}" \
  | sed -n 1p

step "6. ansible-playbook playbooks/register_audit.yml over SSH"
ansible-playbook -i "$lab_inventory" playbooks/register_audit.yml \
  -e "pulih_register_report_path=$PWD/$reports/register_audit.json"

step "7. pulih serve: the service that alone holds the record, the register and the keys"
if [[ $(id -u) -ne 0 ]]; then echo "demo: pulih serve --init runs as root (it makes the service account): run make demo as root" >&2; exit 1; fi
# State and socket in the demo folder. The lab's servers accept this user's key, so the demo's
# service runs as this user (an office's runs as the account 'pulih').
service_state=$PWD/$reports/service
rm -rf "$service_state"
pulih serve --init --state "$service_state" --admin "$(id -un)" --user "$(id -un)" --register "$lab_inventory"
echo "restore_retry_seconds: 5" >> "$service_state/config.yml"
# The audit chain's head goes to an anchor outside the service's state after every write.
rm -rf "$PWD/$reports/anchor" && mkdir -p "$PWD/$reports/anchor"  # a new record, a new anchor
printf 'anchors:\n  - file: %s\n' "$PWD/$reports/anchor/audit.jsonl" >> "$service_state/config.yml"
pulih serve --state "$service_state" & service_pid=$!
export PULIH_SERVER=unix:$service_state/pulih.sock
for _ in $(seq 1 300); do pulih whoami >/dev/null 2>&1 && break; sleep 0.1; done
pulih whoami
# The SOP's people, as accounts with roles; each gets a token for this demo.
pulih admin user add ani --role requester --role approver --skpd dinkes --email ani@dinkes.go.id
pulih admin user add sri --role receiver --role approver
pulih admin user add budi --role operator
declare -A token
token[ani]=$(pulih admin token create ani --scope request --scope approve --scope read --expires-in 1h)
token[sri]=$(pulih admin token create sri --scope approve --scope read --expires-in 1h)
token[budi]=$(pulih admin token create budi --scope backup --scope restore --scope read --expires-in 1h)
as() { PULIH_TOKEN=${token[$1]} pulih "${@:2}"; }
# Sri signs her approvals with her own SSH key; the office wants restores in place signed.
mkdir -p "$reports/keys" && rm -f "$reports/keys/sri" "$reports/keys/sri.pub"
ssh-keygen -q -t ed25519 -N '' -C sri -f "$reports/keys/sri"
pulih admin user key add sri --key-file "$reports/keys/sri.pub"
pulih admin policy set --signed-approvals in_place

step "8. Last night's backup of lab1 (PostgreSQL, MariaDB, documents), verified by test restores: a job of the service"
as budi backup --limit lab1

counts() {
  python -m tests.lab sql --inventory-dir "$lab_inventory" lab1 pg "SELECT count(*) FROM pegawai" app_lab1 | tr -d ' \n'
  printf ' pegawai rows, '
  python -m tests.lab sql --inventory-dir "$lab_inventory" lab1 mariadb "SELECT COUNT(*) FROM app_lab1.kunjungan" | tr -d ' \n'
  printf ' kunjungan rows, '
  find "$docs" -type f | wc -l | tr -d ' \n'
  echo ' documents'
}
docs=$(python -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); print(next(i["path"] for i in d["assets"][0]["data"] if i["engine"] == "files"))' \
       "$lab_inventory/lab.asset_register.yml")
echo "lab1 now: $(counts)"

step "9. Damage: an import script deletes employees, visits go missing, a letter is deleted"
python -m tests.lab sql --inventory-dir "$lab_inventory" lab1 pg "DELETE FROM pegawai WHERE id > 40" app_lab1 >/dev/null
python -m tests.lab sql --inventory-dir "$lab_inventory" lab1 mariadb "DELETE FROM app_lab1.kunjungan WHERE id % 4 = 0" >/dev/null
find "$docs" -type f | sort | head -1 | xargs rm -f
echo "lab1 now: $(counts)"

step "10. The SOP: Ani (Dinkes) files a recovery request (Form PPD), Sri receives it"
rid=$(as ani request new --item LAB-001:app-pg --item LAB-001:app-mariadb --item LAB-001:dokumen \
      --skpd dinkes --contact ani@dinkes.go.id \
      --reason accidental_deletion --reason-text "data pegawai terhapus oleh impor" --json \
      | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "filed $rid"
as sri request receive "$rid"
echo "Ani tries to approve her own request, claiming to be Sri (USER=sri LOGNAME=sri PULIH_ACTOR=sri):"
rc=0; USER=sri LOGNAME=sri PULIH_ACTOR=sri as ani request approve "$rid" || rc=$?
[[ $rc -eq 3 ]] || { echo "demo: expected a refusal (exit 3), got $rc" >&2; exit 1; }
echo "Sri approves without signing, which the office's policy refuses:"
rc=0; as sri request approve "$rid" --valid-hours 24 || rc=$?
[[ $rc -eq 3 ]] || { echo "demo: expected a refusal (exit 3), got $rc" >&2; exit 1; }
as sri request approve "$rid" --valid-hours 24 --sign --key "$reports/keys/sri"

step "11. Budi assesses (Form PD), checks the backups, plans, and asks the gate"
as budi request assess "$rid" --damage accidental_deletion --note "tabel pegawai kosong sebagian"
as budi request check-backups "$rid" --json > "$reports/request.json"
mapfile -t plan < <(python -c '
import json, sys
found = json.load(open(sys.argv[1]))["backups_found"]
newest = {}
for b in found:
    if b["verified"] and b["kind"] != "pre_restore":
        newest[b["asset_id"] + ":" + b["item"]] = b["backup_id"]
for key, backup_id in sorted(newest.items()):
    print(f"--backup={key}={backup_id}")
' "$reports/request.json")
as budi request plan "$rid" "${plan[@]}" --window "malam ini"
as budi restore --request "$rid" --check
echo "and a restore of an item outside the request:"
rc=0; as budi restore --request "$rid" --item LAB-002:app-pg --check || rc=$?
[[ $rc -eq 3 ]] || { echo "demo: expected a refusal (exit 3), got $rc" >&2; exit 1; }

step "12. Budi restores (a job of the service): each item verified in a stage, the damaged data saved, then swapped in"
as budi restore --request "$rid" --json > "$reports/restore.json"
echo "lab1 now: $(counts)"

step "13. Ani confirms the data is back, Sri closes the request"
as ani request confirm "$rid" --note "data pegawai sudah kembali"
as sri request close "$rid"
as budi request show "$rid"
as budi request form "$rid" --form ppd --lang id -o "$reports/form-ppd-$rid.html"
as budi request form "$rid" --form pd --lang id -o "$reports/form-pd-$rid.html"
restore_run=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$reports/restore.json")
as budi report show "$restore_run" --format html --lang id > "$reports/restore-$rid.html"

step "14. SOP B: Ani asks for a one-off backup before a migration, with the agency's letter"
# The letter as an agency sends it: a PDF (here a one-page stand-in written on the spot).
printf '%%PDF-1.4\n%% Surat permohonan: pencadangan SIMPEG sebelum migrasi\n%%%%EOF\n' > "$reports/surat-permohonan.pdf"
bid=$(as ani request new --kind backup --procedure backup_restore --item LAB-001:app-pg \
      --skpd dinkes --contact ani@dinkes.go.id --reason migration \
      --reason-text "pindah ke server baru" --letter "$reports/surat-permohonan.pdf" --json \
      | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "filed $bid beside $rid"
as sri request receive "$bid"
as sri request approve "$bid" --note "disposisi ke Seksi Infrastruktur"
as budi request plan "$bid" --window "malam ini"
as budi request backup "$bid"
as ani request confirm "$bid" --note "cadangan sudah ada"
as sri request close "$bid"
as budi request show "$bid"
as budi request form "$bid" --form ppd --lang id -o "$reports/form-ppd-$bid.html"

step "15. Who acts is the kernel's word, or a token's, never the environment's"
echo "USER=sri LOGNAME=sri PULIH_ACTOR=sri pulih whoami, on the socket, without a token:"
USER=sri LOGNAME=sri PULIH_ACTOR=sri pulih whoami
echo "Ani's token, used to list the accounts (an admin's step):"
rc=0; as ani admin user list || rc=$?
[[ $rc -eq 3 ]] || { echo "demo: expected a refusal (exit 3), got $rc" >&2; exit 1; }
echo "A restore that names its own register (-i):"
rc=0; as budi restore --request "$rid" -i "$lab_inventory" || rc=$?
[[ $rc -eq 2 ]] || { echo "demo: expected bad input (exit 2), got $rc" >&2; exit 1; }

step "16. The record checked against its anchor, and Sri's signed approval checked offline with ssh-keygen alone"
as budi audit verify
pulih request export-approval "$rid" --dir "$reports/approval"
pulih audit export-signers --output "$reports/allowed_signers"
echo "ssh-keygen -Y verify -f $reports/allowed_signers -I sri -n pulih-approval -s $reports/approval/approval-1.json.sig < $reports/approval/approval-1.json"
ssh-keygen -Y verify -f "$reports/allowed_signers" -I sri -n pulih-approval \
  -s "$reports/approval/approval-1.json.sig" < "$reports/approval/approval-1.json"

step "Summary"
python - "$reports/register_audit.json" "$reports/restore.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for host, entry in sorted(report["hosts"].items()):
    drift = "; ".join(d["message"] for d in entry["drift"]) or "matches the register"
    print(f"  {host:8} {entry['asset_id']}: {drift}")
restore = json.load(open(sys.argv[2]))
print(f"  restore {restore['run_id']}: {restore['status']} in {restore['duration_seconds']:.0f} s, "
      f"{len(restore['attempts'])} attempt(s)")
for item in restore["items"]:
    print(f"    {item['asset_id']}:{item['item']:12} from {item['backup_id']}, verified; "
          f"damaged state kept as pre-restore backup {item['restore']['pre_restore_backup_id']}")
PY
echo
echo "Reports: $reports/register_check.json, $reports/register_audit.json, run reports in $reports/service/runs/,"
echo "         the restore report $reports/restore-$rid.html and the forms $reports/form-ppd-$rid.html"
echo "         and $reports/form-ppd-$bid.html (the backup request, with its letter's SHA-256)"
echo "         and $reports/form-pd-$rid.html (Indonesian)"
echo "The lab is stopped on exit, every process by its PID."
