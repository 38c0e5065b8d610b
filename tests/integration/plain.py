"""Plain Ansible, as a sysadmin runs pulih's playbooks without the pulih command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import PROJECT


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
