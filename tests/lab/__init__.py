"""The test lab: N SSH hosts on loopback, each with its own PostgreSQL cluster and
MariaDB instance, plus a backup repository host, all real processes.

Test and demo infrastructure, not product: nothing in the `pulih` package imports it. One
implementation serves the pytest fixtures, molecule's create/destroy, the demo and the benches
(run from the project's folder, or with it on PYTHONPATH):

    python -m tests.lab up --hosts 2 --inventory-dir inventories/lab
    python -m tests.lab down --inventory-dir inventories/lab

Every host is an sshd listening on its own 127.0.50.x address and a free port with
its own host key (checked against a known_hosts file, not ignored). The inventory it
writes is an asset register in the same format as production's, so the lab exercises
the real inventory plugin. Every process the lab starts is recorded with its PID and
stopped by that PID (SSH ControlPersist masters included); nothing is stopped by name.

Readiness is a retry until a deadline (READY_TIMEOUT, generous for a busy machine), never a
single attempt: a server is ready when it answers (sshd a login, PostgreSQL and MariaDB a
query), not when its port listens; and a wait ends at once, with the server's log tail, when
the server it waits for has exited.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pulih.fsutil import atomic_write_text

ADDRESS_PREFIX = "127.0.50."
ANCHOR_FILE = ".pulih-anchor.jsonl"  # the service's anchor log in the repository (the receiver's)
# Labs started side by side (pytest-xdist's workers) each take a block of loopback addresses of
# their own, so that no two of them ever bind the same address and port.
ADDRESS_PREFIX_VAR = "PULIH_LAB_ADDRESS_PREFIX"
_ADDRESS_PREFIX = re.compile(r"^127\.[0-9]{1,3}\.[0-9]{1,3}\.$")
DB_USER = "pulih_backup"
PASSWORD_VAR = "pulih_lab_db_password"  # noqa: S105 - the name of the variable, not a password
STATE_FILE = "lab.json"
LAB_VARS_FILE = Path("group_vars") / "all" / "pulih_lab.yml"
REGISTER_FILE = "lab.asset_register.yml"
# The repository host's account for the data servers' keys: each key may run the receiver only.
RECEIVER_ACCOUNT = "pulih-lab-rcv"
RECEIVER_KEY_FILE = "receiver_ed25519"
HOST_KEY = "ssh_host_ed25519_key"  # each host's, in its folder (hosts/NAME/)
HOST_KEY_PUB = HOST_KEY + ".pub"
RECEIVER = Path(__file__).resolve().parents[2] / "roles" / "pulih_common" / "files" / "pulih_receiver.py"
# How long a server that was just started may take to answer: generous, for a busy machine
# (a fresh-clone CI on 2 cores beside a CPU hog); a server that exits ends its wait at once.
READY_TIMEOUT = 120.0
T = TypeVar("T")


class LabError(RuntimeError):
    """The lab could not be started or stopped; the message says what to do."""


@dataclass
class Proc:
    """A process the lab started, and the program it must still be to be stopped."""

    name: str
    pid: int
    program: str


@dataclass
class LabHost:
    name: str
    address: str
    ssh_port: int
    pg_port: int | None = None
    mariadb_port: int | None = None
    repository_path: str | None = None
    file_tree: str | None = None

    @property
    def is_repository(self) -> bool:
        return self.repository_path is not None


@dataclass
class LabState:
    root: str
    user: str
    hosts: list[LabHost]
    procs: list[Proc] = field(default_factory=list)
    db_password: str = ""
    started_at: str = ""
    seconds_to_start: float = 0.0

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    @property
    def private_key(self) -> Path:
        return Path(self.root) / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return Path(self.root) / "ssh" / "known_hosts"

    @property
    def control_dir(self) -> Path:
        return Path(self.root) / "cp"

    def receiver_key(self, host: LabHost) -> Path:
        """A data server's own private key for the repository's receiver."""
        return Path(self.root) / "hosts" / host.name / RECEIVER_KEY_FILE

    @property
    def repository_host(self) -> LabHost | None:
        return next((h for h in self.hosts if h.is_repository), None)

    @property
    def receiver_keys(self) -> Path:
        """The receiver account's authorized_keys on the repository host."""
        return Path(self.root) / "receiver" / "authorized_keys"

    @property
    def receiver_program(self) -> Path:
        return Path(self.root) / "receiver" / "pulih_receiver.py"

    @property
    def receiver_command(self) -> str:
        """The receiver's command line on the repository host, before --asset or --controller."""
        repo = self.repository_host
        assert repo is not None and repo.repository_path
        return f"/usr/bin/python3 {self.receiver_program} --repository {repo.repository_path}"

    def asset_id(self, host: LabHost) -> str:
        return f"LAB-{self.hosts.index(host) + 1:03d}"

    def receiver_line(self, host: LabHost, command: str | None = None) -> str:
        """The authorized_keys line of a data server's key: the receiver for its asset, nothing else."""
        command = command or f"{self.receiver_command} --asset {self.asset_id(host)}"
        public = self.receiver_key(host).with_suffix(".pub").read_text().strip()
        return f'restrict,command="{command}" {public}'

    def pg_socket_dir(self, host: LabHost) -> str:
        return str(Path(self.root) / "hosts" / host.name / "run")

    def mariadb_socket(self, host: LabHost) -> str:
        return str(Path(self.root) / "hosts" / host.name / "run" / "mariadb.sock")

    def psql(self, host: LabHost, sql: str, database: str = "postgres", timeout: float = 600) -> str:
        """Run SQL as the cluster's superuser over its socket (ON_ERROR_STOP); unaligned rows back."""
        return _run(
            [
                "psql",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.pg_socket_dir(host),
                "-p",
                str(host.pg_port),
                "-U",
                "postgres",
                "-d",
                database,
            ],
            input_text=sql,
            what=f"{host.name}: psql",
            timeout=timeout,
        )

    def mariadb(self, host: LabHost, sql: str, timeout: float = 600) -> str:
        """Run SQL as MariaDB's root over its socket; tab-separated rows back, no header."""
        return _run(
            ["mariadb", "--no-defaults", "-N", f"--socket={self.mariadb_socket(host)}", "-u", "root"],
            input_text=sql,
            what=f"{host.name}: mariadb",
            timeout=timeout,
        )

    def save(self) -> None:
        atomic_write_text(Path(self.root) / STATE_FILE, json.dumps(asdict(self), indent=2), mode=0o600)

    @classmethod
    def load(cls, root: Path) -> LabState:
        data = json.loads((root / STATE_FILE).read_text())
        data["hosts"] = [LabHost(**h) for h in data["hosts"]]
        data["procs"] = [Proc(**p) for p in data["procs"]]
        return cls(**data)


# --------------------------------------------------------------------------- helpers


def _run(argv: Sequence[str], *, what: str, input_text: str | None = None, timeout: float = 120) -> str:
    try:
        done = subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(f"{what}: '{argv[0]}' is not installed (run 'make setup')") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise LabError(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")
    return done.stdout


def _keygen(path: Path, comment: str, *, what: str) -> None:
    """A new Ed25519 key pair without a passphrase (the lab's own keys only)."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], what=what)


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path | None, lines: int = 3) -> str:
    """The last lines of a server's log, for a message that says why it is not ready."""
    if log is None:
        return ""
    with contextlib.suppress(OSError):
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def _retry_until(
    what: str,
    attempt: Callable[[], T],
    *,
    timeout: float,
    every: float = 0.2,
    gone: Callable[[], str | None] = lambda: None,
    log: Path | None = None,
) -> T:
    """`attempt()` until it returns without a LabError or the deadline passes: a server that
    listens is not yet one that answers, least of all on a busy machine. `gone()` names why
    waiting longer is pointless (the server exited), which ends the wait at once. At the
    deadline the message has the last error and, given the server's `log`, its tail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except LabError as exc:
            why = gone()
            if why is not None:
                raise LabError(f"{what}: {why}") from None
            if time.monotonic() + every > deadline:
                tail = _log_tail(log)
                last = f"last: {exc}" + (f"; log: {tail}" if tail else "")
                raise LabError(f"{what}: not ready within {timeout:.0f}s; {last}") from None
        time.sleep(every)


def _exited(pid: int, program: str, log: Path | None) -> Callable[[], str | None]:
    """A `gone` for `_retry_until`: why waiting is pointless once the process `pid` (still
    `program`) has exited, with its log's tail; None while it runs."""

    def why() -> str | None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child (mariadbd) is a zombie until reaped
        if _runs(pid, program):
            return None
        tail = _log_tail(log)
        return f"{program} (pid {pid}) exited" + (f": {tail}" if tail else "")

    return why


def _read_pid(
    path: Path,
    what: str,
    timeout: float = READY_TIMEOUT,
    *,
    gone: Callable[[], str | None] = lambda: None,
    log: Path | None = None,
) -> int:
    """A daemon's PID from its PID file, which it may write a while after it detaches."""

    def read() -> int:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise LabError(f"no PID in {path}") from None

    return _retry_until(what, read, timeout=timeout, every=0.05, gone=gone, log=log)


def _wait_for_port(
    address: str,
    port: int,
    what: str,
    log: Path,
    timeout: float = READY_TIMEOUT,
    *,
    gone: Callable[[], str | None] = lambda: None,
) -> None:
    """Until something accepts on address:port; at once an error when `gone()` says why not."""

    def connect() -> None:
        try:
            with socket.create_connection((address, port), timeout=2):
                return
        except OSError as exc:
            raise LabError(f"nothing accepts on {address}:{port} ({exc.strerror or exc})") from None

    _retry_until(what, connect, timeout=timeout, every=0.05, gone=gone, log=log)


def _ssh_argv(state: LabState, host: LabHost, command: str) -> list[str]:
    """ssh to a lab host as the lab's user with the lab's key and known_hosts, and no config,
    control master or prompt of the user's."""
    return [
        "ssh",
        "-F",
        "none",
        "-i",
        str(state.private_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={state.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "ConnectTimeout=30",
        "-p",
        str(host.ssh_port),
        f"{state.user}@{host.address}",
        command,
    ]


def _as_user(user: str) -> list[str]:
    """Run a command as a service account when we are root (initdb refuses root)."""
    if os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--"]
    return []


def _service_user(name: str) -> str:
    if os.geteuid() != 0:
        return getpass.getuser()
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise LabError(
            f"the system user '{name}' does not exist (install the server package: make setup)"
        ) from None
    return name


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg_bindir() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise LabError("PostgreSQL server binaries (initdb) not found: install postgresql (make setup)")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str] | None:
    """A process's name (its comm) and state letter, or None when there is no such process."""
    try:
        head, tail = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
        return head.split("(", 1)[1], tail.split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def _runs(pid: int, program: str) -> bool:
    """Whether `pid` is a live process of `program` (a PID can be reused). A process that has
    just exec'd shows an empty cmdline for a moment after Popen returned (the kernel fills it
    in after the point Popen waits for); its comm, set before that point, names it then."""
    stat = _stat(pid)
    if stat is None or stat[1] == "Z":
        return False
    cmdline = _cmdline(pid)
    return program in cmdline if cmdline else stat[0] == program[:15]


def _children(pid: int) -> list[int]:
    """Direct children of a process, from /proc (the sessions an sshd forked)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def stop_pid(pid: int, program: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> bool:
    """Stop one process by PID, but only while it is still the program we started
    (a PID can be reused); escalate to SIGKILL after ``timeout``. True if it was running."""
    if not _runs(pid, program):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return True


# --------------------------------------------------------------------------- the lab


class Lab:
    """Start and stop a lab; use as a context manager in tests."""

    def __init__(
        self,
        hosts: int = 2,
        *,
        inventory_dir: Path | None = None,
        repository: bool = True,
        databases: bool = True,
        host_prefix: str = "lab",
    ) -> None:
        if not 1 <= hosts <= 50:
            raise LabError("a lab has between 1 and 50 hosts")
        self.count = hosts
        self.inventory_dir = inventory_dir
        self.repository = repository
        self.databases = databases
        self.host_prefix = host_prefix
        self.state: LabState | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> LabState:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ----------------------------------------------------------------- up

    def up(self) -> LabState:
        if self.inventory_dir is not None:
            running = _running_lab(self.inventory_dir)
            if running is not None:
                raise LabError(
                    f"a lab is already running for {self.inventory_dir} (root {running}); "
                    f"stop it first: python -m tests.lab down --inventory-dir {self.inventory_dir}"
                )
        started = time.monotonic()
        # Short path: unix sockets (PostgreSQL, MariaDB, ssh control) live below it.
        root = Path(tempfile.mkdtemp(prefix="pulih-lab-", dir="/tmp"))
        root.chmod(0o711)  # the postgres and mysql accounts must reach their folders
        names = [f"{self.host_prefix}{i}" for i in range(1, self.count + 1)]
        prefix = os.environ.get(ADDRESS_PREFIX_VAR) or ADDRESS_PREFIX
        if not _ADDRESS_PREFIX.match(prefix):
            raise LabError(f"{ADDRESS_PREFIX_VAR}={prefix!r}: give a loopback prefix such as 127.0.60.")
        hosts = [LabHost(name=n, address=f"{prefix}{10 + i}", ssh_port=0) for i, n in enumerate(names)]
        if self.repository:
            hosts.append(
                LabHost(
                    name=f"{self.host_prefix}repo",
                    address=f"{prefix}9",
                    ssh_port=0,
                    repository_path=str(root / "hosts" / f"{self.host_prefix}repo" / "repository"),
                )
            )
        state = LabState(
            root=str(root),
            user=getpass.getuser(),
            hosts=hosts,
            db_password=secrets.token_urlsafe(18),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        self.state = state
        state.save()
        try:
            self._client_key(state)
            if self.repository:
                self._receiver_account(state)
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(lambda h: self._start_host(state, h), hosts))
            if self.repository:
                self._receiver_keys(state)
            state.seconds_to_start = round(time.monotonic() - started, 2)
            state.save()
            if self.inventory_dir is not None:
                write_inventory(state, self.inventory_dir)
        except OSError as exc:
            self.down()
            raise LabError(f"could not start the lab: {exc}") from exc
        except BaseException:
            # Threads that failed left their processes recorded on disk: stop all of them.
            self.down()
            raise
        return state

    def _client_key(self, state: LabState) -> None:
        ssh_dir = Path(state.root) / "ssh"
        ssh_dir.mkdir(mode=0o700)
        state.control_dir.mkdir(mode=0o700)
        _keygen(state.private_key, "pulih-lab", what="creating the lab's SSH key")
        shutil.copy(state.private_key.with_suffix(".pub"), ssh_dir / "authorized_keys")

    @staticmethod
    def _receiver_account(state: LabState) -> None:
        """The repository's account for data servers, its receiver and its authorized_keys."""
        if os.geteuid() != 0:
            raise LabError("a lab with a repository needs root: its receiver runs as an account of its own")
        try:
            pwd.getpwnam(RECEIVER_ACCOUNT)
        except KeyError:
            # A shell runs the forced command; `restrict` takes the rest away. The password '*'
            # matches nothing and, unlike useradd's '!', is no lock that sshd refuses.
            # Home '/': sshd would put "Could not chdir to home directory" before every answer.
            useradd = ["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh"]
            useradd += ["--password", "*"]
            try:
                _run([*useradd, RECEIVER_ACCOUNT], what=f"creating the account {RECEIVER_ACCOUNT}")
            except LabError:
                pwd.getpwnam(RECEIVER_ACCOUNT)  # another lab made it at the same moment: fine
        if not Path(pwd.getpwnam(RECEIVER_ACCOUNT).pw_dir).is_dir():  # made by an older lab
            _run(["usermod", "--home", "/", RECEIVER_ACCOUNT], what=f"giving {RECEIVER_ACCOUNT} a home")
        state.receiver_program.parent.mkdir(mode=0o755)
        shutil.copy(RECEIVER, state.receiver_program)
        state.receiver_program.chmod(0o755)

    @staticmethod
    def _receiver_keys(state: LabState) -> None:
        """Each data server's key, as the README says: the receiver for its own asset only; and the
        controller's, for its verbs (grants, verifications)."""
        lines = [state.receiver_line(h) for h in state.hosts if not h.is_repository]
        controller = state.private_key.with_suffix(".pub").read_text().strip()
        lines.append(f'restrict,command="{state.receiver_command} --controller" {controller}')
        atomic_write_text(state.receiver_keys, "\n".join(lines) + "\n", mode=0o644)

    def _start_host(self, state: LabState, host: LabHost) -> None:
        base = Path(state.root) / "hosts" / host.name
        (base / "run").mkdir(parents=True)
        (base / "run").chmod(0o777)  # sockets of postgres and mysql, both service accounts
        self._start_sshd(state, host, base)
        if host.is_repository:
            repository = Path(host.repository_path or "")
            repository.mkdir(parents=True)
            _chown(repository, RECEIVER_ACCOUNT)
            # As the installer makes it: the service's anchor log, appends only.
            (repository / ANCHOR_FILE).touch(mode=0o640)
            _chown(repository / ANCHOR_FILE, RECEIVER_ACCOUNT)
            subprocess.run(["chattr", "+a", str(repository / ANCHOR_FILE)], capture_output=True, check=False)
            return
        _keygen(
            state.receiver_key(host),
            f"pulih@{host.name}",
            what=f"{host.name}: creating its key for the repository",
        )
        if self.databases:
            self._start_postgresql(state, host, base)
            self._start_mariadb(state, host, base)
            host.file_tree = str(self._file_tree(base))

    def _record(self, state: LabState, proc: Proc) -> None:
        """Write a started process to the state file at once: whatever fails later, 'down' finds it."""
        with self._lock:
            state.procs.append(proc)
            state.save()

    def _start_sshd(self, state: LabState, host: LabHost, base: Path) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise LabError("sshd is not installed (openssh-server; run 'make setup')")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        key = base / HOST_KEY
        _keygen(key, host.name, what=f"{host.name}: creating the host key")
        host.ssh_port = _free_port(host.address)
        config = base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}:{host.ssh_port}",
                    f"HostKey {key}",
                    f"PidFile {base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {Path(state.root) / 'ssh' / 'authorized_keys'}",
                    f"AllowUsers {state.user}" + (f" {RECEIVER_ACCOUNT}" if host.is_repository else ""),
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "LogLevel ERROR",
                    "Subsystem sftp internal-sftp",
                    f"SetEnv PULIH_LAB_HOST={host.name}",
                    *(
                        [f"Match User {RECEIVER_ACCOUNT}", f"    AuthorizedKeysFile {state.receiver_keys}"]
                        if host.is_repository
                        else []
                    ),
                    "",
                ]
            )
        )
        # sshd binds, detaches and then writes its PID file: on a busy machine, a while later.
        log = base / "sshd.log"
        _run([sshd, "-f", str(config), "-E", str(log)], what=f"{host.name}: starting sshd")
        pid = _read_pid(base / "sshd.pid", f"{host.name}: sshd", log=log)
        self._record(state, Proc(f"{host.name}/sshd", pid, "sshd"))
        gone = _exited(pid, "sshd", log)
        _wait_for_port(host.address, host.ssh_port, f"{host.name}: sshd", log, gone=gone)
        with self._lock, state.known_hosts.open("a") as known:
            known.write(f"[{host.address}]:{host.ssh_port} {(key.with_suffix('.pub')).read_text().strip()}\n")
        # Ready is a login that works (host key, the lab's key, a session), not a port that listens.
        _retry_until(
            f"{host.name}: sshd on {host.address}:{host.ssh_port}",
            lambda: _run(_ssh_argv(state, host, "true"), what="ssh", timeout=30),
            timeout=READY_TIMEOUT,
            gone=gone,
            log=log,
        )

    def _start_postgresql(self, state: LabState, host: LabHost, base: Path) -> None:
        account = _service_user("postgres")
        bindir = _pg_bindir()
        data = base / "pgdata"
        data.mkdir(mode=0o700)
        _chown(data, account)
        as_pg = _as_user(account)
        _run(
            [
                *as_pg,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            what=f"{host.name}: initdb",
        )
        host.pg_port = _free_port(host.address)
        options = (
            f"-c listen_addresses={host.address} -p {host.pg_port} -k {state.pg_socket_dir(host)} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c shared_buffers=64MB "
            "-c log_connections=on"  # tests read who connected to which database
        )
        log = base / "postgresql.log"
        log.touch()
        _chown(log, account)
        pid_file = data / "postmaster.pid"
        # pg_ctl -w waits, until its deadline, for the server to say it is ready, and stops
        # waiting when the server exits.
        try:
            _run(
                [
                    *as_pg,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    f"{READY_TIMEOUT:.0f}",
                    "-o",
                    options,
                    "start",
                ],
                what=f"{host.name}: starting PostgreSQL",
                timeout=READY_TIMEOUT + 60,
            )
        except LabError as exc:
            # A server still starting at pg_ctl's deadline runs on: record it, so 'down' stops it.
            with contextlib.suppress(LabError):
                late = _read_pid(pid_file, f"{host.name}: PostgreSQL", timeout=1)
                self._record(state, Proc(f"{host.name}/postgresql", late, "postgres"))
            tail = _log_tail(log)
            raise LabError(f"{exc}" + (f"; log: {tail}" if tail else "")) from None
        pid = _read_pid(pid_file, f"{host.name}: PostgreSQL", log=log)
        self._record(state, Proc(f"{host.name}/postgresql", pid, "postgres"))
        _retry_until(
            f"{host.name}: PostgreSQL on {state.pg_socket_dir(host)}",
            lambda: state.psql(host, "SELECT 1", timeout=30),
            timeout=READY_TIMEOUT,
            gone=_exited(pid, "postgres", log),
            log=log,
        )
        # Names are the lab's own (labN) and the password is token_urlsafe: nothing to escape.
        sql = f"""
            CREATE ROLE {DB_USER} LOGIN SUPERUSER PASSWORD '{state.db_password}';
            CREATE DATABASE app_{host.name};
            \\connect app_{host.name}
            CREATE TABLE pegawai (id serial PRIMARY KEY, nip text NOT NULL, nama text NOT NULL);
            INSERT INTO pegawai (nip, nama)
              SELECT lpad(g::text, 18, '1'), 'Pegawai ' || g FROM generate_series(1, 100) g;
        """  # noqa: S608
        state.psql(host, sql)

    def _start_mariadb(self, state: LabState, host: LabHost, base: Path) -> None:
        account = _service_user("mysql")
        data, tmp = base / "mariadb", base / "mariadb-tmp"
        for folder in (data, tmp):
            folder.mkdir(mode=0o750)
            _chown(folder, account)
        host.mariadb_port = _free_port(host.address)
        log = base / "mariadb.log"
        socket_path = state.mariadb_socket(host)
        # One option file for install and server: each instance its own tmpdir, so
        # instances bootstrapped side by side do not trip over each other's temp tables.
        options = base / "my.cnf"
        options.write_text(
            "\n".join(
                [
                    "[mariadbd]",
                    f"datadir = {data}",
                    f"tmpdir = {tmp}",
                    f"user = {account}",
                    f"bind-address = {host.address}",
                    f"port = {host.mariadb_port}",
                    f"socket = {socket_path}",
                    f"pid-file = {base / 'run' / 'mariadb.pid'}",
                    f"log-error = {log}",
                    "skip-name-resolve",
                    "skip-log-bin",
                    "innodb-buffer-pool-size = 64M",
                    "innodb-log-file-size = 32M",
                    "innodb-flush-log-at-trx-commit = 0",
                    "skip-innodb-doublewrite",
                    "",
                ]
            )
        )
        options.chmod(0o644)
        _run(
            [
                "mariadb-install-db",
                f"--defaults-file={options}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            what=f"{host.name}: mariadb-install-db",
            timeout=300,
        )
        with log.open("ab") as out:
            child = subprocess.Popen(
                ["mariadbd", f"--defaults-file={options}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self._record(state, Proc(f"{host.name}/mariadb", child.pid, "mariadbd"))
        gone = _exited(child.pid, "mariadbd", log)
        _wait_for_port(host.address, host.mariadb_port, f"{host.name}: MariaDB", log, gone=gone)
        # The TCP port can listen before the socket accepts (ERROR 2002 ... (111) under load).
        _retry_until(
            f"{host.name}: MariaDB on {socket_path}",
            lambda: state.mariadb(host, "SELECT 1", timeout=30),
            timeout=READY_TIMEOUT,
            gone=gone,
            log=log,
        )
        sql = f"""
            CREATE USER '{DB_USER}'@'127.0.0.0/255.0.0.0' IDENTIFIED BY '{state.db_password}';
            CREATE USER '{DB_USER}'@'localhost' IDENTIFIED BY '{state.db_password}';
            GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'127.0.0.0/255.0.0.0' WITH GRANT OPTION;
            GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'localhost' WITH GRANT OPTION;
            CREATE DATABASE app_{host.name};
            USE app_{host.name};
            CREATE TABLE kunjungan (id INT AUTO_INCREMENT PRIMARY KEY, pasien VARCHAR(64) NOT NULL,
                                    tanggal DATE NOT NULL) ENGINE=InnoDB;
            INSERT INTO kunjungan (pasien, tanggal)
              SELECT CONCAT('Pasien ', seq), DATE '2026-01-01' + INTERVAL seq DAY FROM seq_1_to_100;
        """  # noqa: S608
        state.mariadb(host, sql)

    @staticmethod
    def _file_tree(base: Path) -> Path:
        tree = base / "srv" / "dokumen"
        (tree / "2026").mkdir(parents=True)
        for month in range(1, 4):
            (tree / "2026" / f"surat-{month:02d}.txt").write_text(f"Surat keputusan bulan {month}\n" * 50)
        return tree

    # ----------------------------------------------------------------- down

    def down(self) -> None:
        if self.state is not None:
            stop(Path(self.state.root), self.inventory_dir)
            self.state = None


def _running_lab(inventory_dir: Path) -> str | None:
    lab_vars = inventory_dir / LAB_VARS_FILE
    if not lab_vars.exists():
        return None
    root = (yaml.safe_load(lab_vars.read_text()) or {}).get("pulih_lab_root")
    if not root or not (Path(root) / STATE_FILE).exists():
        return None
    state = LabState.load(Path(root))
    if any(_runs(p.pid, p.program) for p in state.procs):
        return str(root)
    return None


def _control_masters(control_dir: Path) -> Iterator[int]:
    """PIDs of the SSH ControlPersist masters whose sockets are in the lab's folder."""
    for sock in sorted(control_dir.glob("*")) if control_dir.exists() else []:
        try:
            check = subprocess.run(
                ["ssh", "-O", "check", "-o", f"ControlPath={sock}", "lab"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # A master too busy to answer: 'down' goes on with the rest (ControlPersist ends it).
            continue
        text = check.stderr + check.stdout
        if "pid=" in text:
            with contextlib.suppress(ValueError):
                yield int(text.split("pid=", 1)[1].split(")", 1)[0])


def stop(root: Path, inventory_dir: Path | None = None, *, keep: bool = False) -> list[str]:
    """Stop everything a lab started, by PID, and remove its files. Returns what was stopped."""
    stopped: list[str] = []
    if (root / STATE_FILE).exists():
        state = LabState.load(root)
        for pid in _control_masters(state.control_dir):
            if stop_pid(pid, "ssh"):
                stopped.append(f"ssh control master (pid {pid})")
        for proc in reversed(state.procs):
            # Sessions an sshd forked are its children: stop them too, by their PIDs.
            kids = _children(proc.pid) if proc.program == "sshd" else []
            sig = signal.SIGINT if proc.program == "postgres" else signal.SIGTERM  # fast shutdown
            if stop_pid(proc.pid, proc.program, sig):
                stopped.append(f"{proc.name} (pid {proc.pid})")
            for kid in kids:
                stop_pid(kid, "sshd")
    if not keep:
        # The repository's anchor log is append-only (chattr +a), which removal must lift first.
        for anchor in (root / "hosts").glob(f"*/repository/{ANCHOR_FILE}"):
            subprocess.run(["chattr", "-a", str(anchor)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        if inventory_dir is not None:
            for generated in (inventory_dir / REGISTER_FILE, inventory_dir / LAB_VARS_FILE):
                generated.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (inventory_dir / LAB_VARS_FILE).parent.rmdir()
                (inventory_dir / "group_vars").rmdir()
    return stopped


# --------------------------------------------------------------------------- inventory


def register_document(state: LabState) -> dict[str, Any]:
    """The lab as an asset register, in the production format."""
    today = dt.date.today().isoformat()
    assets: list[dict[str, Any]] = []
    for number, host in enumerate(state.hosts, start=1):
        entry: dict[str, Any] = {
            "asset_id": state.asset_id(host),
            "hostname": host.name,
            "address": host.address,
            "ssh_port": host.ssh_port,
            "ssh_user": state.user,
            "skpd": "diskominfo" if host.is_repository else ("dinkes" if number % 2 else "bkpsdm"),
            "environment": "testing",
            "status": "in_operation",
            "os": _os_name(),
            "registered_by": "pulih-lab",
            "registered_on": today,
            "last_reviewed": today,
            "data": [],
        }
        if host.is_repository:
            entry["backup_repository"] = {"path": host.repository_path}
        else:
            if host.pg_port:
                entry["data"].append(
                    {
                        "name": "app-pg",
                        "engine": "postgresql",
                        "database": f"app_{host.name}",
                        "host": host.address,
                        "port": host.pg_port,
                        "user": DB_USER,
                        "password_var": PASSWORD_VAR,
                    }
                )
            if host.mariadb_port:
                entry["data"].append(
                    {
                        "name": "app-mariadb",
                        "engine": "mariadb",
                        "database": f"app_{host.name}",
                        "host": host.address,
                        "port": host.mariadb_port,
                        "user": DB_USER,
                        "password_var": PASSWORD_VAR,
                    }
                )
            if host.file_tree:
                entry["data"].append({"name": "dokumen", "engine": "files", "path": host.file_tree})
        assets.append(entry)
    return {"plugin": "pulih.core.asset_register", "version": 1, "office": "pulih test lab", "assets": assets}


def _os_name() -> str:
    info = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            info[key] = value.strip('"')
    return f"{info.get('NAME', 'Linux').split()[0]} {info.get('VERSION_ID', '')}".strip()


def write_inventory(state: LabState, inventory_dir: Path) -> None:
    """Write the lab's register and its connection settings into an inventory folder."""
    inventory_dir.mkdir(parents=True, exist_ok=True)
    header = "# Written by the pulih test lab (python -m tests.lab up); removed by 'down'.\n"
    atomic_write_text(
        inventory_dir / REGISTER_FILE, header + yaml.safe_dump(register_document(state), sort_keys=False)
    )
    ssh_args = (
        f"-o UserKnownHostsFile={state.known_hosts} -o StrictHostKeyChecking=yes "
        "-o ControlMaster=auto -o ControlPersist=60s"
    )
    lab_vars = {
        "pulih_lab_root": state.root,
        "ansible_ssh_private_key_file": str(state.private_key),
        "ansible_ssh_args": ssh_args,
        # ControlPersist masters live in the lab's folder, so 'down' finds and stops them by PID.
        "ansible_control_path_dir": str(state.control_dir),
        "ansible_control_path": "%(directory)s/%%C",
        "ansible_python_interpreter": "/usr/bin/python3",
        "pulih_common_agent_dir": str(Path(state.root) / "agent"),
        # Each data server reaches the repository's receiver with its own key (hosts/NAME/).
        "pulih_common_receiver_user": RECEIVER_ACCOUNT,
        "pulih_common_receiver_identity": (
            "{{ pulih_lab_root }}/hosts/{{ inventory_hostname }}/" + RECEIVER_KEY_FILE
        ),
        "pulih_common_receiver_known_hosts": str(state.known_hosts),
        "pulih_common_receiver_controller_identity": str(state.private_key),
        "pulih_common_receiver_controller_known_hosts": str(state.known_hosts),
        # Where the lab put the receiver, as playbooks/repository.yml would (test_lab checks it).
        "pulih_common_receiver_home": "/",
        "pulih_common_receiver_authorized_keys": str(state.receiver_keys),
        "pulih_common_receiver_program": str(state.receiver_program),
        **(
            {"pulih_common_repository_host_key": str(Path(state.root) / "hosts" / repo.name / HOST_KEY_PUB)}
            if (repo := state.repository_host)
            else {}
        ),
        PASSWORD_VAR: state.db_password,
        "pulih_lab_pg_socket_dirs": {h.name: state.pg_socket_dir(h) for h in state.hosts if h.pg_port},
    }
    atomic_write_text(
        inventory_dir / LAB_VARS_FILE, header + yaml.safe_dump(lab_vars, sort_keys=False), mode=0o600
    )
