"""Builds the offline bundle (make bundle): build/pulih-bundle-VERSION.tar.gz, which installs
pulih on a machine with no network (README, "Offline install"). Building needs the network
(PyPI, for the wheels); installing does not.

    pulih-bundle-VERSION/
      install.sh             scripts/bundle_install.sh: venv, wheels, collection, checks
      wheels/                pulih's wheel and the wheels of what it needs to run (not the dev
                             extras), at requirements/constraints.txt's versions, and the rest at
                             the versions of the virtualenv that builds it (the tested ones)
      pulih-core-VERSION.tar.gz   the collection (make collection), the agent's zipapp inside
      ansible.cfg            the project's, for the content folder pulih runs
      debian-packages.txt    scripts/debian-packages.txt: install.sh checks the controller's
      BUNDLE.json            the version, and the Python and platform the wheels are for
      SHA256SUMS             of every file above, checked by install.sh first

Prints the archive's path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import tomllib
from pathlib import Path

from build_collection import BuildError
from build_collection import build as build_collection

PROJECT = Path(__file__).resolve().parent.parent
CONSTRAINTS = PROJECT / "requirements" / "constraints.txt"
INSTALLER = PROJECT / "scripts" / "bundle_install.sh"
DEBIAN_PACKAGES = PROJECT / "scripts" / "debian-packages.txt"
# What the wheel of pulih is built from (the rest of the checkout is not in it).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "wrapper")
# Build tools: pip's build isolation picks its own; pinning them from here would fight it.
NOT_PINNED_FROM_HERE = {"pip", "setuptools", "wheel", "pulih"}


def project_version() -> str:
    return str(tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tested_versions(folder: Path) -> Path:
    """A constraints file of the versions installed here that constraints.txt does not pin:
    the wheels of pulih's indirect dependencies are the ones its tests ran with."""
    pinned = {
        normalized(line.split("==")[0])
        for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    lines = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if normalized(dist.metadata["Name"]) not in pinned | NOT_PINNED_FROM_HERE
    )
    path = folder / "tested-versions.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def wheel_source(folder: Path) -> Path:
    """A clean copy of what pulih's wheel is built from (no egg-info, no caches, no build/)."""
    source = folder / "source"
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in WHEEL_SOURCES:
        path = PROJECT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignored)
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    return source


def build_wheels(wheels: Path, work: Path) -> None:
    """pulih's wheel and its runtime dependencies' (and pip's own: the venv's ensurepip may be
    older than the wheels' metadata), from PyPI."""
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels)]
    constraints = ["--constraint", str(CONSTRAINTS), "--constraint", str(tested_versions(work))]
    pip_itself = f"pip=={importlib.metadata.version('pip')}"
    done = subprocess.run(
        [*pip, *constraints, str(wheel_source(work)), pip_itself],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"pip wheel failed: {done.stdout}{done.stderr}".strip())


def checksums(root: Path) -> str:
    """SHA256SUMS of every file under `root`, as `sha256sum -c` reads it."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        lines.append(f"{digest}  {path.relative_to(root).as_posix()}\n")
    return "".join(lines)


def lay_out(root: Path, work: Path, version: str) -> None:
    wheels = root / "wheels"
    build_wheels(wheels, work)
    collection = build_collection(work / "collection-build")
    shutil.copy2(collection, root / collection.name)
    shutil.copy2(INSTALLER, root / "install.sh")
    (root / "install.sh").chmod(0o755)
    shutil.copy2(PROJECT / "ansible.cfg", root / "ansible.cfg")
    shutil.copy2(DEBIAN_PACKAGES, root / "debian-packages.txt")
    about = {
        "format": "pulih.bundle/1",
        "pulih_version": version,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "platform": sysconfig.get_platform(),
        "collection": collection.name,
    }
    (root / "BUNDLE.json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
    (root / "SHA256SUMS").write_text(checksums(root), encoding="utf-8")


def write_archive(root: Path, target: Path) -> None:
    """root/ as target (tar.gz), through a temporary file beside it and a rename."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        # Wheels are compressed already: a light gzip level costs little and saves little less.
        with tarfile.open(partial, "w:gz", compresslevel=1) as archive:
            archive.add(root, arcname=root.name)
        partial.chmod(0o644)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def build(output: Path) -> Path:
    version = project_version()
    # The agent first, so that the collection carries the zipapp of this checkout (make agent).
    agent = [sys.executable, str(PROJECT / "scripts" / "build_agent.py")]
    subprocess.run(agent, check=True, stdout=subprocess.DEVNULL)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"pulih-bundle-{version}.tar.gz"
    with tempfile.TemporaryDirectory(prefix=".pulih-bundle-", dir=output) as tmp:
        root = Path(tmp) / f"pulih-bundle-{version}"
        root.mkdir()
        lay_out(root, Path(tmp), version)
        write_archive(root, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=PROJECT / "build", help="default: build/")
    args = parser.parse_args(argv)
    try:
        target = build(args.output.resolve())
    except BuildError as exc:
        print(f"build_bundle: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
