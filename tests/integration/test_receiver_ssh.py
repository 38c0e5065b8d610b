"""The receiver behind a real sshd, as the repository host runs it: an unprivileged account
whose authorized_keys gives each key `restrict,command=` and nothing else. A data server's key
opens no shell, runs no other command, gets no terminal and no forwarding; what it stores comes
back byte for byte and belongs to the receiver's account."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import lab as lab_mod
from tests.conftest import PROJECT

pytestmark = pytest.mark.lab

ACCOUNT = "pulih-rcv-test"
ADDRESS = "127.0.51.10"
BACKUP = "20261201T080000Z-3c4d"
RECEIVER = PROJECT / "roles" / "pulih_common" / "files" / "pulih_receiver.py"


@pytest.fixture(scope="module")
def repo_host():
    created = False
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        # A shell is needed to run the forced command; `restrict` is what takes the shell away.
        # The password '*' matches nothing and, unlike useradd's '!', is no lock that sshd refuses.
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", "--password", "*", ACCOUNT],
            check=True,
        )
        created = True
    account = pwd.getpwnam(ACCOUNT)
    base = Path(tempfile.mkdtemp(prefix="pulih-receiver-", dir="/tmp"))
    base.chmod(0o755)
    sshd_pid = None
    try:
        shutil.copy(RECEIVER, base / "pulih_receiver.py")
        (base / "pulih_receiver.py").chmod(0o755)
        repo = base / "repo"
        repo.mkdir()
        os.chown(repo, account.pw_uid, account.pw_gid)
        keys = {}
        for name in ("dc1", "controller", "host"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(base / name)],
                check=True,
            )
            keys[name] = base / name
        command = f"/usr/bin/python3 {base / 'pulih_receiver.py'} --repository {repo}"
        lines = [
            f'restrict,command="{command} --asset DC-1" {(base / "dc1.pub").read_text().strip()}',
            f'restrict,command="{command} --controller" {(base / "controller.pub").read_text().strip()}',
        ]
        (base / "authorized_keys").write_text("\n".join(lines) + "\n")
        port = lab_mod._free_port(ADDRESS)
        (base / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {ADDRESS}:{port}",
                    f"HostKey {base / 'host'}",
                    f"PidFile {base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {base / 'authorized_keys'}",
                    f"AllowUsers {ACCOUNT}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        subprocess.run(
            ["/usr/sbin/sshd", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")], check=True
        )
        sshd_pid = lab_mod._read_pid(base / "sshd.pid", "receiver sshd")
        lab_mod._wait_for_port(ADDRESS, port, "receiver sshd", base / "sshd.log")
        (base / "known_hosts").write_text(f"[{ADDRESS}]:{port} {(base / 'host.pub').read_text().strip()}\n")
        yield {"base": base, "repo": repo, "port": port, "keys": keys, "uid": account.pw_uid}
    finally:
        if sshd_pid is not None:
            lab_mod.stop_pid(sshd_pid, "sshd")
        shutil.rmtree(base, ignore_errors=True)
        if created:
            subprocess.run(["userdel", ACCOUNT], check=False)


def ssh(host, key: str, *args: str, stdin: bytes = b"", options: tuple[str, ...] = ()):
    argv = [
        "ssh",
        *("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"),
        *("-o", f"UserKnownHostsFile={host['base'] / 'known_hosts'}", "-o", "ControlPath=none"),
        *("-i", str(host["keys"][key]), "-p", str(host["port"]), *options),
        f"{ACCOUNT}@{ADDRESS}",
        *args,
    ]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)


def test_a_data_servers_key_opens_no_shell_and_runs_no_other_command(repo_host):
    for command in ((), ("id",), ("sh", "-c", "'cat /etc/passwd'"), ("/bin/bash",)):
        run = ssh(repo_host, "dc1", *command)
        assert run.returncode == 2, run.stderr
        assert b"pulih receiver:" in run.stderr and run.stdout == b""
    # No terminal: sshd refuses the PTY, and no shell answers.
    run = ssh(repo_host, "dc1", "id", options=("-tt",))
    assert run.returncode != 0 and b"PTY allocation request failed" in run.stderr
    assert b"uid=" not in run.stdout + run.stderr
    # No forwarding of any kind: not even to the repository host's own sshd.
    run = ssh(repo_host, "dc1", options=("-W", f"{ADDRESS}:{repo_host['port']}"))
    assert run.returncode != 0 and b"SSH-2.0" not in run.stdout
    assert b"administratively prohibited" in run.stderr or b"forwarding failed" in run.stderr, run.stderr


def test_a_backup_pushed_over_ssh_comes_back_byte_for_byte_and_is_the_receivers(repo_host):
    data = os.urandom(2 << 20)
    stored = json.loads(
        ssh(repo_host, "dc1", "store", "simpeg", BACKUP, "database.sql.zst", stdin=data).stdout
    )
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    doc = {
        "backup_id": BACKUP,
        "asset_id": "DC-1",
        "item": "simpeg",
        "artifacts": [{"name": "database.sql.zst", "sha256": stored["sha256"], "size": len(data)}],
    }
    run = ssh(repo_host, "dc1", "publish", "simpeg", BACKUP, stdin=json.dumps(doc).encode())
    assert run.returncode == 0, run.stderr
    assert ssh(repo_host, "dc1", "fetch", "simpeg", BACKUP, "database.sql.zst").stdout == data
    published = repo_host["repo"] / "DC-1" / "simpeg" / BACKUP
    assert {p.stat().st_uid for p in [published, *published.iterdir()]} == {repo_host["uid"]}
    # The controller's key lists it; the data server's key cannot overwrite or remove it.
    listed = json.loads(ssh(repo_host, "controller", "list").stdout)["backups"]
    assert [b["backup_id"] for b in listed] == [BACKUP]
    assert ssh(repo_host, "dc1", "store", "simpeg", BACKUP, "database.sql.zst", stdin=b"x").returncode == 3
    assert ssh(repo_host, "dc1", "abort", "simpeg", BACKUP).returncode == 3
    assert ssh(repo_host, "dc1", "rm", "-rf", str(published)).returncode == 2
    assert (published / "database.sql.zst").read_bytes() == data
