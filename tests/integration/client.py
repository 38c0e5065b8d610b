"""The one way the lab tests drive pulih from the outside: the `pulih` command, a client of a
pulih serve that `Service` starts for the test module (its own state folder, the lab's
register as the service's, the SOP's people as accounts with tokens).

`pulih(env, ..., actor="sri")` runs the command with sri's token: the service, never the
environment, says who acts. The default actor is budi, the operator."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
    who = actor or env.get("default_actor", "budi")
    if who != "root":  # root: the service's admin, on the socket by its uid
        environ["PULIH_TOKEN"] = env["service"].tokens[who]
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connects(path: Path) -> bool:
    """Whether a Unix socket accepts a connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
    return True


PULIH = str(Path(sys.executable).parent / "pulih")
# The SOP's people: roles, SKPDs, and the scopes of the token each one's commands use.
PEOPLE: dict[str, tuple[list[str], list[str], list[str]]] = {
    "ani": (["requester"], ["bkpsdm", "dinkes"], ["request", "read"]),
    "sri": (["receiver", "approver"], [], ["approve", "read"]),
    "budi": (["operator"], [], ["backup", "restore", "read"]),
    "rita": (["auditor"], [], ["read"]),
}


class Service:
    """A pulih serve of a test module, as root (the lab's servers accept root's key): state in
    a folder of its own under /tmp, `register` as its register, `settings` in its config."""

    def __init__(
        self,
        register: Path,
        settings: str = "",
        people: dict[str, tuple[list[str], list[str], list[str]]] | None = None,
        listen: str | None = None,
    ) -> None:
        self.people = PEOPLE if people is None else people
        self.listen = listen  # HOST:PORT besides the socket (the desk, tokens over HTTP)
        self.state = Path(tempfile.mkdtemp(prefix="pulih-svc-", dir="/tmp"))
        self.state.rmdir()  # --init makes it
        self.register, self.settings = register, settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.tokens: dict[str, str] = {}

    @property
    def server(self) -> str:
        return f"unix:{self.state / 'pulih.sock'}"

    def environ(self) -> dict[str, str]:
        """What a client of this service needs, and nothing that names an actor or a register."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith("PULIH_")}
        return {**keep, "PULIH_SERVER": self.server, "PULIH_STATE_DIR": str(self.state)}

    def init(self) -> Service:
        argv = [PULIH, "serve", "--init", "--state", str(self.state), "--admin", "root", "--user", "root"]
        argv += ["--register", str(self.register), "--content", str(PROJECT)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        if self.settings:
            with (self.state / "config.yml").open("a") as config:
                config.write(self.settings)
        self.start()
        for name, (roles, skpds, scopes) in self.people.items():
            args = ["admin", "user", "add", name]
            args += [f"--role={r}" for r in roles] + [f"--skpd={s}" for s in skpds]
            self.admin(*args)
            created = self.admin("admin", "token", "create", name, *[f"--scope={s}" for s in scopes])
            self.tokens[name] = created.stdout.strip()
        return self

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in self.environ().items() if k != "PULIH_TOKEN"}
        done = subprocess.run([PULIH, *args], capture_output=True, text=True, env=environ, check=False)
        assert done.returncode == 0, done.stderr
        return done

    def start(self, **environ: str) -> None:
        """Start it (`environ`: more of the service's own environment)."""
        (self.state / "pulih.sock").unlink(missing_ok=True)
        listen = ["--listen", self.listen] if self.listen else []
        self.proc = subprocess.Popen(
            [PULIH, "serve", "--state", str(self.state), *listen],
            env={**os.environ, **environ},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        wait_until("the service's socket", lambda: connects(self.state / "pulih.sock"))
        if self.listen:
            host, _, port = self.listen.rpartition(":")
            wait_until(
                f"the service on {self.listen}",
                lambda: socket.create_connection((host, int(port)), 1).close() is None,
            )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)  # by PID
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.state, ignore_errors=True)


def skpd_of(env: dict[str, Any], item: str) -> str:
    """The SKPD whose server holds ASSET_ID:ITEM, as the service's register says."""
    from pulih import register as reg

    asset = reg.load_inventory(Path(env["inventory"])).by_id(item.partition(":")[0])
    assert asset is not None, item
    return asset.skpd


def descendants(pid):
    """Every process started under ``pid`` (ansible-runner starts ansible-playbook in a
    session of its own, so a process group does not hold them all)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found
