"""README "Real servers, step by step", followed on one lab (issue 13). The data server logs
in as an account of its own (not root) with the controller's key, known hosts taken from the
servers' host key files, not on first use; `playbooks/repository.yml` makes its key for the
receiver; the database passwords are in an Ansible Vault file, opened with
ANSIBLE_VAULT_PASSWORD_FILE; a host_vars file overrides the interpreter; the database
accounts hold exactly the GRANTs of the README's ```sql blocks (read from the README itself,
so a GRANT too few there fails here); and the agent becomes root (sudo) for a tree owned by
root and an application account. Plain ansible-playbook backs everything up (each backup then
verified), with only the backup's and the verification's GRANTs, and restores it in place once
the restore's are added: rows, views, routines, triggers, events, owners and privileges back,
an application's session ended by the swap, the files with their owners."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import lab as lab_mod
from tests.conftest import PROJECT
from tests.integration import plain

pytestmark = pytest.mark.lab

ACCOUNT = "pulih-lab-data"  # the data server's account (the README's 'pulih'); the lab's is root
APP_USER = "www-data"  # an application's account, owning files of a tree under root's
SECTION = "## Real servers, step by step"
# The MariaDB account as the README names it, and as the agent reaches the lab's server.
README_ACCOUNT = "'pulih_backup'@'localhost'"
LAB_ACCOUNT = "'pulih_backup'@'127.0.0.0/255.0.0.0'"
ITEMS = ["simpeg", "simpus", "berkas"]


def readme_sql() -> dict[str, str]:
    """The section's ```sql blocks, by their first line (`-- PostgreSQL, backup ...`)."""
    text = (PROJECT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for body in re.findall(r"^```sql\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        first = body.splitlines()[0]
        blocks[first.removeprefix("-- ").split(":")[0].strip()] = body
    return blocks


def run(argv, *, env=None, timeout=600, check=True, cwd=PROJECT):
    return plain.run(argv, cwd=cwd, env=env, timeout=timeout, check=check)


def fingerprint(public_key_line: str) -> str:
    got = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=public_key_line, capture_output=True, text=True, check=True
    )
    return got.stdout.split()[1]


def as_account(home: Path) -> None:
    """The data server's account (README step 1): no password that logs in, a shell for Ansible,
    its home (this lab's folder: Ansible's remote temporary files, the agent, its own key)."""
    try:
        pwd.getpwnam(ACCOUNT)
        run(["usermod", "--home", home, ACCOUNT])
    except KeyError:
        useradd = ["useradd", "--system", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh"]
        run([*useradd, "--password", "*", ACCOUNT])
    home.mkdir(mode=0o700)
    entry = pwd.getpwnam(ACCOUNT)
    os.chown(home, entry.pw_uid, entry.pw_gid)


def chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.lchown(p, entry.pw_uid, entry.pw_gid)


def let_account_in(state, host, home: Path) -> None:
    """The controller's public key in the account's authorized_keys, and the lab's sshd (which
    lets in root only) told to let the account in with it: its config, then SIGHUP by PID."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    shutil.copy(state.private_key.with_suffix(".pub"), ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    chown_tree(ssh, ACCOUNT)
    config = Path(state.root) / "hosts" / host.name / "sshd_config"
    text = config.read_text().replace(f"AllowUsers {state.user}\n", f"AllowUsers {state.user} {ACCOUNT}\n")
    config.write_text(text + f"Match User {ACCOUNT}\n    AuthorizedKeysFile .ssh/authorized_keys\n")
    sshd = next(p for p in state.procs if p.name == f"{host.name}/sshd")
    os.kill(sshd.pid, signal.SIGHUP)  # sshd re-executes itself with the new config, same PID


def known_hosts_line(state, host) -> str:
    """README step 1: the host key as ssh-keyscan sees it, taken only when its fingerprint is the
    one the server's own host key file (its console) shows."""
    deadline = time.monotonic() + 60
    while True:
        scan = subprocess.run(
            ["ssh-keyscan", "-T", "10", "-t", "ed25519", "-p", str(host.ssh_port), host.address],
            capture_output=True,
            text=True,
            check=False,
        )
        if scan.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    line = scan.stdout.strip()
    console = (Path(state.root) / "hosts" / host.name / lab_mod.HOST_KEY_PUB).read_text()
    assert fingerprint(line) == fingerprint(console), f"{host.name}: the scanned key is not the server's"
    assert line.startswith(f"[{host.address}]:{host.ssh_port} ssh-ed25519 ")
    return line


def register(state, tree: Path) -> dict:
    """The lab's register with lab1 as a real server: its own account, the README's item names."""
    doc = lab_mod.register_document(state)
    lab1 = state.host("lab1")
    entry = next(a for a in doc["assets"] if a["hostname"] == "lab1")
    entry["ssh_user"] = ACCOUNT
    entry["data"] = [
        {
            "name": "simpeg",
            "engine": "postgresql",
            "database": "simpeg",
            "host": lab1.address,
            "port": lab1.pg_port,
            "user": "pulih_backup",
            "password_var": "vault_simpeg_pg_password",
        },
        {
            "name": "simpus",
            "engine": "mariadb",
            "database": "simpus",
            "host": lab1.address,
            "port": lab1.mariadb_port,
            "user": "pulih_backup",
            "password_var": "vault_simpus_db_password",
        },
        {"name": "berkas", "engine": "files", "path": str(tree)},
    ]
    return doc


def databases(state, host) -> None:
    """An application's databases as they are on real servers: owned by its own role, with a
    view, a routine, privileges for the application's account; MariaDB objects defined by the
    application's account. Then the lab's superuser account 'pulih_backup' loses its rights."""
    state.psql(
        host,
        """
        ALTER DATABASE app_lab1 RENAME TO simpeg;
        CREATE ROLE simpeg_owner NOLOGIN;
        CREATE ROLE simpeg_app LOGIN;
        ALTER DATABASE simpeg OWNER TO simpeg_owner;
        \\connect simpeg
        ALTER TABLE pegawai OWNER TO simpeg_owner;
        GRANT SELECT, INSERT, UPDATE, DELETE ON pegawai TO simpeg_app;
        CREATE VIEW pegawai_nama AS SELECT nama FROM pegawai;
        CREATE FUNCTION jumlah_pegawai() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM pegawai';
        ALTER VIEW pegawai_nama OWNER TO simpeg_owner;
        ALTER FUNCTION jumlah_pegawai() OWNER TO simpeg_owner;
        \\connect postgres
        ALTER ROLE pulih_backup NOSUPERUSER;
        """,
    )
    state.mariadb(
        host,
        """
        CREATE DATABASE simpus;
        RENAME TABLE app_lab1.kunjungan TO simpus.kunjungan;
        DROP DATABASE app_lab1;
        CREATE USER 'simpus_app'@'localhost';
        GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON simpus.* TO 'simpus_app'@'localhost';
        USE simpus;
        CREATE DEFINER='simpus_app'@'localhost' VIEW kunjungan_2026 AS
          SELECT id, pasien FROM kunjungan WHERE tanggal >= '2026-01-01';
        CREATE DEFINER='simpus_app'@'localhost' TRIGGER kunjungan_rapi BEFORE INSERT ON kunjungan
          FOR EACH ROW SET NEW.pasien = TRIM(NEW.pasien);
        CREATE DEFINER='simpus_app'@'localhost' PROCEDURE jumlah_kunjungan() SELECT COUNT(*) FROM kunjungan;
        CREATE DEFINER='simpus_app'@'localhost' EVENT bersihkan ON SCHEDULE EVERY 1 DAY DISABLE
          DO DELETE FROM kunjungan WHERE id < 0;
        REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'pulih_backup'@'localhost';
        REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'pulih_backup'@'127.0.0.0/255.0.0.0';
        """,
    )


def grant(state, host, blocks: dict[str, str], operation: str) -> None:
    """The README's GRANTs for `operation`, as a DBA pastes them (the MariaDB ones also for the
    account as the lab's server sees the agent)."""
    state.psql(host, blocks[f"PostgreSQL, {operation}"])
    sql = blocks[f"MariaDB, {operation}"]
    state.mariadb(host, sql + "\n" + sql.replace(README_ACCOUNT, LAB_ACCOUNT))


def mariadb_objects(state, host) -> str:
    return state.mariadb(
        host,
        "SELECT GROUP_CONCAT(o ORDER BY o) FROM ("
        " SELECT CONCAT('trigger ', TRIGGER_NAME, ' ', DEFINER) o FROM information_schema.TRIGGERS"
        "  WHERE TRIGGER_SCHEMA = 'simpus'"
        " UNION ALL SELECT CONCAT('view ', TABLE_NAME, ' ', DEFINER) FROM information_schema.VIEWS"
        "  WHERE TABLE_SCHEMA = 'simpus'"
        " UNION ALL SELECT CONCAT('routine ', ROUTINE_NAME, ' ', DEFINER) FROM information_schema.ROUTINES"
        "  WHERE ROUTINE_SCHEMA = 'simpus'"
        " UNION ALL SELECT CONCAT('event ', EVENT_NAME, ' ', DEFINER) FROM information_schema.EVENTS"
        "  WHERE EVENT_SCHEMA = 'simpus') x",
    ).strip()


def postgresql_objects(state, host) -> str:
    return state.psql(
        host,
        "SELECT string_agg(o, ', ' ORDER BY o) FROM ("
        " SELECT 'table ' || tablename || ' ' || tableowner AS o FROM pg_tables WHERE schemaname = 'public'"
        " UNION ALL SELECT 'view ' || viewname || ' ' || viewowner FROM pg_views WHERE schemaname = 'public'"
        " UNION ALL SELECT 'function ' || proname || ' ' || pg_get_userbyid(proowner) FROM pg_proc"
        "  WHERE pronamespace = 'public'::regnamespace"
        " UNION ALL SELECT 'acl ' || array_to_string(relacl, ' ') FROM pg_class WHERE relname = 'pegawai'"
        " UNION ALL SELECT 'database owner ' || pg_get_userbyid(datdba) FROM pg_database"
        "  WHERE datname = current_database()) x",
        "simpeg",
    ).strip()


def tree_state(root: Path) -> dict[str, tuple[str, str, str, str]]:
    """Every entry's owner, group, mode and content digest (owners are the point here)."""
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        info = p.lstat()
        data = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (
            pwd.getpwuid(info.st_uid).pw_name,
            grp.getgrgid(info.st_gid).gr_name,
            oct(info.st_mode & 0o7777),
            data,
        )
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if shutil.which("sudo") is None:
        pytest.fail("sudo is not installed: the data server's account becomes root with it (README step 6)")
    base = tmp_path_factory.mktemp("real")
    lab = lab_mod.Lab(1, inventory_dir=base / "lab")
    state = lab.up()
    sudoers = Path("/etc/sudoers.d") / ACCOUNT
    try:
        lab1, repo = state.host("lab1"), state.host("labrepo")
        root = Path(state.root)
        home = root / "hosts" / "lab1" / "home"
        as_account(home)
        # README step 6: the account may become root (and its key, made in step 2, stays its own).
        sudoers.write_text(f"{ACCOUNT} ALL=(root) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        run(["visudo", "-cf", sudoers])
        let_account_in(state, lab1, home)
        # A tree of root's and an application's, which the account cannot even enter.
        tree = root / "hosts" / "lab1" / "srv" / "berkas"
        (tree / "rahasia").mkdir(parents=True)
        (tree / "catatan.txt").write_text("hanya root\n")
        (tree / "rahasia" / "surat.txt").write_text("Surat rahasia\n" * 40)
        (tree / "rahasia" / "lampiran.txt").write_text("Lampiran\n")
        chown_tree(tree / "rahasia", APP_USER)
        tree.chmod(0o700)
        (tree / "catatan.txt").chmod(0o600)
        (tree / "rahasia").chmod(0o700)
        for name in ("surat.txt", "lampiran.txt"):
            (tree / "rahasia" / name).chmod(0o640)
        assert run(["runuser", "-u", ACCOUNT, "--", "ls", tree / "rahasia"], check=False).returncode != 0

        # Step 1: the controller's key and known hosts (the lab's key is the controller's).
        controller = base / "controller"
        controller.mkdir(mode=0o700)
        known_hosts = controller / "known_hosts"
        known_hosts.write_text("".join(known_hosts_line(state, h) + "\n" for h in (lab1, repo)))
        # Step 3: the passwords in a vault file, its password in a file named by the environment.
        vault_pass = controller / "vault-pass"
        vault_pass.write_text("vault password of the test\n")
        vault_pass.chmod(0o600)
        inventory = base / "inventory"
        (inventory / "group_vars" / "all").mkdir(parents=True)
        (inventory / "host_vars").mkdir()
        (inventory / "datacenter.asset_register.yml").write_text(
            yaml.safe_dump(register(state, tree), sort_keys=False)
        )
        settings = {
            "ansible_ssh_private_key_file": str(state.private_key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes",
            "pulih_common_receiver_controller_identity": str(state.private_key),
            "pulih_common_receiver_controller_known_hosts": str(known_hosts),
            "pulih_common_agent_become": True,
            # The lab's own places, where a real server takes the defaults (/var/lib/pulih...).
            "ansible_control_path_dir": str(state.control_dir),  # the lab's down stops the masters
            "pulih_common_agent_dir": str(home),
            "pulih_common_receiver_identity": str(home / ".ssh" / "id_ed25519"),
            "pulih_common_receiver_known_hosts": str(home / ".ssh" / "known_hosts"),
            "pulih_common_receiver_user": lab_mod.RECEIVER_ACCOUNT,
            "pulih_common_receiver_home": "/",
            "pulih_common_receiver_authorized_keys": str(state.receiver_keys),
            "pulih_common_receiver_program": str(state.receiver_program),
            "pulih_common_repository_host_key": str(root / "hosts" / repo.name / lab_mod.HOST_KEY_PUB),
        }
        (inventory / "group_vars" / "all" / "vars.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
        vault = inventory / "group_vars" / "all" / "vault.yml"
        vault.write_text(
            yaml.safe_dump(
                {"vault_simpeg_pg_password": state.db_password, "vault_simpus_db_password": state.db_password}
            )
        )
        environ = {**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_pass), "ANSIBLE_NOCOLOR": "1"}
        run(["ansible-vault", "encrypt", vault], env=environ)
        # Step 4: this host's interpreter, over the one the register's plugin sets for all.
        (inventory / "host_vars" / "lab1.yml").write_text("ansible_python_interpreter: /usr/bin/python3.11\n")

        # Step 5: the application's databases, and the accounts with the README's GRANTs for
        # backups and their verification only (the restore's come with the restore).
        blocks = readme_sql()
        databases(state, lab1)
        grant(state, lab1, blocks, "backup")
        grant(state, lab1, blocks, "verification by test restore")
        yield {
            "state": state,
            "lab1": lab1,
            "inventory": inventory,
            "environ": environ,
            "home": home,
            "tree": tree,
            "blocks": blocks,
            "known_hosts": known_hosts,
        }
    finally:
        sudoers.unlink(missing_ok=True)
        lab.down()


def playbook(real, name, *args, timeout=600, check=True):
    return run(
        ["ansible-playbook", "-i", real["inventory"], f"playbooks/{name}", *args],
        env=real["environ"],
        timeout=timeout,
        check=check,
    )


def test_the_inventory_takes_the_steps_settings(real):
    done = run(["ansible-inventory", "-i", real["inventory"], "--host", "lab1"], env=real["environ"])
    host = json.loads(done.stdout)
    assert host["ansible_python_interpreter"] == "/usr/bin/python3.11"  # host_vars over the plugin's
    assert host["ansible_user"] == ACCOUNT and host["pulih_common_agent_become"] is True
    assert "StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"]


def test_the_repository_playbook_makes_the_servers_key_and_its_receiver_line(real):
    playbook(real, "repository.yml")
    state, home = real["state"], real["home"]
    key = home / ".ssh" / "id_ed25519"
    assert pwd.getpwuid(key.stat().st_uid).pw_name == ACCOUNT and key.stat().st_mode & 0o077 == 0
    public = key.with_suffix(".pub").read_text().split()[:2]
    command = f"{state.receiver_command} --asset LAB-001"
    lines = state.receiver_keys.read_text().splitlines()
    mine = f'restrict,command="{command}" {" ".join(public)} pulih@lab1'
    assert [line for line in lines if "--asset" in line] == [mine]  # the lab's own key for lab1 is gone
    repo = state.host("labrepo")
    known = (home / ".ssh" / "known_hosts").read_text().split()
    repo_key = (Path(state.root) / "hosts" / "labrepo" / lab_mod.HOST_KEY_PUB).read_text().split()[:2]
    assert known[:3] == [f"[{repo.address}]:{repo.ssh_port}", *repo_key]


def test_without_become_the_tree_is_not_read_and_su_is_refused(real):
    tree_only = ["--limit", "lab1", "-e", '{"pulih_backup_items": ["berkas"], "pulih_backup_verify": false}']
    alone = playbook(real, "backup.yml", *tree_only, "-e", "pulih_common_agent_become=false", check=False)
    assert alone.returncode != 0 and "berkas: Cannot open: Permission denied" in alone.stdout
    su = playbook(real, "backup.yml", *tree_only, "-e", "ansible_become_method=su", check=False)
    assert su.returncode != 0 and "Ansible cannot pipeline through it" in su.stdout
    assert "Item | Back up on the server" not in su.stdout  # refused before any agent started


def test_backup_and_verify_with_the_backup_grants_a_vault_and_become(real):
    done = playbook(real, "backup.yml", "-vvv", timeout=900)
    out = done.stdout
    # Become through sudo, pipelined: no module file (with its arguments) ever put on the server;
    # the interpreter of host_vars.
    assert "Pipelining is enabled." in out and "BECOME-SUCCESS-" in out and "sudo -H -S -n" in out
    assert "/usr/bin/python3.11" in out
    assert not re.search(r"PUT \S+ TO \S+AnsiballZ_", out)
    assert real["state"].db_password not in out
    repository = Path(real["state"].host("labrepo").repository_path) / "LAB-001"
    for item in ITEMS:
        (newest,) = [p for p in (repository / item).iterdir() if not p.name.startswith(".")]
        manifest = json.loads((newest / "manifest.json").read_text())
        verification = json.loads((newest / "verifications.jsonl").read_text().splitlines()[-1])
        assert verification["ok"] is True, (item, verification)
        if item in ("simpeg", "simpus"):
            assert sum(manifest["row_counts"].values()) == 100
        if item == "berkas":
            entries = map(json.loads, (newest / "files.jsonl").read_text().splitlines())
            owners = {e["path"]: e.get("owner") for e in entries}
            assert owners["rahasia/surat.txt"] == APP_USER and owners["catatan.txt"] == "root"


def test_restore_in_place_with_the_restore_grants(real):
    state, lab1, tree = real["state"], real["lab1"], real["tree"]
    grant(state, lab1, real["blocks"], "restore in place")
    pg_before, my_before, files_before = (
        postgresql_objects(state, lab1),
        mariadb_objects(state, lab1),
        tree_state(tree),
    )
    # Damage: rows, a view, a routine, a file, an owner.
    state.psql(lab1, "DELETE FROM pegawai WHERE id > 10; DROP VIEW pegawai_nama", "simpeg")
    state.mariadb(lab1, "DELETE FROM simpus.kunjungan WHERE id > 10; DROP PROCEDURE simpus.jumlah_kunjungan")
    (tree / "rahasia" / "surat.txt").unlink()
    os.chown(tree / "rahasia" / "lampiran.txt", 0, 0)
    # The application is connected while the restore runs: the swap must end its session.
    app = subprocess.Popen(
        [
            "psql",
            "-X",
            "-h",
            state.pg_socket_dir(lab1),
            "-p",
            str(lab1.pg_port),
            "-U",
            "simpeg_app",
            "-d",
            "simpeg",
            "-c",
            "SELECT pg_sleep(900)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        extra = {"pulih_restore_request_id": "PPD-2026-0013", "pulih_restore_items": ITEMS}
        playbook(real, "restore.yml", "--limit", "lab1", "-e", json.dumps(extra), timeout=900)
        assert app.wait(timeout=60) != 0 and "terminating connection" in app.stderr.read()
    finally:
        if app.poll() is None:
            app.kill()  # by PID
            app.wait()
    assert state.psql(lab1, "SELECT count(*) FROM pegawai", "simpeg").strip() == "100"
    assert state.mariadb(lab1, "SELECT COUNT(*) FROM simpus.kunjungan").strip() == "100"
    assert postgresql_objects(state, lab1) == pg_before
    assert mariadb_objects(state, lab1) == my_before
    assert tree_state(tree) == files_before
    assert "simpeg_owner" in pg_before and "simpeg_app=arwd/simpeg_owner" in pg_before
    assert my_before.count("simpus_app@localhost") == 4
