"""The one way the lab tests drive pulih from the outside: the `pulih` command, in an
environment that names the lab's inventory, state folder and configuration.

Every integration module goes through `pulih()` and `report_of()`, so that the service
issue (`pulih serve`) can point this at a service it starts, with the actor an
authenticated account instead of PULIH_ACTOR, without touching the tests' assertions."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from tests.conftest import PROJECT


def pulih(
    env: dict[str, Any], *args: str, actor: str | None = None, check: int | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run `pulih ARGS...` as `actor` (when given); with `check`, assert its exit code. Never
    a traceback, whatever the outcome."""
    environ = dict(env["environ"])
    if actor is not None:
        environ["PULIH_ACTOR"] = actor
    result = subprocess.run(
        ["pulih", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=PROJECT,
        timeout=timeout,
        check=False,
    )
    env["outputs"].append(result.stdout + result.stderr)
    if check is not None:
        assert result.returncode == check, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PROJECT / "schemas" / name).read_text())
    return loaded


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The run report a `--json` run printed, checked against its schema."""
    doc: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(doc, schema("run_report.schema.json"))
    return doc


def wait_until(what: str, ready: Callable[[], object], deadline: float = 60.0) -> None:
    """Retry until ready() is true or the deadline passes (a busy machine starts slowly)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if ready():
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready after {deadline}s")


def connects(path: Path) -> bool:
    """Whether a Unix socket accepts a connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
    return True
