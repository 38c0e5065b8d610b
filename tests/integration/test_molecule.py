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
FAILURE_WORDS = ("FAILED!", "fatal:", '"error"', "failed:", "ERROR")


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
    # The whole output kept (a failed item's reason is often far above the last lines), and
    # the lines that say what failed shown first.
    log = PROJECT / "reports" / "molecule" / f"{scenario}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    failed = [line for line in done.stdout.splitlines() if any(w in line for w in FAILURE_WORDS)]
    assert done.returncode == 0, (
        f"whole output: {log}\n"
        + "\n".join(failed[-40:])
        + "\n...\n"
        + done.stdout[-4000:]
        + done.stderr[-4000:]
    )
