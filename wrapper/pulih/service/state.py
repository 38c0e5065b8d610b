"""The service's state folder: made once by `pulih serve --init`, checked by `pulih serve
--check`, opened by `pulih serve`.

    DIR/                 owner the service account, group pulih, 0750 (group: reach the socket)
    DIR/config.yml       register, content, store URL (0600: the URL may hold a password)
    DIR/pulih.db         the record (SQLite, 0600), unless the config names a PostgreSQL URL
    DIR/ssh/id_ed25519   the service's SSH key, the one the servers' pulih accounts accept (0600)
    DIR/ssh/audit_ed25519  the key that signs the audit chain's anchors (0600)
    DIR/runs/            run reports
    DIR/restored/        files config.yml named outside the folder, back from --import-state
    DIR/pulih.sock       the socket (0660, group pulih), while the service runs

Only the service's account can read the store, the key and the reports' secrets; staff reach
the service through the socket, as themselves."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pulih.anchors import Anchor, AnchorError, AuditKey, FileAnchor, ReceiverAnchor
from pulih.fsutil import atomic_write_text
from pulih.requests import BadRequestInput, Config, load_config
from pulih.service.accounts import AccountError, Accounts
from pulih.store import Store, meta_table

SERVICE_USER = "pulih"
SERVICE_GROUP = "pulih"
DEMO_KEY = "demo_store"


class StateError(Exception):
    """What is wrong with a state folder, in words a person can act on."""


@dataclass(frozen=True)
class State:
    root: Path
    config: dict[str, Any]

    @property
    def socket(self) -> Path:
        return self.root / "pulih.sock"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def audit_key(self) -> AuditKey:
        """The key that signs the audit chain's anchors: the service's own, apart from its SSH
        login key, never sent to a server."""
        return AuditKey(self.root / "ssh" / "audit_ed25519")

    def check_audit_key(self) -> None:
        """The audit key exists (a state made before it had one gets it now) and is the one the
        config pins: a swapped key would sign a rewritten anchor."""
        key = self.audit_key
        try:
            if not key.private.exists():
                AuditKey.make(key.private)
                pinned = {**self.config, "audit_key": key.fingerprint()}
                yaml_text = yaml.safe_dump(pinned, sort_keys=False)
                atomic_write_text(self.root / "config.yml", yaml_text, mode=0o600)
                self.config.update(pinned)
                return
            problem = self.audit_key_problem()
        except AnchorError as exc:
            raise StateError(str(exc)) from None
        if problem:
            raise StateError(problem)

    def audit_key_problem(self) -> str | None:
        """Why the audit key is not the one the config pins (None when it is, or not made yet)."""
        key = self.audit_key
        if not key.private.exists():
            return None
        found = key.fingerprint()
        if self.config.get("audit_key") == found:
            return None
        return (
            f"the audit key {key.public} is {found}, and the config pins "
            f"{self.config.get('audit_key') or 'none'}: put the pinned key back (an audit key is "
            "never replaced silently)"
        )

    @property
    def store_url(self) -> str:
        return str(self.config.get("store") or f"sqlite:///{self.root / 'pulih.db'}")

    def open_store(self) -> Store:
        """The record, publishing its chain's head to the anchors config.yml names."""
        key = self.audit_key if self.audit_key.private.exists() else None
        return Store(self.store_url, anchors=self.anchors(key))

    def anchors(self, key: AuditKey | None) -> list[Anchor]:
        """The anchors config.yml names; a receiver's defaults are the service's own key and
        known hosts, and the repository's account 'pulih' on port 22."""
        found: list[Anchor] = []
        for entry in self.settings().anchors:
            if "file" in entry:
                found.append(FileAnchor(Path(entry["file"]), key))
                continue
            receiver = {
                "port": 22,
                "user": "pulih",
                "ssh_identity": str(self.ssh_key),
                "ssh_known_hosts": str(self.root / "ssh" / "known_hosts"),
                **entry["receiver"],
            }
            found.append(ReceiverAnchor(receiver, key))
        return found

    def settings(self) -> Config:
        """The service's settings in config.yml: approval validity, restore attempts and retry."""
        try:
            return load_config(self.root / "config.yml")
        except BadRequestInput as exc:
            raise StateError(str(exc)) from None


def _ids(user: str, group: str) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise StateError(f"there is no OS user {user!r}: create the service account first") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise StateError(f"there is no OS group {group!r}") from None
    return uid, gid


def ensure_service_account(user: str = SERVICE_USER) -> None:
    """The service's OS account and group (a system account without a login shell)."""
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise StateError(f"there is no OS user {user!r} and only root can create it")
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        check=True,
        capture_output=True,
    )


def init(
    root: Path,
    *,
    admin: str,
    register: Path | None,
    content: Path,
    store_url: str | None = None,
    user: str = SERVICE_USER,
    demo: bool = False,
) -> State:
    """Make a state folder, its store, key and config, and the first admin (OS user `admin`)."""
    if root.exists() and any(root.iterdir()):
        raise StateError(f"{root} exists and is not empty: pulih serve --init makes a new state folder")
    if os.geteuid() != 0:
        raise StateError("pulih serve --init runs as root: it creates the service's account and files")
    try:
        pwd.getpwnam(admin)
    except KeyError:
        raise StateError(f"--admin {admin!r}: there is no such OS user") from None
    ensure_service_account(SERVICE_USER)  # and its group, which reaches the socket
    uid, gid = _ids(user, SERVICE_GROUP)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o750)  # the group (pulih) reaches the socket inside
    (root / "runs").mkdir(mode=0o700)
    (root / "ssh").mkdir(mode=0o700)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"pulih-service@{os.uname().nodename}",
            "-f",
            str(root / "ssh" / "id_ed25519"),
        ],
        check=True,
        capture_output=True,
    )
    audit_key = AuditKey.make(root / "ssh" / "audit_ed25519")
    config: dict[str, Any] = {
        "register": str(register.resolve()) if register else None,
        "content": str(content.resolve()),
        "audit_key": audit_key.fingerprint(),  # pinned: pulih serve refuses another key
    }
    if store_url:
        config["store"] = store_url
    # 0600: a PostgreSQL store's URL may hold its password, and staff are in the group.
    atomic_write_text(root / "config.yml", yaml.safe_dump(config, sort_keys=False), mode=0o600)
    state = State(root=root, config=config)
    store = state.open_store()
    if store_url is None:
        (root / "pulih.db").chmod(0o600)
    with store.transaction() as conn:
        conn.execute(meta_table.delete().where(meta_table.c.key == DEMO_KEY))
        conn.execute(meta_table.insert().values(key=DEMO_KEY, value="yes" if demo else "no"))
    Accounts(store).add("root" if os.geteuid() == 0 else admin, admin, roles=["admin"], unix_user=admin)
    store.engine.dispose()
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
    return state


def load(root: Path) -> State:
    path = root / "config.yml"
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StateError(
            f"{root} is no pulih state folder (no config.yml): make one with pulih serve --init"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise StateError(f"{path}: cannot be read: {' '.join(str(exc).split())}") from None
    if not isinstance(config, dict) or not config.get("content"):
        raise StateError(f"{path}: must be a mapping naming at least 'content' (the project folder)")
    return State(root=root, config=config)


def is_demo(store: Store) -> bool:
    with store.engine.connect() as conn:
        value = conn.execute(meta_table.select().where(meta_table.c.key == DEMO_KEY)).first()
    return bool(value and value.value == "yes")


def rotate_audit_key(state: State) -> tuple[str, str]:
    """Replace the audit key (the service stopped: the running one holds its key): a new key,
    an entry `audit_key.rotated` on the chain naming both and signed by the old one (whose
    anchor line covers it), then the new key in the old one's place and pinned in the config.
    Returns (old, new) fingerprints."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(state.root / "pulih.sock"))
        raise StateError("the service is running: stop it first (it signs with the key it holds)")
    except (ConnectionRefusedError, FileNotFoundError):
        pass
    finally:
        probe.close()
    state.check_audit_key()
    old = state.audit_key
    was = old.fingerprint()
    store = state.open_store()
    if not any(a.key is not None for a in store.anchors):
        raise StateError(
            "the config names no anchor: the audit key signs nothing yet, there is nothing to rotate"
        )
    following = old.private.with_name(old.private.name + ".next")
    for leftover in (following, following.with_name(following.name + ".pub")):
        leftover.unlink(missing_ok=True)
    try:
        new = AuditKey.make(following)
        store.rotate_audit_key(pwd.getpwuid(os.geteuid()).pw_name, new)
    except AnchorError as exc:
        raise StateError(str(exc)) from None
    finally:
        store.engine.dispose()
    new.public.replace(old.public)
    new.private.replace(old.private)
    pinned = {**state.config, "audit_key": AuditKey(old.private).fingerprint()}
    atomic_write_text(state.root / "config.yml", yaml.safe_dump(pinned, sort_keys=False), mode=0o600)
    state.config.update(pinned)
    return was, pinned["audit_key"]


def check(state: State) -> list[str]:
    """Everything wrong with a state folder and its store (empty: all is well)."""
    problems = []
    owner = state.root.stat().st_uid

    def private(path: Path, mode: int) -> None:
        try:
            info = path.lstat()
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            return
        if stat.S_IMODE(info.st_mode) & ~mode:
            problems.append(
                f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be at most {mode:04o}"
            )
        if info.st_uid != owner:
            problems.append(f"{path} is not owned by the service account (uid {owner})")

    private(state.root, 0o750)
    private(state.root / "config.yml", 0o600)
    private(state.ssh_key, 0o600)
    if "store" not in state.config:
        private(state.root / "pulih.db", 0o600)
    content = Path(str(state.config["content"]))
    if not (content / "playbooks" / "backup.yml").is_file():
        problems.append(f"content {content}: no playbooks/backup.yml there (the config's 'content')")
    register = state.config.get("register")
    if register and not Path(str(register)).exists():
        problems.append(f"register {register}: not found (the config's 'register')")
    identity = state.config.get("age_identity")
    if identity:
        private(Path(str(identity)), 0o600)
    anchors: list[Anchor] = []
    try:
        anchors = state.anchors(None)
    except StateError as exc:
        problems.append(str(exc))
    try:
        store = Store(state.store_url, anchors=anchors)
        if not any("admin" in a.roles and not a.disabled for a in Accounts(store).all()):
            problems.append("the store has no enabled admin account")
        problem = state.audit_key_problem()
        if problem:
            problems.append(problem)
        missing = [a.path for a in store.anchors if isinstance(a, FileAnchor) and not a.path.parent.is_dir()]
        problems += [f"anchor file {path}: its folder does not exist" for path in missing]
        store.engine.dispose()
    except (AccountError, RuntimeError, Exception) as exc:
        problems.append(f"the store {state.store_url} cannot be opened: {' '.join(str(exc).split())}")
    return problems
