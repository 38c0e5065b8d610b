"""Anchors: the audit chain's head, published outside the store after every write.

Whoever holds the store (a copy of its file, a DBA on its PostgreSQL, root) can rewrite the
chain and recompute every hash, and `verify_audit` alone would call it intact. An anchor is a
file the service appends one line to after each transaction that added entries: the sequence
number and hash of the chain's last entry. Checking the store against it names a rewritten
entry (its hash is not the anchored one), a truncated or emptied log (an anchored entry is
gone) and an entry written outside the service (the head is on no anchor). Put the file where
the store's holders cannot write: another host's filesystem, or one `chattr +a` allows only
appends to.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "pulih.anchor/1"


class AnchorError(Exception):
    """An anchor that cannot be read or written; its message names it."""


@dataclass(frozen=True)
class FileAnchor:
    path: Path

    @property
    def name(self) -> str:
        return f"anchor file {self.path}"

    def append(self, seq: int, digest: str, at: str) -> None:
        line = json.dumps({"format": FORMAT, "seq": seq, "hash": digest, "at": at}, sort_keys=True) + "\n"
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
                found.append({"seq": int(doc["seq"]), "hash": str(doc["hash"])})
            except (ValueError, KeyError, TypeError):
                raise AnchorError(f"{self.name}: line {number} is not an anchor line") from None
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
