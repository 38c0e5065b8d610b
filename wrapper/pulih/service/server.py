"""Run pulih serve: drop to the state folder's owner, open the store, listen.

On a Unix socket (the default, ``DIR/pulih.sock``) the socket is made here, mode 0660 with
the state folder's group, so only the service's group reaches it, and every connection
carries the kernel's word on who is calling. On HOST:PORT, callers prove themselves with a
token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pulih import report as reports
from pulih.exitcodes import Exit
from pulih.fsutil import atomic_write_text
from pulih.service.app import create_app
from pulih.service.outbox import Sender
from pulih.service.peer import PeerCredentialsProtocol
from pulih.service.state import State, StateError, is_demo
from pulih.store import Store


def drop_to_owner(root: Path) -> None:
    """Root starts the service; it runs as the state folder's owner (the service account)."""
    info = root.stat()
    if os.geteuid() == info.st_uid:
        return
    if os.geteuid() != 0:
        raise StateError(
            f"{root} belongs to uid {info.st_uid}: run pulih serve as that account "
            "(or as root, which switches to it)"
        )
    os.setgroups([info.st_gid])
    os.setgid(info.st_gid)
    os.setuid(info.st_uid)


def unix_socket(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise StateError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise StateError(f"another pulih serve is listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink()  # a dead service's socket
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    path.chmod(0o660)
    sock.listen(128)
    return sock


def _recorder(store: Store) -> Callable[[reports.RunReport, Path], None]:
    """Every report of the service's jobs goes on its record, as its operator's (the account)."""

    def record(report: reports.RunReport, path: Path) -> None:
        report.record_on(store, path, report.operator)
        report.audit_head = store.head()

    return record


def mark_interrupted(store: Store, runs: Path) -> list[str]:
    """Runs of this service still 'running' at its start: it was killed while they ran."""
    marked = []
    for report_path in sorted(runs.glob("*/report.json")):
        doc = json.loads(report_path.read_text())
        if doc.get("status") != "running":
            continue
        doc.update(status="interrupted", exit_code=int(Exit.INTERRUPTED))
        doc["errors"] = [*doc.get("errors", []), "the service stopped while this run was running"]
        atomic_write_text(report_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        store.record_run(
            run_id=doc["run_id"],
            kind=doc["kind"],
            status="interrupted",
            started_at=doc["started_at"],
            finished_at=doc.get("finished_at"),
            report=str(report_path),
            exit_code=int(Exit.INTERRUPTED),
            actor=doc.get("operator") or "-",
            request_id=doc.get("request_id"),
        )
        marked.append(doc["run_id"])
    return marked


def log_to_stderr() -> None:
    """pulih's own log lines (the mail sender's: each mail sent, each failed attempt) on
    standard error, beside uvicorn's."""
    logger = logging.getLogger("pulih")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("pulih: %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def serve(state: State, listen: str | None = None, *, demo_actors: bool = False) -> None:
    drop_to_owner(state.root)
    # The service's runs and reports live in its state folder, on its record.
    os.environ["PULIH_STATE_DIR"] = str(state.root)
    os.environ["PULIH_HOME"] = str(state.config["content"])
    state.check_audit_key()
    store = state.open_store()
    demo = is_demo(store)
    if demo and not demo_actors:
        raise StateError(
            f"{state.root} holds a demo store (made with --init --demo-actors): a normal service "
            "never opens it; start it with --demo-actors, or make a real state folder"
        )
    if demo_actors and not demo:
        raise StateError(
            f"--demo-actors opens only a demo store, and {state.root}'s is real: "
            "make a demo state folder with --init --demo-actors"
        )
    if demo_actors and listen and not listen.startswith("unix:"):
        raise StateError(
            "--demo-actors listens only on a Unix socket: a demo names its actors, so never on a network"
        )
    store.start_anchors()
    reports.RECORDERS[:] = [_recorder(store)]
    mark_interrupted(store, state.root / "runs")
    register = state.config.get("register")
    identity = state.config.get("age_identity")
    # The Unix socket is always open: local callers, and the service's own restore jobs, which
    # ask the gate through it right before each swap. HOST:PORT is a second listener.
    path = Path(listen[len("unix:") :]) if listen and listen.startswith("unix:") else state.socket
    app = create_app(
        store,
        demo=demo,
        register=Path(str(register)) if register else None,
        config=state.settings(),
        socket_path=path,
        age_identity=str(identity) if identity else None,
    )
    sockets = [unix_socket(path)]
    if listen and not listen.startswith("unix:"):
        host, _, port = listen.rpartition(":")
        tcp = socket.create_server((host or "127.0.0.1", int(port)), reuse_port=False)
        sockets.append(tcp)
    config = uvicorn.Config(app, http=PeerCredentialsProtocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # The outbox's sender (config.yml's `mail:`): overdue steps and due mail, every interval.
    sender = Sender(app.state.outbox) if app.state.outbox is not None else None
    log_to_stderr()
    try:
        if sender is not None:
            sender.start()
        asyncio.run(server.serve(sockets=sockets))
    finally:
        if sender is not None:
            sender.stop()
        for sock in sockets:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
