"""Signed approvals: an approver's own SSH key signs what they approve.

An approver registers SSH public keys (`pulih admin user key add`, on the audit chain as
`key.added`, taken back as `key.revoked`). `pulih request approve --sign` asks the service for
the approval's statement: canonical JSON (sorted keys, no spaces, UTF-8;
`schemas/approval_statement.schema.json`) of the request, the live targets it resolves to, its
restore point and reason, the validity, the note, the approver's account and the audit chain's
head at that moment. The approver signs it with `ssh-keygen -Y sign -n pulih-approval` (their
ssh-agent holds the private key; the service never sees it) and the service checks it against
the keys the chain says the account held at that moment. The chain head ties a signature to one
history and the request id to one request, so neither a replay onto another request nor a
rewritten history passes. Anyone can check an approval offline, without pulih:

    ssh-keygen -Y verify -f allowed_signers -I sri -n pulih-approval -s approval.sig < statement.json

with the allowed-signers file `pulih audit export-signers` writes (each key with the window it
was valid in: `valid-after` its registration, `valid-before` its revocation).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pulih.signing import (
    FORMAT,
    NAMESPACE,
    SignatureError,
    canonical,
    checked_public_key,
    keygen,
    sign,
    statement,
)
from pulih.store import Store, audit_table, iso, parse_iso

__all__ = ["FORMAT", "NAMESPACE", "SignatureError", "canonical", "checked_public_key", "sign", "statement"]
KEY_ACTIONS = ("key.added", "key.revoked")
_GOOD = re.compile(r'^Good "pulih-approval" signature for .+ with \S+ key (SHA256:\S+)', re.M)


@dataclass(frozen=True)
class SigningKey:
    account: str
    public_key: str  # TYPE BASE64
    fingerprint: str
    added_at: str
    revoked_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "public_key": self.public_key,
            "fingerprint": self.fingerprint,
            "added_at": self.added_at,
            "revoked_at": self.revoked_at,
        }


def keys_on_chain(store: Store, account: str | None = None) -> list[SigningKey]:
    """Every approval key the audit chain says was registered, with its revocation if any (a
    row anyone could edit has no say)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_table.c.action, audit_table.c.at, audit_table.c.payload)
            .where(audit_table.c.action.in_(KEY_ACTIONS))
            .order_by(audit_table.c.seq)
        ).all()
    keys: dict[tuple[str, str], SigningKey] = {}
    for action, at, payload in rows:
        said = json.loads(payload)
        key = (said["account"], said["fingerprint"])
        if action == "key.added" and key not in keys:
            keys[key] = SigningKey(said["account"], said["public_key"], said["fingerprint"], at)
        elif action == "key.revoked" and key in keys and keys[key].revoked_at is None:
            old = keys[key]
            keys[key] = SigningKey(old.account, old.public_key, old.fingerprint, old.added_at, at)
    return [k for k in keys.values() if account is None or k.account == account]


def _stamp(moment: str) -> str:
    return parse_iso(moment).astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ")


def allowed_signers(keys: Sequence[SigningKey]) -> str:
    """ssh-keygen's allowed-signers lines: each account is its keys' principal, for the
    approval namespace only, within the window each key was valid in."""
    lines = []
    for key in sorted(keys, key=lambda k: (k.account, k.added_at, k.fingerprint)):
        window = f'valid-after="{_stamp(key.added_at)}"'
        if key.revoked_at:
            window += f',valid-before="{_stamp(key.revoked_at)}"'
        lines.append(f'{key.account} namespaces="{NAMESPACE}",{window} {key.public_key}')
    return "".join(line + "\n" for line in lines)


def verify(
    data: bytes, signature: str, *, principal: str, keys: Sequence[SigningKey], at: dt.datetime
) -> str:
    """The fingerprint of the key of `principal` that made `signature` over `data`, valid at
    `at`; SignatureError otherwise."""
    mine = [k for k in keys if k.account == principal]
    if not mine:
        raise SignatureError(
            f"{principal} has no registered signing key (pulih admin user key add)", "approval.no_key"
        )
    with tempfile.TemporaryDirectory(prefix="pulih-approval-") as folder:
        signers, sig = Path(folder) / "allowed_signers", Path(folder) / "statement.sig"
        signers.write_text(allowed_signers(mine))
        sig.write_text(signature)
        argv = ["-Y", "verify", "-f", str(signers), "-I", principal, "-n", NAMESPACE, "-s", str(sig)]
        argv.append(f"-Overify-time={at.astimezone(dt.UTC).strftime('%Y%m%d%H%M%SZ')}")
        done = keygen(argv, data)
    found = _GOOD.search(done.stdout.decode())
    if done.returncode != 0 or not found:
        why = " ".join(done.stderr.decode().split()) or "no reason given"
        raise SignatureError(
            f"the signature does not verify with any key {principal} held at {iso(at)} ({why})"
        )
    return found.group(1)
