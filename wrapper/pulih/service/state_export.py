"""pulih's own recovery: the state folder sealed for two officers, and brought back from it.

`export_state` writes one file: a header line (JSON: who the two officers are, the chain's
head, the SHA-256 of what follows it and of the payload inside) and after it the payload,
sealed twice with age: first to officer A's recipient (the inner layer), then to officer B's
(the outer). age opens a file for any one of its recipients; nested, it takes both, one after
the other, and standard tools alone open it:

    tail -n +2 FILE | age -d -i B.key | age -d -i A.key | tar -xz

The payload, a gzip'd tar: ``state/`` (config.yml, ssh/ with the key the servers accept and
the audit key, run reports, every other file of the folder), ``store/`` (a consistent copy:
SQLite's backup API, or pg_dump), ``named/`` (files the config names outside the folder: the
age identity of encrypted backups, the SMTP password, the register, the logo, an anchor's
key), and ``manifest.json`` last. Nothing of it is written in the clear but the store's copy,
in a 0700 folder inside the state folder it comes from, removed at the end.

`import_state` opens it with both identities onto a fresh state folder, owned and moded as
`pulih serve --init` makes one."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tarfile
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import URL, make_url

from pulih import __version__
from pulih.exitcodes import Exit
from pulih.fsutil import atomic_write_text
from pulih.service.state import (
    SERVICE_GROUP,
    SERVICE_USER,
    State,
    StateError,
    _ids,
    ensure_service_account,
)
from pulih.store import SCHEMA_VERSION, Store, meta_table

FORMAT = "pulih.state-export/1"
HEADER_LIMIT = 64 * 1024
CHUNK = 1 << 16
PLACEHOLDER = "0" * 64  # the header's hashes before they are known: same length, patched in place
STORE_MEMBERS = {"sqlite": "store/pulih.db", "postgresql": "store/store.pgdump"}
REPORT_FILES = {"report.json", "report.html"}  # of each run: the record's history, a few KiB each
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")  # age's X25519 recipient (Bech32)
_HEX = re.compile(r"[0-9a-f]{64}")
# The header's fields the sealed manifest repeats: an edited header shows against it.
_SEALED_FIELDS: tuple[str, ...] = ("format", "created_at", "host", "source", "officers", "store")
_SEALED_FIELDS += ("pulih", "schema", "audit_head", "audit_key", "ssh_key")
# Fields of config.yml that name a file or folder; anchors' receivers add theirs.
_PATH_FIELDS: tuple[tuple[str | int, ...], ...] = (
    ("age_identity",),
    ("mail", "password_file"),
    ("office", "logo"),
    ("register",),
)


class ExportError(Exception):
    """Why an export or an import cannot go on, in words a person can act on, with its exit code."""

    def __init__(self, message: str, code: Exit = Exit.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Officer:
    name: str
    recipient: str

    def doc(self, layer: str) -> dict[str, str]:
        return {"name": self.name, "recipient": self.recipient, "layer": layer}


# --------------------------------------------------------------------------- the two officers


def officers(options: list[str], config: dict[str, Any]) -> tuple[Officer, Officer]:
    """The two officers, inner layer's first: --officer NAME=RECIPIENT twice, else config.yml's
    `recovery_officers` ([{name, recipient}, {name, recipient}])."""
    if options:
        where = "--officer"
        found = [_officer_option(text) for text in options]
    else:
        where = "config.yml's recovery_officers"
        found = _officers_in_config(config.get("recovery_officers"))
    if not found:
        raise ExportError(
            "name the two officers who together open the export: --officer NAME=AGE_RECIPIENT twice, "
            "or recovery_officers in config.yml"
        )
    if len(found) != 2:
        raise ExportError(f"{where}: exactly two officers open an export, not {len(found)}")
    first, second = found
    if first.name == second.name or first.recipient == second.recipient:
        raise ExportError(f"{where}: the two officers must be two people with two keys, not one twice")
    return first, second


def _officer(name: Any, recipient: Any, where: str) -> Officer:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ExportError(f"{where}: officer name {name!r}: letters, digits, . _ @ -, at most 64")
    if not isinstance(recipient, str) or not _RECIPIENT.fullmatch(recipient):
        raise ExportError(
            f"{where}: {name}'s recipient {recipient!r} is not an age public key (age1..., from age-keygen)"
        )
    return Officer(name, recipient)


def _officer_option(text: str) -> Officer:
    name, sep, recipient = text.partition("=")
    if not sep:
        raise ExportError(f"--officer {text!r}: write NAME=AGE_RECIPIENT")
    return _officer(name.strip(), recipient.strip(), "--officer")


def _officers_in_config(raw: Any) -> list[Officer]:
    where = "config.yml: field 'recovery_officers'"
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ExportError(f"{where}: a list of two {{name: NAME, recipient: age1...}}")
    return [_officer(e.get("name"), e.get("recipient"), where) for e in raw]


# --------------------------------------------------------------------------- what goes in


@dataclass
class _Plan:
    """The payload's members (name in the tar, file on disk) and what was left out, and why."""

    members: list[tuple[str, Path]] = field(default_factory=list)
    named: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _ident(key: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in key)


def _get(config: dict[str, Any], key: tuple[str | int, ...]) -> Any:
    value: Any = config
    for part in key:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def _set(config: dict[str, Any], key: tuple[str | int, ...], value: str) -> None:
    holder: Any = config
    for part in key[:-1]:
        holder = holder[part]
    holder[key[-1]] = value


def path_fields(config: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(field, path) for every file or folder config.yml names."""
    keys = list(_PATH_FIELDS)
    for number, entry in enumerate(config.get("anchors") or []):
        if isinstance(entry, dict) and isinstance(entry.get("receiver"), dict):
            keys += [("anchors", number, "receiver", name) for name in ("ssh_identity", "ssh_known_hosts")]
    found = []
    for key in keys:
        value = _get(config, key)
        if isinstance(value, str) and value:
            found.append((key, value))
    return found


def _left_out(rel: Path) -> str | None:
    """Why a folder of the state folder is no state (None: it is): Ansible's temporary files
    and control sockets (the service's HOME is its state folder), an export's or import's
    scratch folder, and each run's ansible-runner artifacts (MiBs a run; its report stays)."""
    first = rel.parts[0]
    if first == "runs" and len(rel.parts) >= 3:
        return "artifacts"
    if len(rel.parts) == 1 and first.startswith(".") and first != ".ssh":
        return "hidden"
    return None


def _wanted_file(rel: Path) -> bool:
    if rel.name.startswith(".") and rel.name.endswith(".tmp"):  # an atomic write under way
        return False
    if rel.parts[0] == "runs":
        return len(rel.parts) == 3 and rel.name in REPORT_FILES
    return True


def _unreadable(error: OSError) -> None:
    """os.walk's errors stop the export: a folder left out unseen could be the one with the key."""
    raise ExportError(f"{error.filename}: cannot be read: {error.strerror}", Exit.FAILED)


def _regular_files(root: Path, plan: _Plan, *, state: bool = False) -> list[Path]:
    """The regular files under `root`, sorted, symbolic links left out and said so; in the
    state folder (`state`) without the folders that are no state, elsewhere without hidden
    names (a register's .git)."""
    found, artifacts = [], 0
    for folder, dirs, names in os.walk(root, onerror=_unreadable):
        here = Path(folder)
        keep = []
        for name in sorted(dirs):
            rel = (here / name).relative_to(root)
            why = _left_out(rel) if state else ("hidden" if name.startswith(".") else None)
            if (here / name).is_symlink():
                plan.skipped.append(f"{here / name} (a symbolic link)")
            elif why == "artifacts":
                artifacts += 1
            elif why:
                plan.skipped.append(f"{here / name}/")
            else:
                keep.append(name)
        dirs[:] = keep
        for name in sorted(names):
            path = here / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                plan.skipped.append(f"{path} (a symbolic link)")
            elif stat.S_ISREG(mode) and (state or not name.startswith(".")):
                found.append(path)
    if artifacts:
        plan.skipped.append(
            f"{root / 'runs'}/*/*/ (ansible-runner's artifacts of the runs, {artifacts} folders)"
        )
    return found


def _plan(state: State, store_file: Path | None) -> _Plan:
    plan = _Plan()
    root = state.root
    anchors = {Path(str(e["file"])) for e in state.settings().anchors if "file" in e}
    store_files = {Path(f"{store_file}{suffix}") for suffix in ("", "-journal", "-wal", "-shm")}
    for path in _regular_files(root, plan, state=True):
        rel = path.relative_to(root)
        if path in anchors:
            plan.warnings.append(
                f"the anchor file {path} lies inside the state folder: it is left out (an anchor "
                "vouches for the record only from where the record's holders cannot write)"
            )
        elif (store_file is None or path not in store_files) and _wanted_file(rel):
            plan.members.append((f"state/{rel.as_posix()}", path))
    for key, value in path_fields(state.config):
        _plan_named(plan, root, key, Path(value))
    return plan


def _plan_named(plan: _Plan, root: Path, key: tuple[str | int, ...], path: Path) -> None:
    """A file the config names outside the state folder (a folder, for the register) goes in
    under named/FIELD/; one inside it is already in."""
    ident = _ident(key)
    if not path.is_absolute():
        plan.warnings.append(f"config.yml's {ident}: {path} is not an absolute path; left out")
        return
    if _inside(path, root):
        return
    if not path.exists():
        plan.warnings.append(f"config.yml's {ident}: {path} does not exist; left out")
        return
    if path.is_dir():
        for found in _regular_files(path, plan):
            plan.members.append((f"named/{ident}/{found.relative_to(path).as_posix()}", found))
        plan.named.append({"field": list(key), "original": str(path), "kind": "folder"})
        return
    plan.members.append((f"named/{ident}/{path.name}", path))
    if key == ("register",):  # Ansible reads the variables beside a register file (the vault)
        for sibling in ("group_vars", "host_vars"):
            if (path.parent / sibling).is_dir():
                for found in _regular_files(path.parent / sibling, plan):
                    rel = found.relative_to(path.parent).as_posix()
                    plan.members.append((f"named/{ident}/{rel}", found))
    plan.named.append({"field": list(key), "original": str(path), "kind": "file", "name": path.name})


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class _StoreCopy:
    kind: str  # sqlite | postgresql
    path: Path
    head: dict[str, Any] | None
    schema: int


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite store URL (None: the store is no SQLite file)."""
    if not url.startswith("sqlite"):
        return None
    return Path(str(make_url(url).database))


def _head_of(url: str) -> tuple[dict[str, Any] | None, int]:
    store = Store(url, upgrade=False)
    try:
        head = store.head()
        return ({"seq": head["seq"], "hash": head["hash"]} if head else None), store.version()
    finally:
        store.engine.dispose()


def _copy_store(url: str, scratch: Path) -> _StoreCopy:
    source = sqlite_file(url)
    if source is not None:
        return _sqlite_copy(source, scratch / "pulih.db")
    if url.startswith("postgresql"):
        head, schema = _reading(url, lambda: _head_of(url))  # the dump holds at least this head
        dump = scratch / "store.pgdump"
        _pg_tool(url, ["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file", str(dump)])
        return _StoreCopy("postgresql", dump, head, schema)
    raise ExportError(f"the store {_shown_url(url)} is neither SQLite nor PostgreSQL")


def _sqlite_copy(source: Path, dest: Path) -> _StoreCopy:
    """A consistent copy of a live SQLite store, by SQLite's online backup (a file copy of a
    store being written can be torn)."""
    if not source.is_file():
        raise ExportError(f"the store {source} does not exist", Exit.FAILED)
    try:
        with (
            contextlib.closing(sqlite3.connect(source, timeout=30)) as live,
            contextlib.closing(sqlite3.connect(dest)) as copy,
        ):
            live.backup(copy)  # all pages in one step, under one read lock
    except sqlite3.Error as exc:
        raise ExportError(f"the store {source} cannot be copied: {exc}", Exit.FAILED) from None
    dest.chmod(0o600)
    head, schema = _head_of(f"sqlite:///{dest}")
    return _StoreCopy("sqlite", dest, head, schema)


def _shown_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def _reading(url: str, read: Any) -> Any:
    try:
        return read()
    except sa.exc.SQLAlchemyError as exc:
        why = " ".join(str(exc.orig or exc).split()) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
        raise ExportError(f"the store {_shown_url(url)} cannot be read: {why}", Exit.FAILED) from None


def _conninfo(url: URL) -> str:
    """libpq's connection string of a store URL, without its password (which goes in the
    environment, never on a command line that `ps` shows)."""
    parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    parts.update({k: v for k, v in url.query.items() if isinstance(v, str)})

    def quoted(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quoted(v)}" for k, v in parts.items() if v not in (None, ""))


def _pg_tool(url: str, argv: list[str]) -> None:
    parts = make_url(url)
    environ = dict(os.environ)
    if parts.password:
        environ["PGPASSWORD"] = str(parts.password)
    tool = argv[0]
    if shutil.which(tool) is None:
        raise ExportError(f"{tool} is not installed (Debian: apt install postgresql-client)", Exit.FAILED)
    try:
        done = subprocess.run(
            [*argv, "--dbname", _conninfo(parts)], env=environ, capture_output=True, check=False
        )
    except OSError as exc:
        raise ExportError(f"{tool} could not run: {exc}", Exit.FAILED) from None
    if done.returncode != 0:
        why = " ".join(done.stderr.decode("utf-8", "replace").split())[-500:]
        raise ExportError(f"{tool} of the store {_shown_url(url)} failed: {why}", Exit.FAILED)


# --------------------------------------------------------------------------- sealing


class _HashingWriter:
    """A file object that hashes what it passes on (the payload, on its way to age)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class _HashingReader:
    """A file object that hashes what it reads (a file into the tar, the payload out of age)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Pump(threading.Thread):
    """age's output into the file, hashed. On a write error it closes age's output, so that
    the pipeline behind it stops instead of waiting for a reader."""

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.source, self.sink, self.digest = source, sink, hashlib.sha256()
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            for chunk in iter(lambda: self.source.read(CHUNK), b""):
                self.digest.update(chunk)
                self.sink.write(chunk)
        except OSError as exc:
            self.error = exc
        finally:
            self.source.close()


def _need_age() -> None:
    missing = [tool for tool in ("age", "age-keygen") if shutil.which(tool) is None]
    if missing:
        raise ExportError(f"{' and '.join(missing)} not installed (Debian: apt install age)", Exit.FAILED)


def _check_recipients(pair: tuple[Officer, Officer]) -> None:
    """Each recipient as age reads it (its checksum, too), before anything is read or written."""
    for officer in pair:
        done = subprocess.run(["age", "-r", officer.recipient], input=b"", capture_output=True, check=False)
        if done.returncode != 0:
            raise ExportError(f"{officer.name}'s recipient is not one age takes: {_age_words(done.stderr)}")


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # by PID: our own child
        proc.wait()


def _age_words(data: bytes) -> str:
    """What age wrote on standard error, without its plea to report errors upstream."""
    lines = data.decode("utf-8", "replace").splitlines()
    kept = [line.strip() for line in lines if line.strip() and "report unexpected" not in line]
    return " ".join(kept)[-400:] or "no message"


def _said(stream: IO[bytes]) -> str:
    stream.seek(0)
    return _age_words(stream.read())


def _seal(sink: IO[bytes], pair: tuple[Officer, Officer], fill: Any) -> tuple[str, str]:
    """Stream the payload that `fill(tar)` writes through age to the inner officer, then age to
    the outer one, into `sink`; (payload SHA-256, sealed SHA-256)."""
    inner_officer, outer_officer = pair
    with tempfile.TemporaryFile() as inner_err, tempfile.TemporaryFile() as outer_err:
        inner = subprocess.Popen(
            ["age", "-r", inner_officer.recipient],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=inner_err,
        )
        outer = subprocess.Popen(
            ["age", "-r", outer_officer.recipient],
            stdin=inner.stdout,
            stdout=subprocess.PIPE,
            stderr=outer_err,
        )
        assert inner.stdin is not None and inner.stdout is not None and outer.stdout is not None
        inner.stdout.close()  # the outer age holds it now
        pump = _Pump(outer.stdout, sink)
        pump.start()
        payload = _HashingWriter(inner.stdin)
        try:
            with contextlib.suppress(BrokenPipeError):  # age stopped reading: its message says why
                with tarfile.open(fileobj=payload, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    fill(tar)
                inner.stdin.close()
        except BaseException:
            _stop(inner, outer)
            pump.join()
            raise
        with contextlib.suppress(BrokenPipeError):
            inner.stdin.close()
        pump.join()
        for proc, officer, said in ((inner, inner_officer, inner_err), (outer, outer_officer, outer_err)):
            if proc.wait() != 0:
                raise ExportError(
                    f"age could not seal to {officer.name}'s recipient: {_said(said)}", Exit.FAILED
                )
    if pump.error is not None:
        raise ExportError(f"the export cannot be written: {pump.error.strerror}", Exit.FAILED)
    return payload.digest.hexdigest(), pump.digest.hexdigest()


def _add(tar: tarfile.TarFile, member: str, path: Path) -> dict[str, Any]:
    """One file into the tar, hashed on the way; its mode and owner are the importer's to set."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ExportError(f"{path} cannot be read: {exc.strerror}", Exit.FAILED) from None
    with os.fdopen(fd, "rb") as handle:
        info = tarfile.TarInfo(member)
        status = os.fstat(fd)
        info.size, info.mtime, info.mode = status.st_size, int(status.st_mtime), 0o600
        reader = _HashingReader(handle)
        tar.addfile(info, reader)
    return {"member": member, "size": info.size, "sha256": reader.digest.hexdigest()}


def _fill(tar: tarfile.TarFile, plan: _Plan, copy: _StoreCopy, header: dict[str, Any]) -> None:
    files = [_add(tar, member, path) for member, path in plan.members]
    files.append(_add(tar, STORE_MEMBERS[copy.kind], copy.path))
    manifest = {k: header[k] for k in _SEALED_FIELDS}
    manifest.update(files=files, named=plan.named, skipped=plan.skipped, warnings=plan.warnings)
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size, info.mtime, info.mode = len(data), int(dt.datetime.now(dt.UTC).timestamp()), 0o600
    tar.addfile(info, io.BytesIO(data))


def _header_line(header: dict[str, Any]) -> bytes:
    return (json.dumps(header, sort_keys=True, ensure_ascii=True) + "\n").encode()


def _fingerprint(public: Path) -> str | None:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public)], capture_output=True, check=False
    )
    return done.stdout.decode().split()[1] if done.returncode == 0 else None


def _remove_stale_scratch(root: Path) -> None:
    """Scratch folders of exports killed before they cleaned up (their process is gone)."""
    for folder in root.glob(".export-*-*"):
        pid = folder.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def export_state(state: State, output: Path, pair: tuple[Officer, Officer]) -> dict[str, Any]:
    """Seal the state folder into `output` (atomically: the file appears whole or not at all);
    returns the header and what was left out."""
    _need_age()
    _check_recipients(pair)
    state = State(root=state.root.absolute(), config=state.config)  # one spelling of every path
    output = output.absolute()
    if _inside(output, state.root):
        raise ExportError(f"--export-state {output}: inside the state folder, which it must outlive")
    if not output.parent.is_dir() or output.is_dir():
        raise ExportError(f"--export-state {output}: names no file in an existing folder")
    url = state.store_url
    store_file = sqlite_file(url)
    plan = _plan(state, store_file.absolute() if store_file else None)
    _remove_stale_scratch(state.root)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=state.root))  # 0700
    except OSError as exc:
        raise ExportError(f"{state.root}: no scratch folder for the store's copy: {exc.strerror}") from None
    try:
        copy = _copy_store(url, scratch)
        first, second = pair
        header: dict[str, Any] = {
            "format": FORMAT,
            "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": socket.gethostname(),
            "source": str(state.root),
            "officers": [first.doc("inner"), second.doc("outer")],
            "store": copy.kind,
            "pulih": __version__,
            "schema": copy.schema,
            "audit_head": copy.head,
            "audit_key": state.config.get("audit_key"),
            "ssh_key": _fingerprint(state.ssh_key.with_name("id_ed25519.pub")),
            "open_by_hand": (
                f"tail -n +2 FILE | age -d -i {second.name}.key | age -d -i {first.name}.key | tar -xz"
            ),
        }
        _write_sealed(output, header, pair, lambda tar: _fill(tar, plan, copy, header))
    except OSError as exc:
        raise ExportError(
            f"--export-state {output}: cannot be written: {exc.strerror}", Exit.FAILED
        ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**header, "file": str(output), "files": len(plan.members) + 1, "bytes": output.stat().st_size,
            "skipped": plan.skipped, "warnings": plan.warnings}  # fmt: skip


def _write_sealed(output: Path, header: dict[str, Any], pair: tuple[Officer, Officer], fill: Any) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)  # 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            first = _header_line({**header, "payload_sha256": PLACEHOLDER, "sealed_sha256": PLACEHOLDER})
            handle.write(first)
            payload, sealed = _seal(handle, pair, fill)
            header.update(payload_sha256=payload, sealed_sha256=sealed)
            final = _header_line(header)
            if len(final) != len(first):
                raise RuntimeError("the header changed length")  # a bug: the hashes are fixed-width
            handle.seek(0)
            handle.write(final)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading an export


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The export's header and its length in bytes (where the sealed part starts)."""
    try:
        with path.open("rb") as handle:
            line = handle.readline(HEADER_LIMIT)
    except OSError as exc:
        raise ExportError(f"--import-state {path}: cannot be read: {exc.strerror}") from None
    foreign = ExportError(
        f"{path} is not a pulih state export (its first line is no pulih header)", Exit.UNUSABLE
    )
    if not line.endswith(b"\n"):
        raise foreign
    try:
        header = json.loads(line)
    except ValueError:
        raise foreign from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise foreign
    hashes = [header.get("payload_sha256"), header.get("sealed_sha256")]
    if (
        not all(isinstance(h, str) and _HEX.fullmatch(h) for h in hashes)
        or header.get("store") not in STORE_MEMBERS
    ):
        raise ExportError(f"{path}: its header is damaged (hashes or store)", Exit.UNUSABLE)
    return header, len(line)


def officers_of(header: dict[str, Any], path: Path) -> tuple[Officer, Officer]:
    """The inner and the outer layer's officers, as the header names them."""
    raw = header.get("officers")
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raw = []
    if [e.get("layer") for e in raw] != ["inner", "outer"]:
        raise ExportError(f"{path}: its header names no inner and outer officer", Exit.UNUSABLE)
    try:
        first, second = (_officer(e.get("name"), e.get("recipient"), f"{path}: header") for e in raw)
    except ExportError as exc:
        raise ExportError(str(exc), Exit.UNUSABLE) from None
    return first, second


def _recipients_of(identity: Path) -> list[str]:
    if not identity.is_file():
        raise ExportError(f"--identity {identity}: no such file")
    try:
        done = subprocess.run(
            ["age-keygen", "-y", str(identity)], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"age-keygen could not run: {exc}", Exit.FAILED) from None
    if done.returncode != 0:
        why = " ".join(done.stderr.decode("utf-8", "replace").split())
        raise ExportError(
            f"--identity {identity}: not an age identity that age-keygen -y reads ({why}); a "
            "passphrase-protected one is opened first with age -d, onto a tmpfs"
        )
    return done.stdout.decode().split()


def identities_for(identities: list[Path], pair: tuple[Officer, Officer], path: Path) -> tuple[Path, Path]:
    """(inner, outer) identity files, matched to the officers by their recipients; refused,
    naming whose is missing, unless both officers' are there."""
    held: dict[Officer, Path] = {}
    for identity in identities:
        recipients = _recipients_of(identity)
        if len(recipients) != 1:
            raise ExportError(
                f"--identity {identity}: holds {len(recipients)} identities; each officer brings their own"
            )
        officer = next((o for o in pair if o.recipient == recipients[0]), None)
        if officer is None:
            raise ExportError(
                f"--identity {identity}: its key ({recipients[0]}) is neither officer's; {path} is sealed "
                f"to {pair[0].name} ({pair[0].recipient}) and {pair[1].name} ({pair[1].recipient})"
            )
        if officer in held:
            raise ExportError(f"--identity {identity} and {held[officer]} are both {officer.name}'s")
        held[officer] = identity
    missing = [(o, layer) for o, layer in zip(pair, ("inner", "outer"), strict=True) if o not in held]
    if missing:
        whose = " and ".join(f"{o.name}'s ({o.recipient}, the {layer} layer)" for o, layer in missing)
        verb, it = ("is", "it") if len(missing) == 1 else ("are", "them")
        raise ExportError(
            f"{path} opens only with both officers' identities (--identity FILE, twice), and "
            f"{whose} {verb} missing: ask {' and '.join(o.name for o, _ in missing)} to bring {it}"
        )
    return held[pair[0]], held[pair[1]]


def _check_sealed(path: Path, offset: int, header: dict[str, Any]) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    if digest.hexdigest() != header["sealed_sha256"]:
        raise ExportError(
            f"{path} was changed or damaged after it was written: what follows its header has "
            f"SHA-256 {digest.hexdigest()}, the header says {header['sealed_sha256']}; nothing was restored",
            Exit.UNUSABLE,
        )


def _member_name(member: tarfile.TarInfo) -> str:
    parts = member.name.split("/")
    allowed = member.name == "manifest.json" or (len(parts) > 1 and parts[0] in ("state", "store", "named"))
    if not member.isreg() or not allowed or any(p in ("", ".", "..") for p in parts):
        raise ExportError(
            f"the payload holds {member.name!r}, which no pulih export holds: refused, nothing restored",
            Exit.UNUSABLE,
        )
    return member.name


def _write_member(source: IO[bytes], dest: Path) -> tuple[int, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise ExportError(f"{dest} cannot be written: {exc.strerror}", Exit.FAILED) from None
    return size, digest.hexdigest()


def _extract(reader: _HashingReader, staging: Path) -> dict[str, tuple[int, str]]:
    written: dict[str, tuple[int, str]] = {}
    with tarfile.open(fileobj=reader, mode="r|gz") as tar:  # type: ignore[call-overload]
        for member in tar:
            name = _member_name(member)
            if name in written:
                raise ExportError(f"the payload holds {name!r} twice: refused", Exit.UNUSABLE)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            written[name] = _write_member(source, staging / name)
    return written


def _unseal(
    path: Path,
    offset: int,
    keys: tuple[Path, Path],
    pair: tuple[Officer, Officer],
    staging: Path,
    expected: str,
) -> dict[str, tuple[int, str]]:
    """The outer layer opened with the outer officer's identity, the inner with the inner's, the
    payload unpacked into `staging`: {member: (size, sha256)}."""
    inner_key, outer_key = keys
    with tempfile.TemporaryFile() as outer_err, tempfile.TemporaryFile() as inner_err:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            outer = subprocess.Popen(
                ["age", "-d", "-i", str(outer_key)], stdin=fd, stdout=subprocess.PIPE, stderr=outer_err
            )
        finally:
            os.close(fd)
        inner = subprocess.Popen(
            ["age", "-d", "-i", str(inner_key)], stdin=outer.stdout, stdout=subprocess.PIPE, stderr=inner_err
        )
        assert outer.stdout is not None and inner.stdout is not None
        outer.stdout.close()
        reader = _HashingReader(inner.stdout)
        broken: Exception | None = None
        written: dict[str, tuple[int, str]] = {}
        try:
            written = _extract(reader, staging)
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            broken = exc  # most likely age stopped: its exit says which layer
        except BaseException:
            _stop(outer, inner)
            raise
        finally:
            inner.stdout.close()  # a reader that stopped early: age ends on SIGPIPE, not blocked
        ends = outer.wait(), inner.wait()
        for end, key, officer, said in (
            (ends[0], outer_key, pair[1], outer_err),
            (ends[1], inner_key, pair[0], inner_err),
        ):
            if end not in (0, -signal.SIGPIPE):
                layer = "outer" if officer is pair[1] else "inner"
                raise ExportError(
                    f"the {layer} layer, sealed to {officer.name}, does not open with {key} ({_said(said)}): "
                    "the file was altered or damaged; nothing was restored",
                    Exit.UNUSABLE,
                )
    if broken is not None or any(ends):
        raise ExportError(
            f"the payload is damaged ({broken or 'cut short'}); nothing was restored", Exit.UNUSABLE
        )
    if reader.digest.hexdigest() != expected:
        raise ExportError(
            f"the payload's SHA-256 is {reader.digest.hexdigest()}, the header says {expected}: refused",
            Exit.UNUSABLE,
        )
    return written


def _manifest(staging: Path, header: dict[str, Any], written: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """The sealed manifest, checked against the header and against what was unpacked."""
    if "manifest.json" not in written:
        raise ExportError("the payload holds no manifest.json: refused", Exit.UNUSABLE)
    manifest: dict[str, Any] = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
    edited = [k for k in _SEALED_FIELDS if manifest.get(k) != header.get(k)]
    if edited:
        raise ExportError(
            f"the header's {', '.join(edited)} differ from the sealed manifest's: the header was edited, "
            "refused",
            Exit.UNUSABLE,
        )
    listed = {f["member"]: (f["size"], f["sha256"]) for f in manifest.get("files", [])}
    if listed != {k: v for k, v in written.items() if k != "manifest.json"}:
        raise ExportError("the payload's files are not the ones its manifest lists: refused", Exit.UNUSABLE)
    if STORE_MEMBERS[header["store"]] not in listed:
        raise ExportError("the payload holds no store: refused", Exit.UNUSABLE)
    return manifest


# --------------------------------------------------------------------------- restoring


def _fresh(root: Path) -> bool:
    """Whether `root` must be made; refused when it holds anything (a state, or more)."""
    if os.geteuid() != 0:
        raise StateError("pulih serve --import-state runs as root: it makes the service's files, owned by it")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StateError(
            f"{root} exists and is not empty: --import-state restores onto a fresh state folder "
            "(move the old one away first)"
        )
    return not root.exists()


def _place(staging: Path, root: Path, written: dict[str, tuple[int, str]], store: str) -> None:
    """state/ into the folder, named/FIELD/ into restored/FIELD/, an SQLite store as pulih.db."""
    for member in written:
        top, _, rest = member.partition("/")
        if top == "state":
            dest = root / rest
        elif top == "named":
            dest = root / "restored" / rest
        elif member == STORE_MEMBERS["sqlite"] and store == "sqlite":
            dest = root / "pulih.db"
        else:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        (staging / member).rename(dest)
    for folder in ("runs", "ssh"):
        (root / folder).mkdir(mode=0o700, exist_ok=True)


def _configure(
    root: Path,
    manifest: dict[str, Any],
    *,
    content: Path | None,
    fallback_content: Path,
    store_url: str | None,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """config.yml pointed at the new folder: the files restored/ holds, paths inside the old
    folder moved to the new one, the store, and the project folder of this machine."""
    path = root / "config.yml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ExportError(f"the export's config.yml cannot be read: {exc}", Exit.UNUSABLE) from None
    if not isinstance(config, dict):
        raise ExportError("the export's config.yml is no mapping", Exit.UNUSABLE)
    old, changes = Path(str(manifest["source"])), []

    def change(key: tuple[str | int, ...], value: str | None) -> None:
        was = _get(config, key)
        if value == was:
            return
        if value is None:
            config.pop(str(key[0]), None)
        else:
            _set(config, key, value)
        changes.append({"field": _ident(key), "from": str(was), "to": str(value)})

    named = {tuple(n["field"]): n for n in manifest.get("named", [])}
    for key, value in path_fields(config):
        carried = named.get(key)
        if carried is not None:
            where = root / "restored" / _ident(key)
            change(key, str(where / carried["name"]) if carried["kind"] == "file" else str(where))
        elif Path(value).is_absolute() and _inside(Path(value), old) and old != root:
            change(key, str(root / Path(value).relative_to(old)))
    if manifest["store"] == "sqlite":
        change(("store",), None)  # the copy is DIR/pulih.db now, wherever the old store was
    elif store_url:
        change(("store",), store_url)
    here = config.get("content")
    if content is not None or not (isinstance(here, str) and Path(here, "playbooks", "backup.yml").is_file()):
        change(("content",), str((content or fallback_content).resolve()))
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True), mode=0o600)
    return config, changes


def _pg_restore(url: Any, dump: Path) -> None:
    """The dump into the store's database, which must hold no record yet (a record that
    survived is not overwritten: name an empty database with --store)."""
    if not isinstance(url, str) or not url.startswith("postgresql"):
        raise ExportError("the store was PostgreSQL: name the database to restore it into, --store URL")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            taken = _reading(url, lambda: sa.inspect(conn).has_table(meta_table.name))
    except sa.exc.SQLAlchemyError as exc:
        raise ExportError(f"the store {_shown_url(url)} cannot be reached: {exc}", Exit.FAILED) from None
    finally:
        engine.dispose()
    if taken:
        raise ExportError(
            f"the store {_shown_url(url)} already holds a pulih record: --import-state restores into an "
            "empty database (make one, and name it with --store URL)"
        )
    argv = [
        "pg_restore",
        "--exit-on-error",
        "--single-transaction",
        "--no-owner",
        "--no-privileges",
        str(dump),
    ]
    _pg_tool(url, argv)


def _own(root: Path, uid: int, gid: int) -> None:
    """Owner and modes as `pulih serve --init` makes them: the folder 0750 (the group reaches
    the socket), everything in it the service account's alone."""
    for path in [root, *root.rglob("*")]:
        mode = 0o600
        if path.is_dir():
            mode = 0o750 if path == root else 0o700
        elif path.name.endswith(".pub"):
            mode = 0o644
        os.chown(path, uid, gid, follow_symlinks=False)
        path.chmod(mode)


def _empty(root: Path, made: bool) -> None:
    """Undo a failed import: the folder was empty (or not there) when it began."""
    for child in root.iterdir() if root.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if made:
        with contextlib.suppress(OSError):
            root.rmdir()


def import_state(
    path: Path,
    root: Path,
    identities: list[Path],
    *,
    user: str = SERVICE_USER,
    content: Path | None = None,
    fallback_content: Path,
    store_url: str | None = None,
) -> dict[str, Any]:
    """Open the export with both officers' identities onto a fresh state folder `root`."""
    _need_age()
    root = root.absolute()
    header, offset = read_header(path)
    pair = officers_of(header, path)
    keys = identities_for(identities, pair, path)
    made = _fresh(root)
    if not isinstance(header.get("schema"), int) or header["schema"] > SCHEMA_VERSION:
        raise ExportError(
            f"{path} holds a store of schema {header.get('schema')}, made by pulih {header.get('pulih')}; "
            f"this pulih ({__version__}) knows schema {SCHEMA_VERSION} at most: install that release first"
        )
    _check_sealed(path, offset, header)
    ensure_service_account(SERVICE_USER)
    uid, gid = _ids(user, SERVICE_GROUP)
    try:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # nobody else's until it is whole
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
        written = _unseal(path, offset, keys, pair, staging, header["payload_sha256"])
        manifest = _manifest(staging, header, written)
        _place(staging, root, written, header["store"])
        config, changes = _configure(
            root, manifest, content=content, fallback_content=fallback_content, store_url=store_url
        )
        if header["store"] == "postgresql":
            _pg_restore(config.get("store"), staging / STORE_MEMBERS["postgresql"])
        shutil.rmtree(staging)
        _own(root, uid, gid)
    except OSError as exc:
        _empty(root, made)
        raise ExportError(
            f"{exc.filename or root}: {exc.strerror}; nothing was restored", Exit.FAILED
        ) from None
    except BaseException:
        _empty(root, made)
        raise
    return {
        "state": str(root),
        "from": str(path),
        **{k: header[k] for k in ("created_at", "host", "source", "officers", "store", "audit_head")},
        "changed": changes,
        "warnings": manifest.get("warnings", []),
    }
