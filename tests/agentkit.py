"""The agent as the tests run it: the zipapp the roles ship (rebuilt when its sources are newer),
run as on a server (`/usr/bin/python3 pulih_agent.pyz`, a request on standard input), or its
package imported from that same file."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
AGENT = PROJECT / "roles" / "pulih_common" / "files" / "pulih_agent.pyz"
SOURCES = [
    PROJECT / "schemas" / "agent_request.schema.json",
    PROJECT / "scripts" / "build_agent.py",
    PROJECT / "pyproject.toml",  # the version the zipapp carries
    *sorted((PROJECT / "agent" / "pulih_agent").glob("*.py")),
]
STREAMING = ("dump", "verify", "stage")
# What the controller of this checkout sends in every request (the sources the agent is built from).
PULIH_VERSION: str = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
SCHEMA_VERSION: int = json.loads(SOURCES[0].read_text())["properties"]["schema_version"]["const"]


def ensure_built() -> Path:
    """The zipapp, rebuilt first when a source is newer (so a test never runs a stale agent)."""
    newest = max(path.stat().st_mtime for path in SOURCES)
    if not AGENT.exists() or AGENT.stat().st_mtime < newest:
        subprocess.run([sys.executable, str(PROJECT / "scripts" / "build_agent.py")], check=True)
    return AGENT


def wire(request: dict[str, Any]) -> dict[str, Any]:
    """A one-item request in the agent's wire format: {"mode": "dump", "engine": ...} becomes
    {"schema_version": 2, "pulih_version": "0.1.0", "mode": "dump", "items": [{"engine": ...}]};
    a request with its items, or its schema version, gets the versions it does not name."""
    versions = {"schema_version": SCHEMA_VERSION, "pulih_version": PULIH_VERSION}
    if "items" in request or "schema_version" in request:
        return {**versions, **request}
    item = dict(request)
    out: dict[str, Any] = {**versions, "mode": item.pop("mode")}
    if "tool_path" in item:
        out["tool_path"] = item.pop("tool_path")
    out["items"] = [item]
    return out


def request_line(request: dict[str, Any]) -> bytes:
    return (json.dumps(wire(request)) + "\n").encode()


def package(name: str = "main") -> ModuleType:
    """A module of the agent's package, imported from the zipapp itself."""
    path = str(ensure_built())
    if path not in sys.path:
        sys.path.insert(0, path)
    __import__(f"pulih_agent.{name}")
    return sys.modules[f"pulih_agent.{name}"]


class Run:
    """What the agent did: its exit code, standard output, events and messages."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.events: list[dict[str, Any]] = []
        self.messages: list[str] = []
        for line in self.stderr.splitlines():
            if line.startswith("@@pulih "):
                self.events.append(json.loads(line[8:]))
            elif line.startswith("pulih agent: "):
                self.messages.append(line[len("pulih agent: ") :])

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]

    @property
    def result(self) -> dict[str, Any]:
        results = self.of("result")
        assert len(results) == 1, self.stderr
        return results[0]

    @property
    def message(self) -> str:
        assert len(self.messages) == 1, self.stderr
        return self.messages[0]


def run(
    request: dict[str, Any],
    data: bytes = b"",
    *,
    env: dict[str, str] | None = None,
    python: tuple[str, ...] = ("/usr/bin/python3",),
    timeout: float = 300,
) -> Run:
    """The agent run as on a server, `data` after the request on its standard input."""
    proc = subprocess.run(
        [*python, str(ensure_built())],
        input=request_line(request) + data,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return Run(proc)
