"""Restore hooks: the register's commands an in-place restore runs on the data server before it
replaces the data (e.g. the application into maintenance) and after (back out of it).

Each hook is an argument list whose program is an absolute path, run without a shell, with no
standard input, in its own process group, stopped (the whole group) after its timeout. Its
exit status, its time and the end of its output (at most OUTPUT_TAIL characters, as text) go
into the result, which the report shows. Pre-restore hooks stop at the first that fails (the
restore then changes nothing); post-restore hooks all run, and each failure is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .protocol import emit

OUTPUT_TAIL = 2000
# What a hook's environment is: a plain PATH and locale, nothing of the agent's (no secret).
HOOK_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _tail(data):
    text = data.decode("utf-8", errors="replace")
    return text[-OUTPUT_TAIL:]


def run_hook(argv, timeout):
    """One hook's result: argv, exit status (None: not started or stopped at its timeout), the
    seconds it took, the end of its output, and whether it passed."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(HOOK_ENV),
            cwd="/",
            start_new_session=True,  # its own group: a timeout stops its children too
        )
    except OSError as exc:
        return {
            "argv": list(argv),
            "rc": None,
            "seconds": 0.0,
            "output": "cannot start %s: %s" % (argv[0], exc.strerror or exc),
            "ok": False,
            "timed_out": False,
        }
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    rc = None if timed_out else proc.returncode
    said = _tail(output or b"")
    if timed_out:
        said = (said + "\n" if said else "") + "stopped after its timeout of %d s" % timeout
    return {
        "argv": list(argv),
        "rc": rc,
        "seconds": round(time.monotonic() - started, 3),
        "output": said,
        "ok": rc == 0,
        "timed_out": timed_out,
    }


def run_hooks(request):
    """Mode 'hook': the request's hooks in order; `phase` pre stops at the first failure."""
    phase = request.get("phase", "pre")
    results = []
    for hook in request.get("hooks") or []:
        result = run_hook(hook["argv"], int(hook.get("timeout", 60)))
        results.append(result)
        if not result["ok"] and phase == "pre":
            break
    emit("result", phase=phase, hooks=results, ok=all(r["ok"] for r in results))
