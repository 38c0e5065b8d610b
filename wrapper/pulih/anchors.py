"""Anchors: the audit chain's head, published outside the store after every write.

Whoever holds the store (a copy of its file, a DBA on its PostgreSQL, root) can rewrite the
chain and recompute every hash, and `verify_audit` alone would call it intact. An anchor is a
file the service appends one line to after each transaction that added entries: the sequence
number and hash of the chain's last entry. Checking the store against it names a rewritten
entry (its hash is not the anchored one), a truncated or emptied log (an anchored entry is
gone) and an entry written outside the service (the head is on no anchor). Put the file where
the store's holders cannot write: another host's filesystem, or one `chattr +a` allows only
appends to.

Each line is signed with the service's audit key (an SSH Ed25519 key of its own, apart from its
login key) by `ssh-keygen -Y sign -n pulih-audit`, so that an anchor, and who wrote it, can be
checked offline with the same standard tool:

    printf '%s' '{"at":...,"format":"pulih.anchor/1","hash":...,"key":"SHA256:...","seq":N}' |
      ssh-keygen -Y verify -f allowed_signers -I pulih-audit -n pulih-audit -s line.sig
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "pulih.anchor/1"
NAMESPACE = "pulih-audit"  # ssh-keygen -Y's namespace: an audit signature is good for nothing else


class AnchorError(Exception):
    """An anchor that cannot be read or written; its message names it."""


def signed_text(line: dict[str, Any]) -> bytes:
    """What a line's signature covers: its fields but the signature, as canonical JSON."""
    body = {k: line[k] for k in ("format", "seq", "hash", "at", "key")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _keygen(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=data, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AnchorError(f"ssh-keygen could not run: {exc}") from None


def verifies(public_key: str, data: bytes, signature: str) -> bool:
    """Whether `signature` (pulih-audit namespace) over `data` is by `public_key` (TYPE BASE64)."""
    with tempfile.TemporaryDirectory(prefix="pulih-anchor-") as folder:
        signers, sig = Path(folder) / "allowed_signers", Path(folder) / "line.sig"
        signers.write_text(f'{NAMESPACE} namespaces="{NAMESPACE}" {public_key.strip()}\n')
        sig.write_text(signature)
        done = _keygen(
            "-Y", "verify", "-f", str(signers), "-I", NAMESPACE, "-n", NAMESPACE, "-s", str(sig), data=data
        )
    return done.returncode == 0


ROTATION = "pulih.audit-key-rotation/1"


def rotation_text(doc: dict[str, Any]) -> bytes:
    """What a rotation's signature by the key it replaces covers."""
    body = {k: doc[k] for k in ("format", "old", "old_public_key", "new", "new_public_key", "after")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class PublicAuditKey:
    """An audit key as the chain names it (its public half): what verifies the lines it signed."""

    public_key: str
    fingerprint: str

    def verifies(self, data: bytes, signature: str) -> bool:
        return verifies(self.public_key, data, signature)


@dataclass(frozen=True)
class AuditKey:
    """The service's audit signing key: its private half signs, its public half verifies."""

    private: Path

    @property
    def public(self) -> Path:
        return self.private.with_name(self.private.name + ".pub")

    @staticmethod
    def make(private: Path) -> AuditKey:
        done = _keygen("-q", "-t", "ed25519", "-N", "", "-C", NAMESPACE, "-f", str(private), data=b"")
        if done.returncode != 0:
            raise AnchorError(f"cannot make the audit key {private}: {done.stderr.decode().strip()}")
        return AuditKey(private)

    @functools.cached_property
    def _fingerprint(self) -> str:
        done = _keygen("-l", "-E", "sha256", "-f", str(self.public), data=b"")
        if done.returncode != 0:
            raise AnchorError(f"the audit key {self.public} cannot be read: {done.stderr.decode().strip()}")
        return done.stdout.decode().split()[1]

    def fingerprint(self) -> str:
        return self._fingerprint

    def sign(self, data: bytes) -> str:
        done = _keygen("-Y", "sign", "-q", "-n", NAMESPACE, "-f", str(self.private), data=data)
        if done.returncode != 0:
            raise AnchorError(f"the audit key {self.private} cannot sign: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def public_key(self) -> str:
        """TYPE BASE64 of the public half."""
        return " ".join(self.public.read_text().split()[:2])

    def verifies(self, data: bytes, signature: str) -> bool:
        return verifies(self.public_key(), data, signature)

    def as_public(self) -> PublicAuditKey:
        return PublicAuditKey(self.public_key(), self.fingerprint())


def parse_heads(text: str, name: str) -> list[dict[str, Any]]:
    """The heads in an anchor log's text, each with its line number."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            found.append({**doc, "seq": int(doc["seq"]), "hash": str(doc["hash"]), "line": number})
        except (ValueError, KeyError, TypeError):
            raise AnchorError(f"{name}: line {number} is not an anchor line") from None
    return found


class Anchor:
    """Where the chain's head goes: one signed line per head. Subclasses write and read it."""

    key: AuditKey | None

    @property
    def name(self) -> str:
        raise NotImplementedError

    def line(self, seq: int, digest: str, at: str) -> str:
        doc: dict[str, Any] = {"format": FORMAT, "seq": seq, "hash": digest, "at": at}
        if self.key is not None:
            doc["key"] = self.key.fingerprint()
            doc["signature"] = self.key.sign(signed_text(doc))
        return json.dumps(doc, sort_keys=True) + "\n"

    def append(self, seq: int, digest: str, at: str) -> None:
        raise NotImplementedError

    def heads(self) -> list[dict[str, Any]]:
        """Every head the anchor holds; AnchorError when it cannot be read (never an empty list
        in its place: a missing anchor is no proof of anything)."""
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether the anchor holds a log yet (a new one begins at the current head)."""
        raise NotImplementedError

    def with_key(self, key: AuditKey) -> Anchor:
        """The same anchor, its lines signed by `key` from now on (a rotation)."""
        raise NotImplementedError

    def signature_problems(
        self, heads: list[dict[str, Any]], key_at: Callable[[int], PublicAuditKey] | None = None
    ) -> list[tuple[int, str]]:
        """(seq, message) for every line not signed by the audit key in force at its seq (the
        service's key, or the one the chain's rotations name for that stretch): a line written by
        someone who can append to the anchor but does not hold that key."""
        if self.key is None:
            return []
        current = self.key.as_public()
        found = []
        for head in heads:
            key = key_at(head["seq"]) if key_at is not None else current
            where = f"{self.name}, line {head['line']}"
            if head.get("key") != key.fingerprint or not isinstance(head.get("signature"), str):
                found.append(
                    (head["seq"], f"{where} is not signed by the audit key of that time, {key.fingerprint}")
                )
            elif not key.verifies(signed_text(head), head["signature"]):
                found.append((head["seq"], f"{where}: its signature does not verify with {key.fingerprint}"))
        return found


@dataclass(frozen=True)
class FileAnchor(Anchor):
    path: Path
    key: AuditKey | None = None  # None: unsigned lines (a store the tests open by hand)

    @property
    def name(self) -> str:
        return f"anchor file {self.path}"

    def append(self, seq: int, digest: str, at: str) -> None:
        line = self.line(seq, digest, at)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            raise AnchorError(f"{self.name}: cannot be written: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one whole line at a time, whoever else appends
            os.write(fd, line.encode())
            os.fsync(fd)
        except OSError as exc:
            raise AnchorError(f"{self.name}: cannot be written: {exc.strerror}") from None
        finally:
            os.close(fd)

    def heads(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AnchorError(f"{self.name}: cannot be read: {exc.strerror}") from None
        return parse_heads(text, self.name)

    def exists(self) -> bool:
        return self.path.exists()

    def with_key(self, key: AuditKey) -> Anchor:
        return FileAnchor(self.path, key)


@dataclass(frozen=True, eq=False)
class ReceiverAnchor(Anchor):
    """The anchor log on the backup repository host, through its receiver with the controller's
    key (`anchor-append`, `anchor-read`): the receiver refuses a head that is not after the
    last, and the installer makes the log append-only (chattr +a) where the filesystem can."""

    receiver: dict[str, Any]  # address, port, user, ssh_identity, ssh_known_hosts
    key: AuditKey | None = None
    timeout: float = 20  # a host that does not answer must not hold every write of the record for long

    @property
    def name(self) -> str:
        return f"anchor on the repository host {self.receiver['address']}:{self.receiver.get('port') or 22}"

    def _run(self, verb: str, data: bytes = b"") -> bytes:
        from pulih.runner import (
            module_utils,
        )  # the collection's ssh command line (and not ansible_runner at import)

        argv = module_utils("agent_io").receiver_argv(self.receiver, [verb])
        try:
            done = subprocess.run(argv, input=data, capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AnchorError(f"{self.name}: cannot be reached: {exc}") from None
        if done.returncode != 0:
            why = " ".join(done.stderr.decode("utf-8", "replace").split()) or f"exit {done.returncode}"
            raise AnchorError(f"{self.name}: {verb} failed: {why}")
        return done.stdout

    def append(self, seq: int, digest: str, at: str) -> None:
        self._run("anchor-append", self.line(seq, digest, at).encode())

    def with_key(self, key: AuditKey) -> Anchor:
        return ReceiverAnchor(self.receiver, key, self.timeout)

    def _read(self) -> tuple[bool, str]:
        first, _, rest = self._run("anchor-read").decode("utf-8", "replace").partition("\n")
        try:
            exists = bool(json.loads(first)["exists"])
        except (ValueError, KeyError, TypeError):
            raise AnchorError(f"{self.name}: anchor-read answered {first[:80]!r}") from None
        return exists, rest

    def heads(self) -> list[dict[str, Any]]:
        exists, text = self._read()
        if not exists:
            raise AnchorError(f"{self.name}: holds no anchor log (it was removed, or never written)")
        return parse_heads(text, self.name)

    def exists(self) -> bool:
        """Whether the log holds a head. The installer makes it empty (to make it append-only),
        so an empty log is a new one; emptying it takes root on the repository host and lifting
        chattr +a, and even then every entry before the head anchored anew stays bound by its
        hash chain to that head."""
        try:
            there, text = self._read()
        except AnchorError:
            return True  # unreachable now: never started over; the check names it
        return there and bool(text.strip())


def problems_against(
    entries: Iterable[tuple[int, str]], heads: list[dict[str, Any]], name: str
) -> list[tuple[int, str]]:
    """(seq, message) for every way the store's chain (seq, hash) disagrees with an anchor."""
    chain = dict(entries)
    found: list[tuple[int, str]] = []
    for head in sorted(heads, key=lambda h: h["seq"]):
        seq, digest = head["seq"], head["hash"]
        if seq not in chain:
            found.append((seq, f"is in {name} but not in the store: the log was truncated or emptied"))
        elif chain[seq] != digest:
            found.append((seq, f"is not the entry {name} holds: the chain was rewritten from here on"))
    anchored = max((h["seq"] for h in heads), default=0)
    last = max(chain, default=0)
    if last > anchored:
        found.append(
            (
                anchored + 1,
                f"entries {anchored + 1}..{last} are on no anchor ({name}): written outside the "
                "service, or the anchor could not be written",
            )
        )
    return found
