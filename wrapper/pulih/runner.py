"""Running pulih's playbooks through ansible-runner, and reading their results.

The wrapper holds no backup logic: it runs a playbook, watches its events for progress,
and collects what the roles publish (``pulih_backup_results``, ``pulih_verify_results``,
``pulih_register_drift``, registered ``backups``) into a :class:`RunOutcome`.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import ansible_runner

from pulih import watchdog

RunStatus = Literal["succeeded", "failed", "interrupted", "error"]
ProgressFn = Callable[[str, str], None]  # (kind, text)
# The signals that stop a run cleanly, with a final report (SIGKILL cannot be caught: a run
# killed so stays 'running' in its report from the start).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ContentError(Exception):
    """The Ansible content pulih runs is not where it is looked for."""


def module_utils(name: str) -> ModuleType:
    """A module of the collection's module_utils (standard library only), imported from the
    project's collections/: the one copy the roles' modules and the wrapper share."""
    collections = str(project_dir() / "collections")
    if collections not in sys.path:
        sys.path.append(collections)
    return importlib.import_module(f"ansible_collections.pulih.core.plugins.module_utils.{name}")


def project_dir() -> Path:
    """The pulih checkout holding playbooks/, roles/ and collections/."""
    env = os.environ.get("PULIH_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def playbook_path(playbook: str) -> Path:
    path = project_dir() / "playbooks" / playbook
    if not path.is_file():
        origin = "PULIH_HOME" if os.environ.get("PULIH_HOME") else "the pulih installation"
        raise ContentError(
            f"{origin} ({project_dir()}) holds no playbooks/{playbook}: point PULIH_HOME at the pulih "
            "project (the folder with playbooks/, roles/ and collections/), or unset it"
        )
    return path


@dataclass
class HostOutcome:
    name: str
    status: Literal["ok", "failed", "unreachable"] = "ok"
    errors: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOutcome:
    status: RunStatus
    rc: int
    hosts: dict[str, HostOutcome]
    artifacts_dir: str
    registered: dict[str, list[Any]] = field(default_factory=dict)
    signal: str | None = None  # what interrupted the run: SIGINT (Ctrl-C), SIGTERM, SIGHUP
    # ansible-playbook's own error when it stopped before any host ran (a vault password file
    # that cannot be read, a playbook that does not parse).
    message: str | None = None

    def facts(self, key: str) -> dict[str, Any]:
        """One published fact of every host that has it."""
        return {name: host.facts[key] for name, host in self.hosts.items() if key in host.facts}


_PUBLISHED = (
    "pulih_backup_results",
    "pulih_verify_results",
    "pulih_register_drift",
    "pulih_restore_results",
)


def _failure(res: dict[str, Any]) -> str:
    """A failed task's message, one line; for a module that never ran ("MODULE FAILURE",
    "Module result deserialization failed": no Python on the server, say) the real cause
    from its own output."""
    message = " ".join(str(res.get("msg", "failed")).split())
    if "MODULE FAILURE" in message or "deserialization failed" in message:
        output = str(res.get("module_stderr") or "") + "\n" + str(res.get("module_stdout") or "")
        cause = [line.strip() for line in output.splitlines() if line.strip()]
        if cause:
            message = f"{message}: {cause[-1]}"
    return message


class _Watcher:
    """Turns ansible-runner events into host outcomes and progress lines."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.hosts: dict[str, HostOutcome] = {}
        self.registered: dict[str, list[Any]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def host(self, name: str) -> HostOutcome:
        return self.hosts.setdefault(name, HostOutcome(name))

    @staticmethod
    def publish(outcome: HostOutcome, key: str, value: Any) -> None:
        """Keep a role's published fact, if it keeps the role-wrapper contract; if it does not,
        the host fails with what is wrong (a report never reads a field that is not there)."""
        from pulih import contract  # here: contract imports this module for project_dir

        broken = contract.problems(key, value)
        if broken:
            outcome.status = "failed"
            outcome.errors.append(
                f"the roles published {key} that breaks the role-wrapper contract "
                f"({contract.SCHEMA_FILE}): " + "; ".join(broken)
            )
            return
        outcome.facts[key] = value

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        name = data.get("host")
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if kind == "playbook_on_task_start" and self.progress:
            self.progress("task", data.get("task", ""))
        elif kind == "runner_on_ok" and name:
            facts = res.get("ansible_facts") or {}
            outcome = self.host(name)
            for key in _PUBLISHED:
                if key in facts:
                    self.publish(outcome, key, facts[key])
            verb = res.get("verb") if data.get("task_action") == "pulih.core.receiver" else None
            listed = (res.get("answer") or {}).get("backups")
            if verb == "list" and name == "localhost" and isinstance(listed, list):
                self.registered.setdefault("backups", []).extend(listed)
            if verb in ("protect", "unprotect"):
                self.registered.setdefault("protect", []).append({**res, "failed": False})
            if self.progress and "sha256" in res and "size" in res:
                self.progress("stream", f"{name}: {res['size']} bytes stored in {res.get('seconds', 0)}s")
        elif kind == "runner_on_failed" and name and not data.get("ignore_errors"):
            message = _failure(res)
            self.host(name).errors.append(f"{data.get('task', '')}: {message}")
            verb = res.get("verb") if data.get("task_action") == "pulih.core.receiver" else None
            if verb in ("protect", "unprotect"):
                self.registered.setdefault("protect", []).append({**res, "failed": True})
        elif kind == "runner_on_unreachable" and name:
            self.host(name).status = "unreachable"
            self.host(name).errors.append(str(res.get("msg", "unreachable")))
            if self.progress:
                self.progress("host", f"{name}: unreachable")
        elif kind == "playbook_on_stats":
            self.stats = {k: data.get(k) or {} for k in ("ok", "failures", "dark", "rescued", "skipped")}
        return True  # keep the event in the artifacts


def run_playbook(
    playbook: str,
    *,
    inventory: Path,
    run_dir: Path,
    limit: str | None = None,
    extravars: dict[str, Any] | None = None,
    check: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> RunOutcome:
    """Run ``playbooks/<playbook>``; Ctrl-C, SIGTERM (systemd, cron, timeout) and SIGHUP stop it
    cleanly and yield status 'interrupted', with the signal's name in ``RunOutcome.signal``."""
    project = project_dir()
    playbook_path(playbook)
    watcher = _Watcher(progress)
    cancelled = cancel or threading.Event()  # a service's job is cancelled through its API
    caught: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum).name)
        cancelled.set()

    previous = (
        {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    cmdline = "--check" if check else None
    run_dir.mkdir(parents=True, exist_ok=True)
    # ansible-playbook lives beside this interpreter when pulih runs from its virtualenv.
    here = str(Path(sys.executable).parent)
    if here not in os.environ.get("PATH", "").split(os.pathsep):  # once, not once per run of a service
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
    # Every process of the run carries its id; the watchdog kills them if this one dies.
    run_mark = run_dir.parent.name + "/" + run_dir.name
    guard = watchdog.start(run_mark)
    try:
        result = ansible_runner.run(
            private_data_dir=str(run_dir),
            project_dir=str(project / "playbooks"),
            playbook=playbook,
            inventory=str(inventory.resolve()),
            limit=limit,
            extravars=extravars or {},
            cmdline=cmdline,
            envvars={
                "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
                "ANSIBLE_COLLECTIONS_PATH": str(project / "collections"),
                "ANSIBLE_ROLES_PATH": str(project / "roles"),
                "ANSIBLE_NOCOLOR": "1",
                watchdog.MARK: run_mark,
            },
            event_handler=watcher,
            cancel_callback=cancelled.is_set,
            quiet=True,
            ident="runner",
            rotate_artifacts=1,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # The run is over: what it left (a worker, an SSH master) goes too.
        if guard.stdin is not None:
            guard.stdin.close()
        guard.wait()

    for name in watcher.stats.get("failures", {}):
        watcher.host(name).status = "failed"
    for name in watcher.stats.get("dark", {}):
        watcher.host(name).status = "unreachable"
    for name in watcher.stats.get("ok", {}):
        watcher.host(name)
    status: RunStatus
    if cancelled.is_set() or result.status == "canceled":
        status = "interrupted"
    elif result.status == "successful" and result.rc == 0:
        status = "succeeded"
    elif result.status in ("failed", "successful"):
        status = "failed"
    else:
        status = "error"
    return RunOutcome(
        status=status,
        rc=int(result.rc or 0),
        hosts=watcher.hosts,
        artifacts_dir=str(result.config.artifact_dir),
        registered=watcher.registered,
        # A signal here, else why the caller cancelled it (a service's job: who asked).
        signal=caught[0] if caught else getattr(cancelled, "reason", None),
        message=_ansible_error(run_dir) if status != "succeeded" else None,
    )


def _ansible_error(run_dir: Path) -> str | None:
    """The last "[ERROR]: ..." (or "ERROR! ...") line ansible-playbook printed, one line."""
    stdout = run_dir / "artifacts" / "runner" / "stdout"
    try:
        lines = stdout.read_text(errors="replace").splitlines()
    except OSError:
        return None
    found = [
        line.split(":", 1)[1].strip() if line.startswith("[ERROR]") else line[len("ERROR!") :].strip()
        for line in lines
        if line.startswith(("[ERROR]:", "ERROR!"))
    ]
    return " ".join(found[-1].split()) if found else None
