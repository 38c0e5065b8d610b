"""Builds the pulih.core collection as one tarball (make collection): what a sysadmin installs
with `ansible-galaxy collection install` to run pulih's playbooks without the project or the
wrapper.

The project keeps its layout (roles in roles/, playbooks in playbooks/, the plugins in
collections/ansible_collections/pulih/core/); the tarball is built from a staging copy that
puts them where a collection has them:

    plugins/, meta/, galaxy.yml, README.md   from collections/ansible_collections/pulih/core/
    roles/pulih_*                            from roles/ (pulih.core.pulih_backup, ...), files/ too:
                                             the agent's zipapp and the receiver
    playbooks/*.yml                          from playbooks/ (ansible-playbook pulih.core.backup)

Prints the tarball's path (build/pulih-core-VERSION.tar.gz).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
SOURCE = PROJECT / "collections" / "ansible_collections" / "pulih" / "core"
AGENT = PROJECT / "roles" / "pulih_common" / "files" / "pulih_agent.pyz"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")
# The collection runs where the pulih package is not installed: nothing in it may import it.
_PULIH_IMPORT = re.compile(r"^\s*(from|import)\s+pulih(\s|\.|$)", re.MULTILINE)


class BuildError(Exception):
    pass


def stage(staging: Path) -> Path:
    """The collection, laid out under staging/ansible_collections/pulih/core; returns that folder."""
    if not AGENT.is_file():
        raise BuildError(f"{AGENT.relative_to(PROJECT)} is missing: run 'make agent' first")
    target = staging / "ansible_collections" / "pulih" / "core"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(SOURCE, target, ignore=IGNORED)
    roles = target / "roles"
    roles.mkdir()
    for role in sorted((PROJECT / "roles").iterdir()):
        if role.is_dir() and (role / "tasks").is_dir():
            shutil.copytree(role, roles / role.name, ignore=IGNORED)
    playbooks = target / "playbooks"
    playbooks.mkdir()
    for playbook in sorted((PROJECT / "playbooks").glob("*.yml")):
        shutil.copy2(playbook, playbooks / playbook.name)
    for path in sorted(target.rglob("*.py")):
        if _PULIH_IMPORT.search(path.read_text(encoding="utf-8")):
            raise BuildError(
                f"{path.relative_to(target)} imports the pulih package: an installed collection has none"
            )
    return target


def build(output: Path) -> Path:
    galaxy = yaml.safe_load((SOURCE / "galaxy.yml").read_text(encoding="utf-8"))
    tarball = output / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    collection = stage(output / "collection")
    ansible_galaxy = Path(sys.executable).parent / "ansible-galaxy"
    done = subprocess.run(
        [
            str(ansible_galaxy if ansible_galaxy.exists() else "ansible-galaxy"),
            "collection",
            "build",
            str(collection),
            "--output-path",
            str(output),
            "--force",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not tarball.is_file():
        raise BuildError(f"ansible-galaxy collection build failed: {done.stdout}{done.stderr}".strip())
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=PROJECT / "build", help="default: build/")
    args = parser.parse_args(argv)
    try:
        tarball = build(args.output.resolve())
    except BuildError as exc:
        print(f"build_collection: {exc}", file=sys.stderr)
        return 1
    print(tarball)
    return 0


if __name__ == "__main__":
    sys.exit(main())
