"""Plain Ansible on a broken or empty register fails with pulih's message, from the project's
folder (its ansible.cfg sets any_unparsed_is_failed) and from any other folder (every
playbook's first play asserts the inventory holds register servers, --limit or not); every
play pipelines. No host is contacted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_REGISTER, PROJECT

MESSAGE = "field 'data[1].engine': unknown engine 'db2'"


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    text = EXAMPLE_REGISTER.read_text().replace("engine: mysql\n", "engine: db2\n", 1)
    (folder / "dc.asset_register.yml").write_text(text)
    return folder


def ansible(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_ansible_inventory_on_a_broken_register_fails_with_the_message(broken):
    done = ansible("ansible-inventory", "-i", str(broken), "--list", cwd=PROJECT)
    assert done.returncode != 0
    assert MESSAGE in done.stderr


def test_a_playbook_on_a_broken_register_fails_and_backs_up_nothing(broken):
    done = ansible("ansible-playbook", "-i", str(broken), "playbooks/backup.yml", cwd=PROJECT)
    assert done.returncode != 0
    assert MESSAGE in done.stdout + done.stderr


def test_from_another_folder_the_first_play_refuses_a_broken_register(broken, tmp_path):
    # As an installed collection is used: no project ansible.cfg, so ansible-core only warns.
    env = {
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
        "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(PROJECT / "collections"),
    }
    done = ansible(
        "ansible-playbook",
        "-i",
        str(broken),
        str(PROJECT / "playbooks" / "backup.yml"),
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode != 0
    assert "the inventory holds no server of an asset register" in done.stdout + done.stderr


def test_an_empty_register_warns_and_runs_nothing(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "dc.asset_register.yml").write_text(
        "plugin: pulih.core.asset_register\nversion: 1\noffice: X\nassets: []\n"
    )
    listed = ansible("ansible-inventory", "-i", str(folder), "--list", cwd=PROJECT)
    assert "lists no server in operation" in listed.stderr
    done = ansible("ansible-playbook", "-i", str(folder), "playbooks/backup.yml", cwd=PROJECT)
    assert done.returncode != 0
    assert "the inventory holds no server of an asset register" in done.stdout + done.stderr


def test_under_limit_from_another_folder_a_broken_register_is_refused(broken, tmp_path):
    # --limit skips a play on localhost, and on an empty inventory every play (exit 0, nothing
    # done): the first play's hosts keyword refuses then.
    env = {
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
        "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(PROJECT / "collections"),
    }
    done = ansible(
        "ansible-playbook",
        "-i",
        str(broken),
        str(PROJECT / "playbooks" / "backup.yml"),
        "--limit",
        "simpeg-db01",
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode != 0
    assert (
        "the inventory holds no server of an asset register among those --limit" in done.stdout + done.stderr
    )
    assert MESSAGE in done.stderr  # the register's own problem, in ansible-core's warning


def test_a_limit_outside_the_register_is_refused(tmp_path):
    other = tmp_path / "hosts.ini"
    other.write_text("other ansible_host=192.0.2.1\n")
    done = ansible(
        "ansible-playbook",
        "-i",
        str(EXAMPLE_REGISTER),
        "-i",
        str(other),
        "playbooks/backup.yml",
        "--limit",
        "other",
        cwd=PROJECT,
    )
    assert done.returncode != 0
    assert "no server of an asset register among those --limit" in done.stdout + done.stderr


def test_every_play_pipelines_so_module_arguments_never_land_in_a_file():
    # ansible_pipelining as a play variable: it holds without the project's ansible.cfg, for
    # every connection the play makes (delegations to localhost too).
    plays = []
    for path in sorted((PROJECT / "playbooks").glob("*.yml")):
        plays += [(path.name, play) for play in yaml.safe_load(path.read_text()) if "hosts" in play]
    assert len(plays) >= 10
    assert [name for name, play in plays if play.get("vars", {}).get("ansible_pipelining") is not True] == []
