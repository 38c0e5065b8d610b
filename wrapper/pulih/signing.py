"""Signing an approval, the approver's side: the statement's canonical bytes, the public
key check and `ssh-keygen -Y sign`. Nothing here reads the record, so the CLI signs with it
without importing the store (pulih.approvals checks signatures against the chain's keys)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NAMESPACE = "pulih-approval"  # ssh-keygen -Y's namespace: a signature made for this is good for nothing else
FORMAT = "pulih.approval/1"
# One public key line: type, base64 and an optional comment (never options or a second key).
_KEY_TYPES = r"ssh-ed25519|sk-ssh-ed25519@openssh\.com|ecdsa-sha2-nistp(256|384|521)|ssh-rsa"
_KEY_LINE = re.compile(rf"^({_KEY_TYPES}) [A-Za-z0-9+/=]+( [^\n]*)?$")


class SignatureError(Exception):
    """A key or a signature that cannot be used; the message says why, the id what to do."""

    def __init__(self, message: str, message_id: str = "approval.signature") -> None:
        super().__init__(message)
        self.message_id = message_id


def canonical(doc: dict[str, Any]) -> bytes:
    """The exact bytes a statement's signature covers."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def statement(
    request: dict[str, Any],
    *,
    approver: str,
    targets: list[str],
    valid_hours: int,
    note: str,
    head: dict[str, Any] | None,
    outside_window: bool = False,
) -> dict[str, Any]:
    """What an approver of `request` signs; `outside_window`, only when given: the restore may
    run outside its servers' maintenance windows."""
    return {
        **({"outside_window": True} if outside_window else {}),
        "format": FORMAT,
        "request_id": request["id"],
        "approver": approver,
        "scope": sorted(f"{s['asset_id']}:{s['item']}" for s in request["scope"]),
        "target": request["target"],
        "targets": sorted(targets),
        "restore_point": request.get("restore_point"),
        "reason": {"code": request["reason"], "text": request.get("reason_text") or ""},
        "valid_hours": valid_hours,
        "note": note,
        "chain_head": {"seq": head["seq"], "hash": head["hash"]} if head else None,
    }


def keygen(args: Sequence[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=data, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SignatureError(f"ssh-keygen could not run: {exc}") from None


def checked_public_key(text: str) -> tuple[str, str]:
    """(the key as `TYPE BASE64`, its SHA256 fingerprint), or SignatureError."""
    line = " ".join(text.strip().split())
    if not _KEY_LINE.match(line):
        raise SignatureError(
            "not an SSH public key line (like 'ssh-ed25519 AAAA... comment', one key, no options)"
        )
    done = keygen(["-l", "-E", "sha256", "-f", "-"], (line + "\n").encode())
    if done.returncode != 0:
        raise SignatureError(f"ssh-keygen cannot read it as a public key: {done.stderr.decode().strip()}")
    kind, body = line.split(" ")[:2]
    return f"{kind} {body}", done.stdout.decode().split()[1]


def sign(data: bytes, key_file: Path) -> str:
    """Sign with `ssh-keygen -Y sign` (the CLI's --sign): `key_file` is the private key, or its
    .pub with the private half in the caller's ssh-agent."""
    with tempfile.TemporaryDirectory(prefix="pulih-sign-") as folder:
        body = Path(folder) / "statement.json"
        body.write_bytes(data)
        done = keygen(["-Y", "sign", "-q", "-n", NAMESPACE, "-f", str(key_file), str(body)])
        if done.returncode != 0:
            raise SignatureError(
                f"ssh-keygen cannot sign with {key_file}: {' '.join(done.stderr.decode().split())}"
            )
        return (Path(folder) / "statement.json.sig").read_text()
