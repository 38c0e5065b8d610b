from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE_REGISTER = PROJECT / "inventories" / "example" / "datacenter.asset_register.yml"
# The day the example register's figures in the README were taken: the overdue
# entry (last reviewed 2025-08-04) is 474 days old then.
EXAMPLE_TODAY = "2026-11-21"

# ansible-playbook, ansible-inventory and pulih live beside the interpreter running the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("ANSIBLE_CONFIG", str(PROJECT / "ansible.cfg"))
# Reports, runs and the record of the tests stay out of the user's own state directory.
os.environ.setdefault("PULIH_STATE_DIR", tempfile.mkdtemp(prefix="pulih-test-state-"))
# Each pytest-xdist worker's labs on loopback addresses of its own (127.0.60.x, 127.0.61.x, ...).
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    os.environ["PULIH_LAB_ADDRESS_PREFIX"] = f"127.0.{60 + int(os.environ['PYTEST_XDIST_WORKER'][2:])}."


@pytest.fixture
def example_text() -> str:
    return EXAMPLE_REGISTER.read_text(encoding="utf-8")


@pytest.fixture
def register_dir(tmp_path: Path):
    """Write a register (text) into a fresh inventory folder and return the file."""

    def write(text: str, name: str = "dc.asset_register.yml") -> Path:
        path = tmp_path / "inv" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def ansible_plugins():
    """Ansible's plugin loaders, knowing the project's collection (configured once per process)."""
    from ansible.plugins import loader

    loader.init_plugin_loader([str(PROJECT / "collections")])
    return loader


# The longest files first (a few minutes each, measured), the rest in their order: pytest-xdist's
# --dist loadfile hands whole files to its two workers in collection order, so the two restore
# files start at once on the two workers instead of one after the other on one.
LONGEST_FIRST = [
    "integration/test_restore.py",
    "integration/test_restore_faults.py",
    "integration/test_backup.py",
    "integration/test_molecule.py",
]


def pytest_collection_modifyitems(config, items):
    def weight(item) -> int:
        name = item.path.relative_to(Path(__file__).parent).as_posix()
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=weight)  # stable: each file's tests stay together and in their order
