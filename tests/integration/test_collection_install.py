"""Plain Ansible from anywhere (issue 13): the collection as a sysadmin installs it, and nothing
else. `make collection`'s tarball goes into a fresh ANSIBLE_COLLECTIONS_PATH of a virtualenv
that holds ansible-core alone (no pulih package, no community collections but the ones the
roles use, installed from the ansible package's copies since Galaxy is not reachable); from a
folder of the test's own, with an ansible.cfg of one line ([inventory] any_unparsed_is_failed)
or none, ansible-inventory reads the example register, a malformed register fails with
pulih's message, and pulih.core.backup, verify and restore run on a lab: the backups are in
the repository, verified, and the restore brings the rows back. Every command of README
"Plain Ansible, without the wrapper" is here."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests import lab as lab_mod
from tests.conftest import EXAMPLE_REGISTER, EXAMPLE_TODAY, PROJECT
from tests.integration.plain import run

pytestmark = pytest.mark.lab

# The collections of the ansible package, in the project's virtualenv.
SITE_COLLECTIONS = Path(sysconfig.get_paths()["purelib"]) / "ansible_collections"
# What the roles use besides ansible.builtin (galaxy.yml's dependencies).
DEPENDENCIES = ("community/postgresql", "community/mysql", "community/crypto")
CONFIG = "[inventory]\nany_unparsed_is_failed = true\n"
BACKUP = re.compile(r'"msg": "(LAB-\d{3}) ([\w.-]+): backup (\d{8}T\d{6}Z-[0-9a-f]+), ')
VERIFIED = re.compile(
    r'"msg": "(LAB-\d{3}) ([\w.-]+) (\d{8}T\d{6}Z-[0-9a-f]+): verified by a test restore on '
)
RESTORED = re.compile(
    r'"msg": "LAB-001 app-pg: restored from (\S+) into lab1:app_lab1, verified, pre-restore backup (\S+)"'
)


def pinned(package: str) -> str:
    text = (PROJECT / "requirements" / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)$", text, re.MULTILINE)
    assert match, f"{package} is not pinned in requirements/constraints.txt"
    return match.group(1)


def galaxy_version() -> str:
    galaxy = PROJECT / "collections" / "ansible_collections" / "pulih" / "core" / "galaxy.yml"
    return yaml.safe_load(galaxy.read_text())["version"]


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    """A controller with ansible-core and the installed collection, and the environment to run
    it in: the virtualenv's bin first, no ANSIBLE_*, PULIH_* or the project's virtualenv."""
    base = tmp_path_factory.mktemp("collection")
    here = {**os.environ}
    build = run(
        [sys.executable, PROJECT / "scripts" / "build_collection.py", "--output", base / "build"],
        cwd=PROJECT,
        env=here,
    )
    tarball = Path(build.stdout.strip())
    assert tarball.name == f"pulih-core-{galaxy_version()}.tar.gz" and tarball.is_file()

    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=base, env=here)
    run(
        [venv / "bin" / "pip", "install", "--quiet", f"ansible-core=={pinned('ansible-core')}"],
        cwd=base,
        env=here,
        timeout=900,
    )
    own_bin = {str(Path(sys.executable).parent), str(PROJECT / ".venv" / "bin")}
    path = [str(venv / "bin"), *(p for p in os.environ["PATH"].split(os.pathsep) if p and p not in own_bin)]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANSIBLE_", "PULIH_"))
        and key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    collections = base / "collections"
    env.update(
        PATH=os.pathsep.join(path),
        ANSIBLE_HOME=str(base / "ansible-home"),  # no ~/.ansible/roles or collections of the machine
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_CONFIG=str(base / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
    )
    (base / "ansible.cfg").write_text(CONFIG)
    (base / "none.cfg").write_text("")
    galaxy = venv / "bin" / "ansible-galaxy"
    run(
        [galaxy, "collection", "install", "-p", collections, *(SITE_COLLECTIONS / d for d in DEPENDENCIES)],
        cwd=base,
        env=env,
    )
    run([galaxy, "collection", "install", "--offline", "-p", collections, tarball], cwd=base, env=env)
    return {"base": base, "venv": venv, "env": env, "collections": collections}


def tool(controller, name: str) -> Path:
    return controller["venv"] / "bin" / name


@pytest.fixture(scope="module")
def lab(controller):
    inventory = controller["base"] / "lab"
    lab = lab_mod.Lab(1, inventory_dir=inventory)
    state = lab.up()
    try:
        yield {"state": state, "inventory": inventory}
    finally:
        lab.down()


def plain(value):
    """A value of ansible-inventory --list, without the marks of values an inventory plugin set."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def repository(lab) -> Path:
    return Path(lab["state"].host("labrepo").repository_path)


def test_the_controller_has_ansible_core_and_the_collection_only(controller):
    python = tool(controller, "python")
    probe = run(
        [
            python,
            "-c",
            "import importlib.util as u; print(u.find_spec('pulih'), u.find_spec('ansible_collections'))",
        ],
        cwd=controller["base"],
        env=controller["env"],
    )
    assert probe.stdout.split() == ["None", "None"]
    listed = run(
        [tool(controller, "ansible-galaxy"), "collection", "list", "--format", "json"],
        cwd=controller["base"],
        env=controller["env"],
    )
    found = json.loads(listed.stdout)
    ours = str(controller["collections"] / "ansible_collections")
    assert set(found.pop(ours)) == {
        "pulih.core",
        "community.postgresql",
        "community.mysql",
        "community.crypto",
    }
    assert [name for names in found.values() for name in names if not name.startswith("ansible.")] == []
    core = controller["collections"] / "ansible_collections" / "pulih" / "core"
    assert sorted(p.name for p in (core / "roles").iterdir()) == [
        "pulih_backup",
        "pulih_common",
        "pulih_register",
        "pulih_restore",
        "pulih_verify",
    ]
    assert (core / "roles" / "pulih_common" / "files" / "pulih_agent.pyz").is_file()
    assert (core / "roles" / "pulih_common" / "files" / "pulih_receiver.py").is_file()
    assert (core / "playbooks" / "backup.yml").is_file()


def test_ansible_inventory_reads_the_example_register(controller):
    env = {**controller["env"], "PULIH_TODAY": EXAMPLE_TODAY}
    done = run(
        [tool(controller, "ansible-inventory"), "-i", EXAMPLE_REGISTER, "--list"],
        cwd=controller["base"],
        env=env,
    )
    listed = plain(json.loads(done.stdout))
    assert set(listed["_meta"]["hostvars"]) == {
        "simpeg-db01",
        "simpus-db01",
        "sikda-app01",
        "siak-arsip01",
        "pajak-db01",
        "pajak-stg01",
        "backup-repo01",
    }
    siak = listed["_meta"]["hostvars"]["siak-arsip01"]
    assert (
        siak["pulih_asset"]["asset_id"] == "DC-SRV-2022-004" and siak["pulih_asset"]["review_overdue"] is True
    )
    assert sorted(listed["skpd_dinkes"]["hosts"]) == ["sikda-app01", "simpus-db01"]
    assert siak["ansible_python_interpreter"] == "/usr/bin/python3"  # the collection's, not a config's
    graph = run(
        [tool(controller, "ansible-inventory"), "-i", EXAMPLE_REGISTER, "--graph"],
        cwd=controller["base"],
        env=env,
    )
    assert "@pulih_repository:" in graph.stdout and "backup-repo01" in graph.stdout


def test_a_malformed_register_fails_with_pulihs_message_not_a_traceback(controller):
    folder = controller["base"] / "broken"
    folder.mkdir()
    (folder / "dc.asset_register.yml").write_text(
        EXAMPLE_REGISTER.read_text().replace("engine: mysql\n", "engine: db2\n", 1)
    )
    message = "entry 'DC-SRV-2024-005': field 'data[1].engine': unknown engine 'db2'"
    done = run(
        [tool(controller, "ansible-inventory"), "-i", folder, "--list"],
        cwd=controller["base"],
        env=controller["env"],
        check=False,
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "No module named" not in done.stderr
    # Without the one line of ansible.cfg ansible-core only warns; the first play refuses.
    env = {**controller["env"], "ANSIBLE_CONFIG": str(controller["base"] / "none.cfg")}
    played = run(
        [tool(controller, "ansible-playbook"), "-i", folder, "pulih.core.backup"],
        cwd=controller["base"],
        env=env,
        check=False,
    )
    assert played.returncode != 0
    assert message in played.stderr
    assert "the inventory holds no server of an asset register" in played.stdout + played.stderr
    assert "PLAY [Back up" not in played.stdout


def test_backup_is_taken_and_verified_with_module_arguments_never_in_a_file(controller, lab):
    done = run(
        [tool(controller, "ansible-playbook"), "-i", lab["inventory"], "pulih.core.backup", "-vvv"],
        cwd=controller["base"],
        env=controller["env"],
    )
    assert f"Using {controller['base'] / 'ansible.cfg'} as config file" in done.stdout
    # The roles are the installed collection's.
    core = controller["collections"] / "ansible_collections" / "pulih" / "core"
    assert f"task path: {core / 'roles' / 'pulih_backup' / 'tasks'}" in done.stdout
    assert str(PROJECT / "roles") not in done.stdout
    # Pipelining, set by the playbooks: no module file is ever put on a server.
    assert "Pipelining is enabled." in done.stdout
    assert not re.search(r"PUT \S+ TO \S+AnsiballZ_", done.stdout)
    backups = {(a, i): b for a, i, b in BACKUP.findall(done.stdout)}
    assert set(backups) == {("LAB-001", "app-pg"), ("LAB-001", "app-mariadb"), ("LAB-001", "dokumen")}
    verified = {(a, i): b for a, i, b in VERIFIED.findall(done.stdout)}
    assert verified == backups
    manifest_schema = json.loads((PROJECT / "schemas" / "manifest.schema.json").read_text())
    for (asset, item), backup_id in backups.items():
        folder = repository(lab) / asset / item / backup_id
        manifest = json.loads((folder / "manifest.json").read_text())
        jsonschema.validate(manifest, manifest_schema)
        assert (manifest["backup_id"], manifest["asset_id"], manifest["item"]) == (backup_id, asset, item)
        assert manifest["kind"] != "pre_restore"
        for artifact in manifest["artifacts"]:
            assert hashlib.sha256((folder / artifact["name"]).read_bytes()).hexdigest() == artifact["sha256"]
        if manifest["engine"] != "files":
            assert sum(manifest["row_counts"].values()) == 100
        last = json.loads((folder / "verifications.jsonl").read_text().splitlines()[-1])
        assert last["ok"] is True and last["backup_id"] == backup_id


def test_verify_then_restore_in_place(controller, lab):
    playbook = tool(controller, "ansible-playbook")
    verify = run(
        [playbook, "-i", lab["inventory"], "pulih.core.verify", "--limit", "lab1"],
        cwd=controller["base"],
        env=controller["env"],
    )
    verified = {(a, i): b for a, i, b in VERIFIED.findall(verify.stdout)}
    assert set(verified) == {("LAB-001", "app-pg"), ("LAB-001", "app-mariadb"), ("LAB-001", "dokumen")}
    for (asset, item), backup_id in verified.items():
        lines = (repository(lab) / asset / item / backup_id / "verifications.jsonl").read_text().splitlines()
        assert len(lines) >= 2 and json.loads(lines[-1])["ok"] is True

    state = lab["state"]
    lab1 = state.host("lab1")
    state.psql(lab1, "DELETE FROM pegawai", "app_lab1")
    assert state.psql(lab1, "SELECT count(*) FROM pegawai", "app_lab1").strip() == "0"
    restore = run(
        [
            playbook,
            "-i",
            lab["inventory"],
            "pulih.core.restore",
            "--limit",
            "lab1",
            "-e",
            '{"pulih_restore_request_id": "PPD-2026-0001", "pulih_restore_items": ["app-pg"]}',
        ],
        cwd=controller["base"],
        env=controller["env"],
    )
    ((restored_from, pre_restore),) = RESTORED.findall(restore.stdout)
    assert restored_from == verified[("LAB-001", "app-pg")]
    assert state.psql(lab1, "SELECT count(*) FROM pegawai", "app_lab1").strip() == "100"
    manifest = json.loads(
        (repository(lab) / "LAB-001" / "app-pg" / pre_restore / "manifest.json").read_text()
    )
    assert (manifest["kind"], manifest["request_id"]) == ("pre_restore", "PPD-2026-0001")
    assert manifest["row_counts"] == {"public.pegawai": 0}
