"""The test lab and the register audit, end to end: real sshd, PostgreSQL, MariaDB and
ansible-playbook over SSH. The faults at the end (a database down, a host down) come last
because they break the lab they run on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import lab as lab_mod
from tests.conftest import PROJECT

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    inventory = tmp_path_factory.mktemp("lab-inventory")
    lab = lab_mod.Lab(3, inventory_dir=inventory)
    state = lab.up()
    print(f"\nlab of 3 hosts + repository up in {state.seconds_to_start:.1f}s")
    yield state, inventory
    lab.down()
    left = [p for p in state.procs if lab_mod._runs(p.pid, p.program)]
    assert not left, f"processes left running: {left}"


def ssh(state, host, command, known_hosts=None):
    return subprocess.run(
        ["ssh", "-i", str(state.private_key), "-o", f"UserKnownHostsFile={known_hosts or state.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(host.ssh_port),
         f"{state.user}@{host.address}", command],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def playbook(inventory, *args):
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "playbooks/register_audit.yml", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=300,
        check=False,
    )


def test_each_host_is_its_own_sshd_with_a_checked_host_key(lab):
    state, _ = lab
    for host in state.hosts:
        result = ssh(state, host, "echo $PULIH_LAB_HOST $SSH_CONNECTION")
        assert result.returncode == 0, result.stderr
        name, _client, _cport, server, port = result.stdout.split()
        assert (name, server, int(port)) == (host.name, host.address, host.ssh_port)
    assert len({h.address for h in state.hosts}) == len(state.hosts)


def test_a_wrong_host_key_is_refused(lab, tmp_path):
    state, _ = lab
    lab1, lab2 = state.hosts[0], state.hosts[1]
    # lab2's key recorded for lab1's address: ssh must refuse, not ask or ignore.
    known = tmp_path / "known_hosts"
    line = next(x for x in state.known_hosts.read_text().splitlines() if f":{lab2.ssh_port} " in x)
    known.write_text(
        line.replace(f"[{lab2.address}]:{lab2.ssh_port}", f"[{lab1.address}]:{lab1.ssh_port}") + "\n"
    )
    result = ssh(state, lab1, "true", known_hosts=known)
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_each_host_has_its_own_postgresql_and_mariadb(lab):
    state, _ = lab
    env = {**os.environ, "PGPASSWORD": state.db_password, "MYSQL_PWD": state.db_password}
    seen = set()
    for host in [h for h in state.hosts if not h.is_repository]:
        pg = subprocess.run(
            [
                "psql",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                host.address,
                "-p",
                str(host.pg_port),
                "-U",
                lab_mod.DB_USER,
                "-d",
                f"app_{host.name}",
                "-c",
                "SELECT current_setting('data_directory') || '|' || count(*) FROM pegawai",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert pg.returncode == 0, pg.stderr
        my = subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "-N",
                "-h",
                host.address,
                "-P",
                str(host.mariadb_port),
                "-u",
                lab_mod.DB_USER,
                f"app_{host.name}",
                "-e",
                "SELECT CONCAT(@@datadir, '|', COUNT(*)) FROM kunjungan",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert my.returncode == 0, my.stderr
        for answer in (pg.stdout.strip(), my.stdout.strip()):
            datadir, rows = answer.rsplit("|", 1)
            assert rows == "100"
            assert f"/hosts/{host.name}/" in datadir
            seen.add(datadir)
    assert len(seen) == 6


def test_the_lab_inventory_is_a_valid_register(lab):
    _, inventory = lab
    result = subprocess.run(
        ["pulih", "register", "check", "-i", str(inventory), "--json"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hosts"] == ["lab1", "lab2", "lab3", "labrepo"]
    lab_vars = yaml.safe_load((inventory / lab_mod.LAB_VARS_FILE).read_text())
    assert (inventory / lab_mod.LAB_VARS_FILE).stat().st_mode & 0o077 == 0, (
        "the lab's password file is private"
    )
    assert lab_vars["ansible_ssh_args"].count("StrictHostKeyChecking=yes") == 1


def test_a_second_lab_on_the_same_inventory_is_refused(lab):
    _, inventory = lab
    with pytest.raises(lab_mod.LabError, match="already running"):
        lab_mod.Lab(1, inventory_dir=inventory).up()


def test_register_audit_over_ssh_finds_no_drift_on_a_true_register(lab, tmp_path):
    _, inventory = lab
    report = tmp_path / "audit.json"
    result = playbook(inventory, "-e", f"pulih_register_report_path={report}")
    assert result.returncode == 0, result.stdout[-3000:]
    doc = json.loads(report.read_text())
    assert sorted(doc["hosts"]) == ["lab1", "lab2", "lab3", "labrepo"]
    assert all(entry["drift"] == [] for entry in doc["hosts"].values()), doc
    assert result.stdout.count("matches the register") == 4


def test_password_never_reaches_the_output(lab):
    state, inventory = lab
    result = playbook(inventory, "-v", "--limit", "lab1")
    assert result.returncode == 0
    assert state.db_password not in result.stdout + result.stderr


def test_limit_by_skpd_group(lab, tmp_path):
    _, inventory = lab
    report = tmp_path / "audit.json"
    result = playbook(inventory, "--limit", "skpd_bkpsdm", "-e", f"pulih_register_report_path={report}")
    assert result.returncode == 0
    assert sorted(json.loads(report.read_text())["hosts"]) == ["lab2"]


def receiver_installer(inventory):
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "playbooks/repository.yml"],
        capture_output=True, text=True, cwd=PROJECT, timeout=300, check=False,
    )  # fmt: skip


def test_the_receiver_installer_makes_the_lab_exactly_as_built_and_remakes_it(lab):
    """README's key table, by the product's own installer (playbooks/repository.yml): on the lab
    as built it changes no key line (the lab is what it makes), and with the receiver and its
    authorized_keys gone it makes them again, byte for byte, and a server's key works with them."""
    state, inventory = lab
    keys, program = state.receiver_keys, state.receiver_program
    built = keys.read_text()
    first = receiver_installer(inventory)
    assert first.returncode == 0, first.stdout[-3000:]
    assert keys.read_text() == built, "the installer's authorized_keys differs from the lab's"
    keys.unlink()
    program.unlink()
    again = receiver_installer(inventory)
    assert again.returncode == 0, again.stdout[-3000:]
    assert keys.read_text() == built and program.read_bytes() == lab_mod.RECEIVER.read_bytes()
    assert (keys.stat().st_uid, keys.stat().st_mode & 0o022) == (0, 0), "the account could edit its keys"
    servers = [h for h in state.hosts if not h.is_repository]
    lines = built.splitlines()
    assert len(lines) == len(servers) + 1 and all(line.startswith('restrict,command="') for line in lines)
    repo = state.repository_host
    assert repo is not None
    listed = subprocess.run(
        ["ssh", "-i", str(state.receiver_key(servers[0])), "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={state.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-p", str(repo.ssh_port), f"{lab_mod.RECEIVER_ACCOUNT}@{repo.address}",
         "list", "app-pg"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert listed.returncode == 0 and json.loads(listed.stdout)["backups"] == [], listed.stderr


def test_a_database_down_is_drift_and_the_other_hosts_complete(lab, tmp_path):
    state, inventory = lab
    postmaster = next(p for p in state.procs if p.name == "lab1/postgresql")
    assert lab_mod.stop_pid(postmaster.pid, "postgres", signal.SIGINT)
    report = tmp_path / "audit.json"
    result = playbook(inventory, "-e", f"pulih_register_report_path={report}")
    assert result.returncode == 0, "report-only by default"
    hosts = json.loads(report.read_text())["hosts"]
    assert [d["kind"] for d in hosts["lab1"]["drift"]] == ["engine_unreachable"]
    assert hosts["lab1"]["drift"][0]["item"] == "app-pg"
    assert hosts["lab2"]["drift"] == hosts["lab3"]["drift"] == []
    strict = playbook(inventory, "-e", "pulih_register_fail_on_drift=true")
    assert strict.returncode == 2
    assert "lab1 drifts from its register entry: cannot query postgresql at" in strict.stdout


def test_a_host_down_is_reported_as_not_audited(lab, tmp_path):
    state, inventory = lab
    sshd = next(p for p in state.procs if p.name == "lab3/sshd")
    sessions = lab_mod._children(sshd.pid)
    assert lab_mod.stop_pid(sshd.pid, "sshd")
    # A host that is down has no open connections either: an SSH master kept from an
    # earlier run would still reach it through sessions the listener had forked.
    for pid in [*lab_mod._control_masters(state.control_dir), *sessions]:
        lab_mod.stop_pid(pid, "ssh")
    report = tmp_path / "audit.json"
    result = playbook(inventory, "--limit", "lab2,lab3", "-e", f"pulih_register_report_path={report}")
    assert result.returncode == 4, "unreachable host"
    doc = json.loads(report.read_text())
    assert doc["not_audited"] == ["lab3"]
    assert sorted(doc["hosts"]) == ["lab2"]


def test_down_stops_every_process_by_pid_including_control_masters(tmp_path):
    inventory = tmp_path / "inv"
    state = lab_mod.Lab(1, inventory_dir=inventory, repository=False).up()
    ping = subprocess.run(
        ["ansible", "-i", str(inventory), "all", "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout
    masters = list(lab_mod._control_masters(state.control_dir))
    assert len(masters) == 1, "ansible left a ControlPersist master in the lab's folder"
    pids = [p.pid for p in state.procs] + masters
    assert all(lab_mod._alive(pid) for pid in pids)
    down = subprocess.run(
        ["python", "-m", "tests.lab", "down", "--inventory-dir", str(inventory)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert "ssh control master" in down.stderr
    assert not [pid for pid in pids if lab_mod._alive(pid)]
    assert not Path(state.root).exists()
    assert not (inventory / lab_mod.REGISTER_FILE).exists()
