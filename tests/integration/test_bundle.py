"""The offline install (issue 16): `scripts/build_bundle.py` (make bundle) writes one archive,
built with the network (PyPI); its install.sh installs it into a fresh folder with the network
unused: in a network namespace of its own (no interface but a loopback that is down), with
PIP_INDEX_URL pointed at a closed port besides, and pip --no-index. Then pulih runs from that
virtualenv, the collection is installed, and the installed content reads a register. Heavy
(a hundred MiB of wheels, a virtualenv of them): marked `lab`, so `make unit` leaves it out;
about a minute and a half alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.agentkit import PULIH_VERSION as VERSION
from tests.conftest import EXAMPLE_REGISTER, EXAMPLE_TODAY, PROJECT

pytestmark = pytest.mark.lab

NAME = f"pulih-bundle-{VERSION}"
CLOSED_INDEX = "http://127.0.0.1:9/"  # the discard port: nothing answers there
DEV_ONLY = ("pytest", "molecule", "ansible_lint", "ruff", "mypy", "playwright", "hypothesis", "vermin")


def clean_env(**more: str) -> dict[str, str]:
    """This machine's environment without the project's virtualenv, pip's, Ansible's or
    pulih's settings: as on the office's machine."""
    own_bin = {str(Path(sys.executable).parent), str(PROJECT / ".venv" / "bin")}
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and p not in own_bin]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "ANSIBLE_", "PULIH_"))
        and key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    return {**env, "PATH": os.pathsep.join(path), **more}


def offline() -> list[str]:
    """The prefix that runs a command with no network at all, where this machine allows it."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return ["unshare", "--net"] if probe.returncode == 0 else []


def install(bundle: Path, dest: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*offline(), "bash", str(bundle / "install.sh"), str(dest)],
        env=clean_env(PIP_INDEX_URL=CLOSED_INDEX, HOME=str(home), ANSIBLE_HOME=str(home / ".ansible")),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The archive built, unpacked, and installed into a fresh folder with the network unused."""
    base = tmp_path_factory.mktemp("bundle")
    built = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "build_bundle.py"), "--output", str(base / "build")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    archive = Path(built.stdout.strip())
    (base / "unpacked").mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(base / "unpacked")], check=True)  # as the README
    unpacked = base / "unpacked" / NAME
    (base / "home").mkdir()
    installed = install(unpacked, base / "opt" / "pulih", base / "home")
    return {
        "archive": archive,
        "unpacked": unpacked,
        "dest": base / "opt" / "pulih",
        "base": base,
        "run": installed,
    }


def run(bundle, *argv: str | Path, **more: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(HOME=str(bundle["base"] / "home"), **more)
    return subprocess.run(
        [str(a) for a in argv], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_bundle_is_one_archive_of_what_an_install_needs(bundle):
    assert bundle["archive"].name == f"{NAME}.tar.gz"
    with tarfile.open(bundle["archive"]) as opened:
        names = opened.getnames()
    assert all(name == NAME or name.startswith(NAME + "/") for name in names)
    unpacked = bundle["unpacked"]
    wheels = sorted(p.name for p in (unpacked / "wheels").iterdir())
    assert f"pulih-{VERSION}-py3-none-any.whl" in wheels
    assert any(w.startswith("ansible_core-") for w in wheels) and any(
        w.startswith("ansible-") for w in wheels
    )
    assert not [w for w in wheels if w.split("-")[0].lower() in DEV_ONLY], wheels
    about = json.loads((unpacked / "BUNDLE.json").read_text())
    assert about["pulih_version"] == VERSION and about["python"] == "{}.{}".format(*sys.version_info[:2])
    with tarfile.open(unpacked / about["collection"]) as collection:
        assert "roles/pulih_common/files/pulih_agent.pyz" in collection.getnames()
    assert (unpacked / "debian-packages.txt").read_text() == (
        PROJECT / "scripts" / "debian-packages.txt"
    ).read_text()
    listed = {line.split("  ", 1)[1] for line in (unpacked / "SHA256SUMS").read_text().splitlines()}
    assert {
        "install.sh",
        "BUNDLE.json",
        about["collection"],
        f"wheels/pulih-{VERSION}-py3-none-any.whl",
    } <= listed


def test_it_installs_with_the_network_unused(bundle):
    done = bundle["run"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"install.sh: pulih {VERSION} into {bundle['dest']}" in done.stdout
    assert offline(), (
        "this machine cannot take the network away (unshare --net): the proof is pip --no-index alone"
    )


def test_pulih_runs_from_the_installed_virtualenv(bundle):
    dest = bundle["dest"]
    helped = run(bundle, dest / "bin" / "pulih", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Backups, verified restores" in helped.stdout
    shown = run(bundle, dest / "venv" / "bin" / "pip", "show", "pulih")
    assert f"Version: {VERSION}" in shown.stdout
    assert f"Location: {dest / 'venv'}" in shown.stdout  # the wheel, not this checkout
    # Every module of the package imports: what it needs at run time is in the bundle.
    imports = (
        "import importlib, pkgutil, pulih\n"
        "names = [m.name for m in pkgutil.walk_packages(pulih.__path__, 'pulih.')]\n"
        "names.remove('pulih.__main__')  # that one runs the command\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names), pulih.__file__)\n"
    )
    imported = run(bundle, dest / "venv" / "bin" / "python", "-c", imports, PULIH_HOME=str(dest / "content"))
    assert imported.returncode == 0, imported.stderr
    assert str(dest / "venv") in imported.stdout and int(imported.stdout.split()[0]) > 30


def test_the_collection_is_installed_and_the_content_reads_a_register(bundle):
    dest = bundle["dest"]
    listed = run(
        bundle,
        dest / "venv" / "bin" / "ansible-galaxy",
        "collection",
        "list",
        "pulih.core",
        "--format",
        "json",
        ANSIBLE_COLLECTIONS_PATH=str(dest / "collections"),
    )
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert found[str(dest / "collections" / "ansible_collections")]["pulih.core"]["version"] == VERSION
    core = dest / "collections" / "ansible_collections" / "pulih" / "core"
    assert (core / "roles" / "pulih_common" / "files" / "pulih_agent.pyz").is_file()
    # pulih reads the register with the installed collection's validator (PULIH_HOME: content).
    checked = run(
        bundle, dest / "bin" / "pulih", "register", "check", "-i", EXAMPLE_REGISTER, "--today", EXAMPLE_TODAY
    )
    assert checked.returncode == 1, checked.stderr  # the example's one overdue review, on purpose
    assert (
        "entry 'DC-SRV-2022-004' (siak-arsip01): last reviewed 2025-08-04" in checked.stdout + checked.stderr
    )
    graph = run(
        bundle,
        dest / "venv" / "bin" / "ansible-inventory",
        "-i",
        EXAMPLE_REGISTER,
        "--graph",
        ANSIBLE_CONFIG=str(dest / "content" / "ansible.cfg"),
        PULIH_TODAY=EXAMPLE_TODAY,
    )
    assert graph.returncode == 0, graph.stderr
    assert "@pulih_repository:" in graph.stdout and "backup-repo01" in graph.stdout
    # The playbooks and roles as pulih's runner points Ansible at them (pulih.runner.run_playbook).
    content = dest / "content"
    for playbook in ("backup.yml", "restore.yml"):
        parsed = run(
            bundle,
            dest / "venv" / "bin" / "ansible-playbook",
            "--syntax-check",
            "-i",
            EXAMPLE_REGISTER,
            content / "playbooks" / playbook,
            ANSIBLE_CONFIG=str(content / "ansible.cfg"),
            ANSIBLE_COLLECTIONS_PATH=str(content / "collections"),
            ANSIBLE_ROLES_PATH=str(content / "roles"),
            PULIH_TODAY=EXAMPLE_TODAY,
        )
        assert parsed.returncode == 0, parsed.stderr


def linked_copy(bundle, name: str) -> Path:
    """A copy of the unpacked bundle made of hard links (a file to change is replaced, not written)."""
    copy = bundle["base"] / name
    shutil.copytree(bundle["unpacked"], copy, copy_function=os.link)
    return copy


def replace(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


def test_a_missing_debian_package_is_named_with_the_apt_command_and_nothing_is_installed(bundle):
    copy = linked_copy(bundle, "lacking")
    packages = (copy / "debian-packages.txt").read_text() + "controller: pulih-no-such-package  # a test's\n"
    replace(copy / "debian-packages.txt", packages)
    sums = (copy / "SHA256SUMS").read_text().splitlines()
    digest = subprocess.run(
        ["sha256sum", "debian-packages.txt"], cwd=copy, capture_output=True, text=True
    ).stdout
    replace(
        copy / "SHA256SUMS",
        "".join((digest if line.endswith("  debian-packages.txt") else line + "\n") for line in sums),
    )
    done = install(copy, bundle["base"] / "lacking-dest", bundle["base"] / "home")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "these Debian packages are missing: pulih-no-such-package." in done.stderr
    assert "apt-get install --no-install-recommends pulih-no-such-package" in done.stderr
    assert not (bundle["base"] / "lacking-dest").exists()


def test_a_damaged_bundle_is_refused_before_anything_is_installed(bundle):
    copy = linked_copy(bundle, "damaged")
    replace(copy / "BUNDLE.json", (copy / "BUNDLE.json").read_text().replace(VERSION, "9.9.9"))
    done = install(copy, bundle["base"] / "damaged-dest", bundle["base"] / "home")
    assert done.returncode == 2
    assert "install.sh: the bundle is damaged (SHA256SUMS does not match): copy it again" in done.stderr
    assert not (bundle["base"] / "damaged-dest").exists()
