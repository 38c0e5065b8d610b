#!/usr/bin/env bash
# `make desk`: the request desk on a lab, for a person to try the SOP in a browser.
#  A lab of one data server and a repository host (real sshd, PostgreSQL, MariaDB on loopback),
#  a verified backup of its data, and a pulih serve with the SOP's people as accounts with
#  passwords, listening on 127.0.0.1 (PULIH_DESK_LISTEN, default 127.0.0.1:8480). It prints the
#  URL and the logins, and runs until Ctrl-C; then the service and the lab stop, by their PIDs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
listen=${PULIH_DESK_LISTEN:-127.0.0.1:8480}
if [[ $(id -u) -ne 0 ]]; then echo "desk: pulih serve --init runs as root (it makes the service account): run make desk as root" >&2; exit 1; fi

state=$PWD/reports/desk/service
lab_inventory=$(mktemp -d /tmp/pulih-desk-XXXXXX)
service_pid=''
cleanup() {
  if [[ -n $service_pid ]]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  python -m tests.lab down --inventory-dir "$lab_inventory" >/dev/null
  rm -rf "$lab_inventory"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # Ctrl-C or kill: the EXIT trap stops what was started
echo "desk: starting a lab (one data server, one repository host) ..."
python -m tests.lab up --hosts 1 --inventory-dir "$lab_inventory" > /dev/null

rm -rf "$state" && mkdir -p "$(dirname "$state")"
pulih serve --init --state "$state" --admin "$(id -un)" --user "$(id -un)" --register "$lab_inventory" > /dev/null
pulih serve --state "$state" --listen "$listen" & service_pid=$!
export PULIH_SERVER=unix:$state/pulih.sock
for _ in $(seq 1 300); do pulih whoami >/dev/null 2>&1 && break; sleep 0.1; done
pulih whoami > /dev/null

# The SOP's people (the lab's server belongs to SKPD dinkes); a fresh password each time.
declare -A roles=(
  [ani]="--role requester --skpd dinkes"
  [sri]="--role receiver"
  [kabid]="--role approver"
  [budi]="--role operator"
  [rita]="--role auditor"
  [ana]="--role admin"
)
declare -A passwords
for name in ani sri kabid budi rita ana; do
  passwords[$name]=$(python -c 'import secrets; print(secrets.token_urlsafe(9))')
  # shellcheck disable=SC2086 # the roles are separate options
  pulih admin user add "$name" ${roles[$name]} --password-stdin <<< "${passwords[$name]}" > /dev/null
done
pulih admin policy set --distinct receiver,approver > /dev/null

echo "desk: last night's backup of the lab's data, verified by test restores ..."
budi_token=$(pulih login budi --password-stdin <<< "${passwords[budi]}")
PULIH_TOKEN=$budi_token pulih backup --limit lab1 > reports/desk/backup.log 2>&1 \
  || { cat reports/desk/backup.log; echo "desk: the lab's backup failed" >&2; exit 1; }

cat <<TEXT

  The desk:  http://$listen/desk/   (Indonesian; EN at the top right)

  account  role                            password
  ani      requester, SKPD dinkes          ${passwords[ani]}
  sri      receiver                        ${passwords[sri]}
  kabid    approver (head of division)     ${passwords[kabid]}
  budi     operator                        ${passwords[budi]}
  rita     auditor (read-only)             ${passwords[rita]}
  ana      administrator                   ${passwords[ana]}

  Ani files a request, Sri receives it, Kabid approves it, Budi assesses, checks the
  backups, plans and restores (and follows the job), Ani confirms, Sri closes.
  Rita reads the runs and the audit log and checks it; Ana keeps the accounts and the policy.
  The same from a shell: export PULIH_SERVER=$PULIH_SERVER PULIH_TOKEN=\$(pulih login budi)
  Ctrl-C stops the service and the lab.
TEXT
wait "$service_pid"
