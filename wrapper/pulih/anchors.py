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
from collections.abc import Iterable
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

    def verifies(self, data: bytes, signature: str) -> bool:
        with tempfile.TemporaryDirectory(prefix="pulih-anchor-") as folder:
            signers, sig = Path(folder) / "allowed_signers", Path(folder) / "line.sig"
            signers.write_text(f'{NAMESPACE} namespaces="{NAMESPACE}" {self.public.read_text().strip()}\n')
            sig.write_text(signature)
            done = _keygen(
                "-Y",
                "verify",
                "-f",
                str(signers),
                "-I",
                NAMESPACE,
                "-n",
                NAMESPACE,
                "-s",
                str(sig),
                data=data,
            )
        return done.returncode == 0


@dataclass(frozen=True)
class FileAnchor:
    path: Path
    key: AuditKey | None = None  # None: unsigned lines (a store the tests open by hand)

    @property
    def name(self) -> str:
        return f"anchor file {self.path}"

    def append(self, seq: int, digest: str, at: str) -> None:
        doc: dict[str, Any] = {"format": FORMAT, "seq": seq, "hash": digest, "at": at}
        if self.key is not None:
            doc["key"] = self.key.fingerprint()
            doc["signature"] = self.key.sign(signed_text(doc))
        line = json.dumps(doc, sort_keys=True) + "\n"
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
        """Every head the anchor holds; AnchorError when it cannot be read (never an empty list
        in its place: a missing anchor is no proof of anything)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AnchorError(f"{self.name}: cannot be read: {exc.strerror}") from None
        found = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                found.append({**doc, "seq": int(doc["seq"]), "hash": str(doc["hash"]), "line": number})
            except (ValueError, KeyError, TypeError):
                raise AnchorError(f"{self.name}: line {number} is not an anchor line") from None
        return found

    def signature_problems(self, heads: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """(seq, message) for every line not signed by the service's audit key: a line written by
        someone who can append to the anchor but does not hold the key."""
        if self.key is None:
            return []
        fingerprint = self.key.fingerprint()
        found = []
        for head in heads:
            where = f"{self.name}, line {head['line']}"
            if head.get("key") != fingerprint or not isinstance(head.get("signature"), str):
                found.append((head["seq"], f"{where} is not signed by the service's audit key {fingerprint}"))
            elif not self.key.verifies(signed_text(head), head["signature"]):
                found.append((head["seq"], f"{where}: its signature does not verify with {fingerprint}"))
        return found


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
