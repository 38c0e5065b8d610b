"""Every role's molecule scenario, as `molecule test -s NAME` runs it, under pytest so that the
scenarios share the two xdist workers with the other lab tests (one file: one worker, the
scenarios one after the other)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT

pytestmark = pytest.mark.lab

SCENARIOS = sorted(p.parent.name for p in (PROJECT / "molecule").glob("*/molecule.yml"))
# Loopback addresses of molecule's own lab, apart from every xdist worker's (127.0.6x.).
MOLECULE_ADDRESSES = "127.0.70."


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    # As `molecule test` runs from a shell: no test-suite settings, the virtualenv's tools on PATH.
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PULIH_", "ANSIBLE_", "PYTEST_"))}
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    environ["PULIH_LAB_ADDRESS_PREFIX"] = MOLECULE_ADDRESSES
    done = subprocess.run(
        # The shared config named, not found through the git root (a copy of the tree has none).
        [
            "molecule",
            "--base-config",
            str(PROJECT / ".config" / "molecule" / "config.yml"),
            "test",
            "-s",
            scenario,
        ],
        cwd=PROJECT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
