"""The run's watchdog: when the process that runs a playbook ends, however it ends (SIGKILL,
an out-of-memory kill, a closed terminal), every process that run started on this machine
is killed, so that nothing of it keeps writing.

Ansible's workers run in sessions of their own and outlive a killed ansible-playbook, and
their SSH connections keep the remote side (the agent's stream on a data server) going. Every
process of a run carries ``PULIH_RUN=<run id>`` in its environment (ansible-runner passes
it to ansible-playbook, and children inherit it); the watchdog holds the read end of a pipe
whose write end only the controller has, and when that pipe closes it kills every process
so marked. The remote side then sees its connection gone and stops (agent_io.ControllerWatch).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "PULIH_RUN"


def marked(run_id: str) -> list[int]:
    """PIDs of this machine's processes started by the run."""
    needle = f"{MARK}={run_id}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return [pid for pid in found if pid != os.getpid()]


def kill_run(run_id: str, passes: int = 5) -> None:
    for _ in range(passes):  # a process may fork while we kill its parent
        pids = marked(run_id)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def start(run_id: str) -> subprocess.Popen[bytes]:
    """Start the watchdog of a run; the caller keeps the returned process's stdin open for as
    long as the run lasts, and closes it when the run has ended."""
    return subprocess.Popen(
        [sys.executable, "-m", "pulih.watchdog", run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # neither Ctrl-C nor a killed process group reaches it
    )


def main() -> None:
    run_id = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):  # until the controller closes it, or dies
            pass
    kill_run(run_id)


if __name__ == "__main__":
    main()
