"""Plain Ansible, as a sysadmin runs pulih's playbooks without the pulih command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import PROJECT


def run(
    argv: list[object],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """A command run to its end; with `check`, its failure shows its exit and output's tail."""
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert done.returncode == 0, (
            f"{argv}: exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
        )
    return done


def ansible_playbook(
    inventory: Path, playbook: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook -i INVENTORY playbooks/PLAYBOOK ARGS...` from the project's folder."""
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), f"playbooks/{playbook}", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
