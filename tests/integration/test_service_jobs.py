"""Backups and verifications as jobs of pulih serve, on a lab of real servers: the service
runs the playbooks with its own register and keys for an authenticated operator, one job per
target at a time, and a service killed mid-job leaves the run 'interrupted' at its restart.

The lab's servers accept the lab's key, which root holds, so this service runs as root
(`--init --user root`); an office's runs as `pulih`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from pulih.store import Store, runs_table
from tests import lab as lab_mod
from tests.integration.client import Service, wait_until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the service's --init runs as root"),
]
PULIH = str(Path(sys.executable).parent / "pulih")


PEOPLE = {
    "budi": (["operator"], [], ["backup"]),
    "rita": (["auditor"], [], ["read"]),
    # SOP B's people for a backup request: lab1 is dinkes's; tono stands in for sri (Plh.).
    "ani": (["requester"], ["dinkes"], ["request", "read"]),
    "sri": (["receiver", "approver"], [], ["approve", "read"]),
    "tono": (["operator"], [], ["approve", "read"]),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("service-jobs")
    inventory = base / "inventory"
    lab = lab_mod.Lab(1, inventory_dir=inventory)
    lab_state = lab.up()
    repo = lab_state.repository_host
    assert repo is not None
    # The audit chain's anchor: the repository host's log, through its receiver, with the
    # controller's key (the lab's).
    anchor = {
        "address": repo.address,
        "port": repo.ssh_port,
        "user": lab_mod.RECEIVER_ACCOUNT,
        "ssh_identity": str(lab_state.private_key),
        "ssh_known_hosts": str(lab_state.known_hosts),
    }
    service = Service(inventory, yaml.safe_dump({"anchors": [{"receiver": anchor}]}), people=PEOPLE)
    try:
        service.init()
        env = {"state": service.state, "service": service, "server": service.server, "lab": lab_state}
        env["tokens"] = {(name, PEOPLE[name][2][0]): token for name, token in service.tokens.items()}
        env["tokens"][("budi", "read")] = service.admin(
            "admin", "token", "create", "budi", "--scope", "read"
        ).stdout.strip()
        yield env
    finally:
        service.remove()
        lab.down()


def run(env, token, *args, check=None, timeout=600):
    environ = {"PATH": os.environ["PATH"], "PULIH_SERVER": env["server"], "LANG": "C.UTF-8"}
    if token:
        environ["PULIH_TOKEN"] = env["tokens"][token]
    result = subprocess.run(
        [PULIH, *args], capture_output=True, text=True, env=environ, cwd="/", timeout=timeout, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check is not None:
        assert result.returncode == check, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start_detached(env) -> dict:
    """A backup of all of lab1 (with verification: long enough to be caught running)."""
    started = run(
        env, ("budi", "backup"), "jobs", "start", "backup", "--limit", "lab1", "--detach", "--json", check=0
    )
    return json.loads(started.stdout)


def recorded_runs(env):
    store = Store(f"sqlite:///{env['state'] / 'pulih.db'}", upgrade=False)
    try:
        with store.engine.connect() as conn:
            return {r.run_id: r for r in conn.execute(sa.select(runs_table)).all()}
    finally:
        store.engine.dispose()


def test_a_backup_job_runs_as_the_service_for_the_operator(env):
    result = run(
        env,
        ("budi", "backup"),
        "jobs",
        "start",
        "backup",
        "--limit",
        "lab1",
        "--item",
        "app-pg",
        "--json",
        check=0,
    )
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded" and report["operator"] == "budi"
    (item,) = report["items"]
    assert item["ok"] and item["verification"]["ok"]
    assert "backup succeeded: job job-" in result.stderr
    path = env["state"] / "runs" / report["run_id"] / "report.json"
    assert json.loads(path.read_text())["operator"] == "budi", "the report lives in the service's state"
    assert recorded_runs(env)[report["run_id"]].status == "succeeded"
    jobs = json.loads(run(env, ("rita", "read"), "jobs", "list", "--json", check=0).stdout)["jobs"]
    assert [j["account"] for j in jobs] == ["budi"], "an auditor sees the jobs"


def test_who_may_start_a_job_is_the_services_to_say(env):
    run_ = run(env, ("budi", "read"), "jobs", "start", "backup", "--limit", "lab1", check=3)
    assert "'backup' needs a token with that scope" in run_.stderr
    run_ = run(env, ("rita", "read"), "jobs", "start", "backup", "--limit", "lab1", check=3)
    assert "needs a token with that scope" in run_.stderr or "is not operator" in run_.stderr
    run_ = run(env, ("budi", "backup"), "jobs", "start", "backup", "--limit", "nowhere", check=2)
    assert "no registered server in operation matches --limit 'nowhere'" in run_.stderr


def test_one_job_per_server_at_a_time(env):
    first = start_detached(env)
    second = run(env, ("budi", "backup"), "jobs", "start", "verify", "--limit", "lab1", "--json", check=3)
    message = json.loads(second.stdout)["message"]
    assert f"is busy with job {first['id']} (backup by budi)" in message, message
    followed = run(env, ("budi", "read"), "jobs", "follow", first["id"], "--json", check=0)
    assert json.loads(followed.stdout)["status"] == "succeeded"
    # Once it ended, the server is free again.
    run(env, ("budi", "backup"), "jobs", "start", "verify", "--limit", "lab1", "--item", "app-pg", check=0)


def test_a_service_killed_mid_job_leaves_the_run_interrupted_at_restart(env):
    job = start_detached(env)
    wait_until(
        "the job's running report",
        lambda: json.loads(run(env, ("budi", "read"), "jobs", "show", job["id"], "--json").stdout)["run_id"],
    )
    run_id = json.loads(run(env, ("budi", "read"), "jobs", "show", job["id"], "--json", check=0).stdout)[
        "run_id"
    ]
    report = env["state"] / "runs" / run_id / "report.json"
    wait_until("the running report on disk", lambda: json.loads(report.read_text())["status"] == "running")
    env["service"].stop(signal.SIGKILL)
    env["service"].start()
    doc = json.loads(report.read_text())
    assert (
        doc["status"] == "interrupted" and "the service stopped while this run was running" in doc["errors"]
    )
    assert recorded_runs(env)[run_id].status == "interrupted"
    # Nothing of the killed job goes on writing, and the restarted service runs the next one.
    run(env, ("budi", "backup"), "jobs", "start", "backup", "--limit", "lab1", "--item", "app-pg", check=0)


# --------------------------------------------------------------------------- SOP B: a backup request


def test_a_backup_request_with_its_letter_goes_through_every_step_with_an_acting_approver(env, tmp_path):
    import datetime as dt
    import hashlib

    letter = tmp_path / "surat-permohonan.pdf"
    letter.write_bytes(b"%PDF-1.4\n% Surat permohonan pencadangan sebelum migrasi\n%%EOF\n")
    filed = run(
        env,
        ("ani", "request"),
        *("request", "new", "--kind", "backup", "--procedure", "backup_restore", "--skpd", "dinkes"),
        *("--contact", "ani@dinkes.go.id", "--reason", "migration", "--reason-text", "before the move"),
        *("--item", "LAB-001:app-pg", "--item", "LAB-001:dokumen", "--letter", str(letter), "--json"),
        check=0,
    )
    doc = json.loads(filed.stdout)
    rid, (attached,) = doc["id"], doc["letters"]
    digest = hashlib.sha256(letter.read_bytes()).hexdigest()
    assert doc["kind"] == "backup" and attached["sha256"] == digest
    run(env, ("sri", "approve"), "request", "receive", rid, check=0)

    # An acting approver (Plh.) approves only inside the delegation's time.
    now = dt.datetime.now(dt.UTC)
    later = service_admin(
        env,
        *("delegation", "grant", "--for", "sri", "--to", "tono", "--reason", "SPT 800/42: sri away"),
        *(
            "--starts",
            (now + dt.timedelta(hours=1)).isoformat(),
            "--until",
            (now + dt.timedelta(hours=2)).isoformat(),
        ),
    )
    assert later.returncode == 0, later.stderr
    early = run(env, ("tono", "approve"), "request", "approve", rid, check=3)
    assert "needs the role 'approver'" in early.stderr
    granted = service_admin(
        env,
        *("delegation", "grant", "--for", "sri", "--to", "tono", "--reason", "SPT 800/43: sri away today"),
        *("--until", (now + dt.timedelta(hours=1)).isoformat()),
    )
    assert granted.returncode == 0, granted.stderr
    approved = json.loads(run(env, ("tono", "approve"), "request", "approve", rid, "--json", check=0).stdout)
    assert approved["approvals"][-1]["acting_for"] == "sri"

    # Planned (a window, no backups: its run makes them), then carried out as a job.
    budi_restore = service_admin(env, "admin", "token", "create", "budi", "--scope", "restore")
    env["tokens"][("budi", "restore")] = budi_restore.stdout.strip()
    run(env, ("budi", "restore"), "request", "plan", rid, "--window", "tonight 22:00 WIB", check=0)
    result = run(env, ("budi", "backup"), "request", "backup", rid, "--json", check=0)
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded" and report["request_id"] == rid
    assert {i["item"] for i in report["items"]} == {"app-pg", "dokumen"}
    assert all(i["ok"] and i["verification"]["ok"] for i in report["items"])
    assert all(i["kind"] == "on_request" and i["request_id"] == rid for i in report["items"])
    again = run(env, ("budi", "backup"), "request", "backup", rid, check=3)
    assert "every item of request" in again.stderr  # nothing is missing: nothing more runs

    shown = json.loads(run(env, ("ani", "request"), "request", "show", rid, "--json", check=0).stdout)
    made = {i["asset_id"] + ":" + i["item"]: i["backup_id"] for i in report["items"]}
    assert shown["backups_made"] == made
    run(env, ("ani", "request"), "request", "confirm", rid, "--note", "the backup is there", check=0)
    closed = json.loads(run(env, ("sri", "approve"), "request", "close", rid, "--json", check=0).stdout)
    assert [s["step"] for s in closed["steps"]] == [
        "filed",
        "received",
        "approved",
        "planned",
        "executed",
        "confirmed",
        "closed",
    ]

    # The letter comes back byte for byte, and its hash is on the audit chain, which holds.
    saved = tmp_path / "back.pdf"
    run(env, ("ani", "request"), "request", "letter", rid, "-o", str(saved), check=0)
    assert saved.read_bytes() == letter.read_bytes()
    store = Store(f"sqlite:///{env['state'] / 'pulih.db'}", upgrade=False)
    try:
        entries = [e for e in store.audit_entries() if e["request_id"] == rid]
    finally:
        store.engine.dispose()
    (entry,) = [json.loads(e["payload"]) for e in entries if e["action"] == "request.letter"]
    assert entry["sha256"] == digest
    assert any(e["action"] == "request_backup.allowed" for e in entries)
    verified = json.loads(run(env, ("rita", "read"), "audit", "verify", "--json", check=0).stdout)
    assert verified["problems"] == [], verified
    form = run(env, ("ani", "request"), "request", "form", rid, "--lang", "en", check=0).stdout
    assert "Backup Request Form" in form and "Plh. tono for sri" in form and digest in form


def test_the_audit_chain_is_anchored_on_the_repository_host_through_its_receiver(env):
    """Every head goes to the repository host's anchor log, signed, through the receiver; the
    log takes appends only (chattr +a: not even root rewrites it) and the receiver refuses a
    head that is not after the last; a truncated chain is named against it, and an anchor that
    cannot be reached fails the check naming it. Last: it tampers with the store and stops
    the repository host."""
    repo = env["lab"].repository_host
    log = Path(repo.repository_path) / lab_mod.ANCHOR_FILE
    checked = json.loads(run(env, ("rita", "read"), "audit", "verify", "--json", check=0).stdout)
    assert checked["status"] == "intact" and checked["anchors"] == [
        f"anchor on the repository host {repo.address}:{repo.ssh_port}"
    ]
    heads = [json.loads(line) for line in log.read_text().splitlines()]
    assert heads and all(h["signature"].startswith("-----BEGIN SSH SIGNATURE") for h in heads)
    assert (
        "a"
        in subprocess.run(["lsattr", str(log)], capture_output=True, text=True, check=True).stdout.split()[0]
    )
    with pytest.raises(PermissionError):
        log.open("w")  # root too: the filesystem takes appends only
    older = json.dumps({**heads[0], "seq": 1})
    controller = ["ssh", "-i", str(env["lab"].private_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                  "-o", f"UserKnownHostsFile={env['lab'].known_hosts}", "-p", str(repo.ssh_port),
                  f"{lab_mod.RECEIVER_ACCOUNT}@{repo.address}"]  # fmt: skip
    refused = subprocess.run(
        [*controller, "anchor-append"], input=older, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 3 and "the anchor only grows" in refused.stderr
    # The chain's tail cut off in the store: the anchor still holds its head.
    store = Store(f"sqlite:///{env['state'] / 'pulih.db'}", upgrade=False)
    try:
        with store.engine.begin() as conn:
            last = conn.execute(sa.text("SELECT max(seq) FROM pulih_audit")).scalar()
            conn.execute(sa.text("DELETE FROM pulih_audit WHERE seq = :s"), {"s": last})
    finally:
        store.engine.dispose()
    cut = json.loads(run(env, ("rita", "read"), "audit", "verify", "--json", check=1).stdout)
    assert any(p["seq"] == last and "truncated" in p["message"] for p in cut["problems"]), cut
    # The repository host down: the check fails naming the anchor, never falls back to the chain.
    sshd = next(p for p in env["lab"].procs if p.name == f"{repo.name}/sshd")
    assert lab_mod.stop_pid(sshd.pid, "sshd")
    down = json.loads(run(env, ("rita", "read"), "audit", "verify", "--json", check=1).stdout)
    assert any(f"anchor on the repository host {repo.address}" in p["message"] for p in down["problems"]), (
        down
    )


def service_admin(env, *args):
    """A command as the service's admin (root, on the socket by its uid)."""
    return env["service"].admin(*args)
