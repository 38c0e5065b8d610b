"""Requests, as the two SOPs run them, and the gate every restore must pass.

Procedure A (recovery, Form PPD/PD) and procedure B (backup/restore on request) share the
steps: filed -> received -> approved | rejected -> assessed -> backups_checked -> planned
-> executed (again for every retry) -> confirmed -> closed. A request of procedure B may ask
for a backup instead (kind 'backup', e.g. before a migration): its disposition is followed by
the plan, it has no assessment nor backup check, and its runs make the backups it asks for.
Each step is done by an actor in a role the configuration gives them, is refused out of order,
and is recorded with who, when and what they wrote, in the request and in the audit log, in
one transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
import yaml

from pulih import approvals, delegation
from pulih.mail import MailSettings
from pulih.mail import settings_from as mail_settings
from pulih.office import Office, office_settings
from pulih.store import (
    Store,
    approvals_table,
    audit_table,
    iso,
    letters_table,
    now,
    parse_iso,
    requests_table,
    steps_table,
)

PROCEDURES: Final = {"recovery": "A", "backup_restore": "B"}
ROLES: Final = ("requester", "receiver", "approver", "operator")
REASONS: Final = ("disaster", "error", "accidental_deletion", "other")
DAMAGE: Final = ("none", "disaster", "error", "accidental_deletion", "other")
KINDS: Final = ("restore", "backup")  # what a request asks for; a backup only in procedure B
BACKUP_REASONS: Final = ("migration", "maintenance", "other")
# A backup request's steps where they differ from a restore's: no assessment, no backup check,
# and no 'not restored' answer (its runs are retried until the backups are made).
BACKUP_NEXT: Final[dict[str, tuple[str, ...]]] = {
    "approved": ("planned", "revoked"),
    "executed": ("executed", "confirmed", "revoked"),
    "revoked": ("approved", "rejected", "executed"),
}
RESTORE_ONLY: Final = ("assessed", "backups_checked", "not_restored")
# The letter of a request (surat permohonan), a scan or a PDF: its type is read from its first
# bytes, never from its name.
LETTER_MAX_BYTES: Final = 10 * 1024 * 1024
LETTER_TYPES: Final = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


@dataclass(frozen=True)
class StepSpec:
    """One step of the SOPs: who does it, what may follow it, its standard time in each
    procedure (minutes; None: "depends on the size of the data" or not given), the form it is
    written on (Form PPD, the request; Form PD, the work) and its name in each language. The
    record, the forms, the CLI and the desk read the steps from this one table."""

    name: str
    role: str
    next: tuple[str, ...]
    minutes: dict[str, int | None]
    form: str
    label: dict[str, str]


def _minutes(recovery: int | None, backup_restore: int | None) -> dict[str, int | None]:
    return {"recovery": recovery, "backup_restore": backup_restore}


# Procedure A's standard times: 2 + 1 + 2 + 10 + 5 = 20 minutes of fixed steps; its 10-minute
# step is one of the unreadable steps 7-8 of the scan, which pulih reads as the plan. Procedure
# B: verification and disposition 15 min, planning 1 hour, execution 1 day, confirmation 15 min.
STEPS: Final[tuple[StepSpec, ...]] = (
    StepSpec(
        "filed", "requester", ("received",), _minutes(2, None), "ppd", {"en": "filed", "id": "diajukan"}
    ),
    StepSpec(
        "received",
        "receiver",
        ("approved", "rejected"),
        _minutes(1, None),
        "ppd",
        {"en": "received", "id": "diterima"},
    ),
    StepSpec(
        "approved",
        "approver",
        ("assessed", "revoked"),
        _minutes(2, 15),
        "ppd",
        {"en": "approved", "id": "disetujui"},
    ),
    StepSpec("rejected", "approver", (), _minutes(2, 15), "ppd", {"en": "rejected", "id": "ditolak"}),
    # Decided again (a new approval is assessed and planned anew); a restore that was running
    # when the approval was revoked still records how its attempt ended, and the status stays.
    StepSpec(
        "revoked",
        "approver",
        ("approved", "rejected", "executed"),
        _minutes(None, None),
        "ppd",
        {"en": "approval revoked", "id": "persetujuan dicabut"},
    ),
    StepSpec(
        "assessed",
        "operator",
        ("backups_checked", "revoked"),
        _minutes(None, None),
        "pd",
        {"en": "assessed", "id": "diperiksa"},
    ),
    StepSpec(
        "backups_checked",
        "operator",
        ("planned", "revoked"),
        _minutes(None, None),
        "pd",
        {"en": "backups checked", "id": "cadangan diperiksa"},
    ),
    StepSpec(
        "planned",
        "operator",
        ("executed", "revoked"),
        _minutes(10, 60),
        "pd",
        {"en": "planned", "id": "direncanakan"},
    ),
    # The SOP: repeat the restore until it succeeds.
    StepSpec(
        "executed",
        "operator",
        ("executed", "confirmed", "not_restored", "revoked"),
        _minutes(None, 1440),
        "pd",
        {"en": "executed", "id": "dilaksanakan"},
    ),
    StepSpec(
        "confirmed",
        "requester",
        ("closed",),
        _minutes(5, 15),
        "pd",
        {"en": "confirmed", "id": "dikonfirmasi"},
    ),
    # The requester's other answer: the data is not back; restored again (or given up), on the record.
    StepSpec(
        "not_restored",
        "requester",
        ("executed", "closed", "revoked"),
        _minutes(5, 15),
        "pd",
        {"en": "not restored (requester)", "id": "belum pulih (pemohon)"},
    ),
    StepSpec("closed", "receiver", (), _minutes(None, None), "pd", {"en": "closed", "id": "selesai"}),
)
STEP: Final = {spec.name: spec for spec in STEPS}
STEP_ROLE: Final = {spec.name: spec.role for spec in STEPS}
# The steps each status allows next.
NEXT: Final[dict[str, tuple[str, ...]]] = {spec.name: spec.next for spec in STEPS}
STANDARD_MINUTES: Final[dict[str, dict[str, int | None]]] = {
    procedure: {spec.name: spec.minutes[procedure] for spec in STEPS} for procedure in PROCEDURES
}


class Refused(Exception):
    """The record does not allow it (exit 3). `message_id` says which refusal it is, for the
    front ends that translate it (the desk); the message gives the particulars."""

    def __init__(self, message: str, message_id: str = "record.refused") -> None:
        super().__init__(message)
        self.message_id = message_id


class BadRequestInput(Exception):
    """The input is not usable (exit 2)."""


@dataclass
class Config:
    """The service's settings (its config.yml). Who may act in which role is never here: roles
    are the service's accounts (pulih admin user)."""

    approval_validity_hours: int = 72
    standard_minutes: dict[str, dict[str, int | None]] = field(
        default_factory=lambda: {k: dict(v) for k, v in STANDARD_MINUTES.items()}
    )
    store: str | None = None
    # The SOP: repeat the restore until it succeeds; pulih tries this often, this far apart.
    restore_attempts: int = 3
    restore_retry_seconds: float = 30.0
    # Where the audit chain's head is appended after every write (pulih.anchors), outside the
    # store where its holders cannot write: {"file": PATH} or {"receiver": {address, ...}}.
    anchors: list[dict[str, Any]] = field(default_factory=list)
    mail: MailSettings | None = None  # the `mail:` section (pulih.mail); None: no mail is sent
    office: Office | None = None  # the `office:` section (pulih.office): the forms' letterhead


_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and line feed are text


def checked_text(
    value: str,
    what: str,
    *,
    limit: int,
    lines: bool = False,
    pattern: re.Pattern[str] | None = None,
    hint: str = "",
) -> str:
    """Free text for the record, checked once for every store: a length both stores hold, no
    control characters (a line break only where `lines`), and `pattern` when given."""
    if len(value) > limit:
        raise BadRequestInput(f"{what}: {len(value)} characters, at most {limit}")
    bad = _CONTROL.search(value) or (not lines and ("\n" in value or "\r" in value))
    if bad:
        raise BadRequestInput(f"{what}: holds a control character; write plain text")
    if pattern is not None and value and not pattern.match(value):
        raise BadRequestInput(f"{what}: '{value}' is not valid: {hint}")
    return value


_RECEIVER_FIELDS = {"address", "port", "user", "ssh_identity", "ssh_known_hosts"}


def _anchor_entry(entry: Any) -> bool:
    """{file: /absolute/path}, or {receiver: {address, port?, user?, ssh_identity?, ssh_known_hosts?}}."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return False
    if "file" in entry:
        return isinstance(entry["file"], str) and entry["file"].startswith("/")
    receiver = entry.get("receiver")
    return (
        isinstance(receiver, dict)
        and "address" in receiver
        and set(receiver) <= _RECEIVER_FIELDS
        and all(isinstance(v, str | int) and not isinstance(v, bool) for v in receiver.values())
        and all(
            str(receiver[k]).startswith("/") for k in ("ssh_identity", "ssh_known_hosts") if k in receiver
        )
    )


def load_config(path: Path) -> Config:
    """The settings in the service's config.yml (defaults where it names none)."""
    if not path.exists():
        return Config()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BadRequestInput(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequestInput(f"{path}: must be a mapping (actors, approval_validity_hours, ...)")
    if "actors" in raw or "allow_actor_override" in raw:
        raise BadRequestInput(
            f"{path}: 'actors' and 'allow_actor_override' are gone: roles are the service's accounts "
            "(pulih admin user add NAME --role ROLE), and nobody names their own actor"
        )

    def number(key: str, default: float, low: float, high: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise BadRequestInput(
                f"{path}: field '{key}': {value!r} is not a number from {low:g} to {high:g}"
            )
        return value

    store = raw.get("store")
    if store is not None and not isinstance(store, str):
        raise BadRequestInput(f"{path}: field 'store': must be a database URL, not {type(store).__name__}")
    anchors = raw.get("anchors") or []
    if not isinstance(anchors, list) or not all(_anchor_entry(a) for a in anchors):
        raise BadRequestInput(
            f"{path}: field 'anchors': a list, one per anchor of the audit chain, each "
            "{file: /absolute/path} or {receiver: {address: HOST, port: 22, user: pulih, "
            "ssh_identity: /path, ssh_known_hosts: /path}}"
        )
    config = Config(
        anchors=anchors,
        store=store,
        approval_validity_hours=int(number("approval_validity_hours", 72, 1, 720)),
        restore_attempts=int(number("restore_attempts", 3, 1, 20)),
        restore_retry_seconds=float(number("restore_retry_seconds", 30, 0, 3600)),
        mail=mail_settings(raw.get("mail"), path, BadRequestInput),
        office=office_settings(raw.get("office"), path, BadRequestInput),
    )
    for procedure, minutes in (raw.get("standard_minutes") or {}).items():
        if procedure not in config.standard_minutes:
            raise BadRequestInput(f"{path}: standard_minutes: unknown procedure '{procedure}'")
        config.standard_minutes[procedure].update(minutes or {})
    return config


def _load(conn: sa.Connection, request_id: str, *, lock: bool = False) -> dict[str, Any]:
    query = sa.select(requests_table).where(requests_table.c.id == request_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise Refused(f"there is no request {request_id!r}")
    return dict(row)


def check_new(
    *,
    procedure: str,
    skpd: str,
    contact: str,
    reason: str,
    reason_text: str,
    restore_point: str | None,
    kind: str = "restore",
) -> None:
    """A new request's own fields, checked before anything else is asked of it."""
    checked_text(
        skpd,
        "--skpd",
        limit=64,
        pattern=_SLUG,
        hint="an SKPD code of the register (letters, digits, '._-')",
    )
    checked_text(contact, "--contact", limit=256)
    checked_text(reason_text, "--reason-text", limit=2000, lines=True)
    checked_text(restore_point or "", "--restore-point", limit=32)
    if procedure not in PROCEDURES:
        raise BadRequestInput(f"unknown procedure '{procedure}' (recovery or backup_restore)")
    if kind not in KINDS:
        raise BadRequestInput(f"unknown kind '{kind}' (restore or backup)")
    if kind == "backup" and procedure != "backup_restore":
        raise BadRequestInput("a backup is asked for in procedure B: --procedure backup_restore")
    if kind == "backup" and restore_point:
        raise BadRequestInput("a backup request has no restore point: its backups are taken when it runs")
    reasons = BACKUP_REASONS if kind == "backup" else REASONS
    if reason not in reasons:
        raise BadRequestInput(f"unknown reason '{reason}' for a {kind} request ({', '.join(reasons)})")
    if reason == "other" and not reason_text.strip():
        raise BadRequestInput("reason 'other' needs a text (--reason-text)")
    if restore_point:
        try:
            restore_instant(restore_point)
        except ValueError:
            raise BadRequestInput(
                f"restore point '{restore_point}' is not a date or time (ISO 8601)"
            ) from None


def next_steps(kind: str, status: str) -> tuple[str, ...]:
    """The steps a request of `kind` in `status` allows next."""
    return BACKUP_NEXT.get(status, NEXT[status]) if kind == "backup" else NEXT[status]


def letter_type(content: bytes) -> str:
    """A letter's media type from its first bytes, or BadRequestInput."""
    for magic, media_type in LETTER_TYPES:
        if content.startswith(magic):
            return media_type
    raise BadRequestInput(
        "a request letter is a PDF, PNG or JPEG file; this one is none of them (its first bytes: "
        f"{content[:8].hex() or 'none'})"
    )


def last_step(conn: sa.Connection, request_id: str) -> dict[str, Any] | None:
    """The newest step recorded on a request (inside the caller's transaction), or None."""
    row = (
        conn.execute(
            sa.select(steps_table)
            .where(steps_table.c.request_id == request_id)
            .order_by(steps_table.c.id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def _last_step(store: Store, request_id: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = last_step(conn, request_id)
    return row or {"actor": "?", "at": "?", "note": ""}


def chained_request(store: Store, request_id: str) -> dict[str, Any] | None:
    """What decides a restore of a request, as its steps wrote it on the audit log: status,
    requester, scope, target, approver, expiry and the approved targets. None: the log has no
    filing of it. A key the log does not hold (an entry older than the key) is left out."""
    with store.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(audit_table.c.action, audit_table.c.actor, audit_table.c.payload, audit_table.c.at)
                .where(audit_table.c.request_id == request_id, audit_table.c.action.like("request.%"))
                .order_by(audit_table.c.seq)
            )
            .mappings()
            .all()
        )
    state: dict[str, Any] | None = None
    for row in rows:
        step, payload = row["action"].removeprefix("request."), json.loads(row["payload"])
        if step == "filed":
            state = {"status": "filed", "requester": row["actor"], "approved_by": None}
            state["kind"] = payload.get("kind", "restore")  # filings before backup requests: restores
            state.update({k: payload[k] for k in ("scope", "target") if k in payload})
            state["restore_point"], state["plan"] = payload.get("restore_point"), None
            state.update(approval_expires_at=None, targets=None, signed=None, approval_at=None)
            state["acting_for"], state["outside_window"] = None, False
            continue
        if state is None or step not in STEP:
            continue
        if (step, state["status"]) != ("executed", "revoked"):  # as _step sets it
            state["status"] = step
        changes = payload.get("changes") or {}
        state.update({k: changes[k] for k in ("approved_by", "approval_expires_at") if k in changes})
        if "plan" in changes:
            state["plan"] = json.loads(changes["plan"])
        if step == "approved":
            state["targets"] = payload.get("targets")
            state["signed"], state["approval_at"] = payload.get("signed"), row["at"]
            state["acting_for"] = payload.get("acting_for")
            state["outside_window"] = bool(payload.get("outside_window"))
    return state


def restore_instant(text: str) -> dt.datetime:
    """A restore point as a moment: a date alone means the end of that day, UTC."""
    return parse_iso(text if "T" in text else text + "T23:59:59+00:00")


_BACKUP_STARTED = re.compile(r"^([0-9]{8}T[0-9]{6}Z)-[0-9a-f]{4}$")


def after_restore_point(restore_point: str | None, backups: dict[str, str]) -> str:
    """Why a plan does not serve the request's restore point ('' when it does): a backup taken
    after it. A backup's id begins with the moment it was started (the manifest the record
    binds says the same)."""
    if not restore_point:
        return ""
    wanted = restore_instant(restore_point)
    for key, backup_id in sorted(backups.items()):
        started = _BACKUP_STARTED.match(backup_id)
        if started is None:
            return f"{backup_id} is not a backup id (YYYYMMDDTHHMMSSZ-xxxx) of {key}"
        when = dt.datetime.strptime(started.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        if when > wanted:
            return (
                f"backup {backup_id} of {key} was taken at {iso(when)}, after the restore point "
                f"{restore_point}"
            )
    return ""


def signature_required(policy: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether the office's policy wants an approval of a restore to `target` signed."""
    wanted = policy.get("signed_approvals") or "none"
    return wanted == "all" or (wanted == "in_place" and target.get("kind") != "alternate")


def describe_target(target: dict[str, Any]) -> str:
    return "restores in place" if target.get("kind") != "alternate" else "every restore"


# The gate's audit actions, by what the request asks for.
GATE_ACTIONS: Final = {"restore": "restore", "backup": "request_backup"}


# What a recorded step sets going inside the step's own transaction (the service's mail
# outbox), called with the connection and the request's id after its rows and audit entry: a
# step on the record is never a mail lost, and a mail is never of a step that was not recorded.
OnStep = Callable[[sa.Connection, str], None]


class Requests:
    """The request record and its rules; ``clock`` is injectable for tests."""

    def __init__(
        self,
        store: Store,
        config: Config,
        clock: Callable[[], dt.datetime] = now,
        *,
        roles_of: Callable[[str], set[str]],
        roles_from: str | None = None,
        audit_context: dict[str, Any] | None = None,
        on_step: OnStep | None = None,
    ) -> None:
        self.store, self.config, self.clock = store, config, clock
        self.on_step = on_step
        # How the actor was proved (socket, token and its id): on every step's audit entry, so an
        # auditor can tell a step done with a token an admin minted from one done in person.
        self.audit_context = audit_context or {}
        # Whose roles: the service's accounts.
        self.roles_of = roles_of
        self.roles_from = roles_from

    # ---------------------------------------------------------------- helpers

    def _require_role(self, actor: str, step: str) -> tuple[str, delegation.Delegation | None]:
        """The role `step` needs, held by `actor` on their account or, for an approver's step,
        by a delegation in force now from an approver who still holds the role (Plt./Plh.)."""
        role = STEP_ROLE[step]
        if role in self.roles_of(actor):
            return role, None
        if role in delegation.ROLES:
            with self.store.engine.connect() as conn:
                acting = delegation.active_for(conn, actor, role, self.clock())
            if acting is not None and role in self.roles_of(acting.delegator):
                return role, acting
        held = ", ".join(sorted(self.roles_of(actor))) or "none"
        raise Refused(
            f"{actor} may not record '{step}': it needs the role '{role}' "
            f"(theirs: {held}; roles come from {self.roles_from or 'the accounts'})"
        )

    def _step(
        self,
        actor: str,
        request_id: str,
        step: str,
        note: str,
        check: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        rows: Callable[[sa.Connection, delegation.Delegation | None], None] | None = None,
        audit: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One step in one transaction: the status checked and changed, the step, `rows` (more
        rows of the step, e.g. an approval) and the audit entry, or nothing at all."""
        checked_text(note, "note", limit=2000, lines=True)
        role, acting = self._require_role(actor, step)
        at = self.clock()
        with self.store.transaction() as conn:
            request = _load(conn, request_id, lock=True)
            self._distinct(conn, actor, request_id, role)
            if acting is not None and request["requester"] == acting.delegator:
                raise Refused(
                    f"{acting.delegator} filed request {request_id}: {actor}, acting for them, may not "
                    "decide on it; another approver does"
                )
            if request["kind"] == "backup" and step in RESTORE_ONLY:
                raise Refused(f"request {request_id} asks for a backup: '{step}' is a step of a restore")
            allowed = next_steps(request["kind"], request["status"])
            if step not in allowed:
                if request["status"] == "rejected":
                    raise Refused(
                        f"request {request_id} was rejected ({request['rejected_reason']}); "
                        "nothing more can be done with it"
                    )
                then = " or ".join(allowed) or "nothing: it is finished"
                raise Refused(
                    f"request {request_id} is '{request['status']}': '{step}' is out of order (next: {then})"
                )
            changes = check(request) if check else {}
            # An attempt's end after a revocation is on the record, but the request stays revoked.
            changes["status"] = (
                request["status"] if (step, request["status"]) == ("executed", "revoked") else step
            )
            conn.execute(sa.update(requests_table).where(requests_table.c.id == request_id).values(**changes))
            if rows is not None:
                rows(conn, acting)
            conn.execute(
                sa.insert(steps_table).values(
                    request_id=request_id,
                    step=step,
                    actor=actor,
                    role=role,
                    at=iso(at),
                    note=note,
                    acting_for=acting.delegator if acting else None,
                )
            )
            self.store.append_audit(
                conn,
                actor=actor,
                action=f"request.{step}",
                request_id=request_id,
                payload={
                    "role": role,
                    "note": note,
                    "changes": {k: v for k, v in changes.items() if k != "status"},
                    **({"acting_for": acting.delegator, "delegation": acting.id} if acting else {}),
                    **(audit or {}),
                    **self.audit_context,
                },
                at=at,
            )
            if self.on_step is not None:
                self.on_step(conn, request_id)
        return self.get(request_id)

    def _distinct(self, conn: sa.Connection, actor: str, request_id: str, role: str) -> None:
        """Refuse when the policy says `role` and another role of this request's steps are
        different people and `actor` already acted in that other role."""
        pairs = self.store.policy(conn).get("distinct") or []
        others = {b if role == a else a for a, b in pairs if role in (a, b)} - {role}
        if not others:
            return
        acted = {
            row.role
            for row in conn.execute(
                sa.select(steps_table.c.role).where(
                    steps_table.c.request_id == request_id, steps_table.c.actor == actor
                )
            )
        }
        clash = sorted(others & acted)
        if clash:
            raise Refused(
                f"{actor} acted as {clash[0]} on request {request_id}; the office's policy wants "
                f"the {clash[0]} and the {role} to be different people (pulih admin policy show)"
            )

    # ---------------------------------------------------------------- steps

    def new(
        self,
        actor: str,
        *,
        procedure: str,
        skpd: str,
        contact: str,
        scope: list[dict[str, str]],
        reason: str,
        reason_text: str = "",
        restore_point: str | None = None,
        target: dict[str, Any] | None = None,
        kind: str = "restore",
    ) -> dict[str, Any]:
        """File a request; `kind` 'backup' asks for a backup of `scope` (procedure B), which
        has no restore point and no target."""
        check_new(
            procedure=procedure,
            skpd=skpd,
            contact=contact,
            reason=reason,
            reason_text=reason_text,
            restore_point=restore_point,
            kind=kind,
        )
        role, _ = self._require_role(actor, "filed")
        if not scope:
            raise BadRequestInput("a request names at least one data item (--item ASSET_ID:ITEM)")
        if kind == "backup" and target:
            raise BadRequestInput("a backup request has no target: its backups go to the repository")
        target = {} if kind == "backup" else target or {"kind": "in_place"}
        at = self.clock()
        with self.store.transaction() as conn:
            if conn.dialect.name == "postgresql":  # one filer at a time picks the next number
                conn.execute(sa.text("LOCK TABLE pulih_requests IN SHARE ROW EXCLUSIVE MODE"))
            year = at.year
            # Procedure A's requests are Form PPD; procedure B's are request letters.
            prefix = f"{'PPD' if procedure == 'recovery' else 'REQ'}-{year}-"
            last = (
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(requests_table)
                    .where(requests_table.c.id.like(prefix + "%"))
                ).scalar()
                or 0
            )
            request_id = f"{prefix}{last + 1:04d}"
            conn.execute(
                sa.insert(requests_table).values(
                    id=request_id,
                    procedure=procedure,
                    kind=kind,
                    status="filed",
                    requester=actor,
                    skpd=skpd,
                    contact=contact,
                    reason=reason,
                    reason_text=reason_text,
                    restore_point=restore_point,
                    target=json.dumps(target),
                    scope=json.dumps(scope),
                    created_at=iso(at),
                )
            )
            conn.execute(
                sa.insert(steps_table).values(
                    request_id=request_id, step="filed", actor=actor, role=role, at=iso(at), note=reason_text
                )
            )
            self.store.append_audit(
                conn,
                actor=actor,
                action="request.filed",
                request_id=request_id,
                payload={
                    "procedure": procedure,
                    "kind": kind,
                    "scope": scope,
                    "target": target,
                    "reason": reason,
                    "reason_text": reason_text,
                    "restore_point": restore_point,
                    "skpd": skpd,
                    **self.audit_context,
                },
                at=at,
            )
            if self.on_step is not None:
                self.on_step(conn, request_id)
        return self.get(request_id)

    def receive(self, actor: str, request_id: str, note: str = "") -> dict[str, Any]:
        return self._step(actor, request_id, "received", note)

    def approval_statement(
        self,
        actor: str,
        request_id: str,
        *,
        valid_hours: int | None = None,
        note: str = "",
        targets: list[str] | None = None,
        outside_window: bool = False,
    ) -> dict[str, Any]:
        """What `actor` signs to approve `request_id` so (pulih.approvals), at today's chain head."""
        hours = valid_hours or self.config.approval_validity_hours
        return approvals.statement(
            self.get(request_id),
            approver=actor,
            targets=targets or [],
            valid_hours=hours,
            note=note,
            head=self.store.head(),
            outside_window=outside_window,
        )

    def _checked_signature(
        self,
        actor: str,
        request: dict[str, Any],
        signed: dict[str, Any],
        *,
        hours: int,
        note: str,
        targets: list[str],
        outside_window: bool,
    ) -> dict[str, Any]:
        """The signed approval as it goes on the record, or Refused naming what is wrong: a
        statement that is not this approval's, a chain head not on this log, a signature no key
        of the approver's (valid now) made."""
        given, signature = signed.get("statement"), signed.get("signature")
        if not isinstance(given, dict) or not isinstance(signature, str) or len(signature) > 16384:
            raise BadRequestInput("a signed approval carries its statement (a JSON object) and its signature")
        expected = approvals.statement(
            request,
            approver=actor,
            targets=targets,
            valid_hours=hours,
            note=note,
            head=None,
            outside_window=outside_window,
        )
        for key in sorted((set(expected) | set(given)) - {"chain_head"}):
            if given.get(key) != expected.get(key):
                raise Refused(
                    f"the signed statement's {key} is {json.dumps(given.get(key))}, but this approval of "
                    f"request {request['id']} is {json.dumps(expected.get(key))}: sign the statement the "
                    "service gives for it (pulih request statement)",
                    "approval.statement",
                )
        head = given.get("chain_head")
        with self.store.engine.connect() as conn:
            on_log = (
                conn.execute(
                    sa.select(audit_table.c.hash).where(audit_table.c.seq == head.get("seq"))
                ).scalar()
                if isinstance(head, dict) and isinstance(head.get("seq"), int)
                else None
            )
        if on_log is None or not isinstance(head, dict) or on_log != head.get("hash"):
            raise Refused(
                f"the signed statement names the audit chain's head {json.dumps(head)}, which is not on "
                "this audit log: it was signed on another history",
                "approval.statement",
            )
        try:
            fingerprint = approvals.verify(
                approvals.canonical(given),
                signature,
                principal=actor,
                keys=approvals.keys_on_chain(self.store, actor),
                at=self.clock(),
            )
        except approvals.SignatureError as exc:
            raise Refused(str(exc), exc.message_id) from None
        return {"statement": given, "signature": signature, "key": fingerprint}

    def approve(
        self,
        actor: str,
        request_id: str,
        *,
        valid_hours: int | None = None,
        note: str = "",
        targets: list[str] | None = None,
        signed: dict[str, Any] | None = None,
        outside_window: bool = False,
    ) -> dict[str, Any]:
        """Approve for `valid_hours`; `targets`: the live targets (engine://address:port/name)
        the request resolves to in the register now, which every restore under it must keep to;
        `signed`: the approval's statement and the approver's SSH signature of it;
        `outside_window`: the restore may run outside its servers' maintenance windows."""
        hours = valid_hours or self.config.approval_validity_hours
        if hours <= 0:
            raise BadRequestInput("an approval is valid for a positive number of hours")
        signature: dict[str, Any] | None = None
        audit: dict[str, Any] = {} if targets is None else {"targets": targets}
        if outside_window:
            audit["outside_window"] = True

        def check(request: dict[str, Any]) -> dict[str, Any]:
            nonlocal signature
            if request["requester"] == actor:
                raise Refused(
                    f"{actor} filed request {request_id} and may not approve it: "
                    "the approver is never the requester"
                )
            parsed = {
                **request,
                "scope": json.loads(request["scope"]),
                "target": json.loads(request["target"]),
            }
            if signed is not None:
                signature = self._checked_signature(
                    actor,
                    parsed,
                    signed,
                    hours=hours,
                    note=note,
                    targets=targets or [],
                    outside_window=outside_window,
                )
                audit["signed"] = signature
            elif parsed["kind"] == "restore" and signature_required(self.store.policy(), parsed["target"]):
                raise Refused(
                    f"the office's policy wants a signed approval for {describe_target(parsed['target'])}: "
                    f"approve request {request_id} with --sign (pulih admin policy show)",
                    "approval.unsigned",
                )
            return {
                "approved_by": actor,
                "approved_at": iso(at),
                "approval_expires_at": iso(at + dt.timedelta(hours=hours)),
            }

        at = self.clock()

        def approval(conn: sa.Connection, acting: delegation.Delegation | None) -> None:
            conn.execute(
                sa.insert(approvals_table).values(
                    request_id=request_id,
                    approver=actor,
                    acting_for=acting.delegator if acting else None,
                    delegation_id=acting.id if acting else None,
                    outside_window=outside_window,
                    at=iso(at),
                    expires_at=iso(at + dt.timedelta(hours=hours)),
                    note=note,
                    targets=None if targets is None else json.dumps(targets),
                    statement=approvals.canonical(signature["statement"]).decode() if signature else None,
                    signature=signature["signature"] if signature else None,
                    key_fingerprint=signature["key"] if signature else None,
                )
            )

        return self._step(actor, request_id, "approved", note, check, approval, audit)

    def reject(self, actor: str, request_id: str, reason: str) -> dict[str, Any]:
        if not reason.strip():
            raise BadRequestInput("a rejection needs its reason: the requester is told why")

        def check(request: dict[str, Any]) -> dict[str, Any]:
            if request["requester"] == actor:
                raise Refused(f"{actor} filed request {request_id} and may not decide on it")
            return {"rejected_reason": reason}

        return self._step(actor, request_id, "rejected", reason, check)

    def revoke(self, actor: str, request_id: str, reason: str) -> dict[str, Any]:
        """Take an approval back: every restore of the request stops at its next gate (before
        its next attempt, or right before its next swap) until it is approved again."""
        if not reason.strip():
            raise BadRequestInput("a revocation needs its reason: the operator and requester are told why")
        return self._step(actor, request_id, "revoked", reason)

    def assess(
        self,
        actor: str,
        request_id: str,
        *,
        data_exists: bool,
        damage: str,
        note: str = "",
        probe: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if damage not in DAMAGE:
            raise BadRequestInput(f"unknown damage '{damage}' ({', '.join(DAMAGE)})")
        assessment = {"data_exists": data_exists, "damage": damage, "note": note, "probe": probe}
        return self._step(
            actor, request_id, "assessed", note, lambda _r: {"assessment": json.dumps(assessment)}
        )

    def check_backups(
        self, actor: str, request_id: str, found: list[dict[str, Any]], note: str = ""
    ) -> dict[str, Any]:
        return self._step(
            actor, request_id, "backups_checked", note, lambda _r: {"backups_found": json.dumps(found)}
        )

    def plan(
        self,
        actor: str,
        request_id: str,
        *,
        backups: dict[str, str],
        window: str = "",
        note: str = "",
        protected: bool = False,
    ) -> dict[str, Any]:
        """The plan: a backup per item, and when. `protected`: the backups were checked in the
        repository and are protected from retention until the request closes. When each backup
        was taken (its id begins with its start, as its recorded manifest says) must serve the
        request's restore point."""

        def check(request: dict[str, Any]) -> dict[str, Any]:
            if request["kind"] == "backup":
                if backups:
                    raise Refused(
                        f"request {request_id} asks for a backup: its plan names no backups (its run "
                        "makes them), only the window"
                    )
                return {"plan": json.dumps({"backups": {}, "window": window, "protected": False})}
            scope = {f"{s['asset_id']}:{s['item']}" for s in json.loads(request["scope"])}
            outside = sorted(set(backups) - scope)
            if outside:
                raise Refused(
                    f"the plan names {', '.join(outside)}, outside request {request_id}'s scope "
                    f"({', '.join(sorted(scope))}); a request is never stretched"
                )
            late = after_restore_point(request["restore_point"], backups)
            if late:
                raise Refused(f"{late}: plan one taken at or before it")
            return {"plan": json.dumps({"backups": backups, "window": window, "protected": protected})}

        return self._step(actor, request_id, "planned", note, check)

    def executed(
        self,
        actor: str,
        request_id: str,
        *,
        outcome: str,
        note: str = "",
        backups: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """An attempt's end; `backups`: what a backup request's run made (ASSET:ITEM -> ID),
        added to what its earlier runs made."""

        def check(request: dict[str, Any]) -> dict[str, Any]:
            if not backups:
                return {}
            made = {**json.loads(request["backups_made"] or "{}"), **backups}
            return {"backups_made": json.dumps(made, sort_keys=True)}

        return self._step(actor, request_id, "executed", f"{outcome}: {note}".strip(": "), check)

    def attempt_started(self, actor: str, request_id: str, *, attempt: int, of: int, run_id: str) -> None:
        """An attempt is on the record before it touches anything, so that one killed
        halfway still shows in the audit log (its 'executed' step never comes)."""
        with self.store.transaction() as conn:
            self.store.append_audit(
                conn,
                actor=actor,
                action="restore.attempt",
                request_id=request_id,
                payload={"attempt": attempt, "of": of, "run_id": run_id},
                at=self.clock(),
            )

    def confirm(self, actor: str, request_id: str, note: str = "") -> dict[str, Any]:
        def check(request: dict[str, Any]) -> dict[str, Any]:
            if request["requester"] != actor:
                raise Refused(
                    f"only the requester ({request['requester']}) confirms the result of {request_id}"
                )
            return {}

        return self._step(actor, request_id, "confirmed", note, check)

    def not_restored(self, actor: str, request_id: str, note: str) -> dict[str, Any]:
        """The requester's answer that the data is not back, with what is missing."""
        if not note.strip():
            raise BadRequestInput("say what is not restored (--note): the operator acts on it")

        def check(request: dict[str, Any]) -> dict[str, Any]:
            if request["requester"] != actor:
                raise Refused(f"only the requester ({request['requester']}) answers for {request_id}")
            return {}

        return self._step(actor, request_id, "not_restored", note, check)

    def close(self, actor: str, request_id: str, note: str = "") -> dict[str, Any]:
        return self._step(actor, request_id, "closed", note)

    # ---------------------------------------------------------------- the letter

    def attach_letter(self, actor: str, request_id: str, content: bytes, filename: str) -> dict[str, Any]:
        """Attach the request's letter (surat permohonan): by its requester at filing, or by a
        receiver or approver at the disposition (until it is decided). Its SHA-256 goes on the
        audit chain; a later letter stands beside the earlier one, which stays on the record."""
        if not content:
            raise BadRequestInput("the letter is empty")
        if len(content) > LETTER_MAX_BYTES:
            raise BadRequestInput(
                f"the letter is {len(content)} bytes; at most {LETTER_MAX_BYTES // (1024 * 1024)} MiB "
                "(scan it at a lower resolution)"
            )
        media_type = letter_type(content)
        name = checked_text(Path(filename.replace("\\", "/")).name or "letter", "the file name", limit=200)
        digest = hashlib.sha256(content).hexdigest()
        roles = self.roles_of(actor)
        at = self.clock()
        with self.store.transaction() as conn:
            request = _load(conn, request_id, lock=True)
            if request["status"] not in ("filed", "received"):
                raise Refused(
                    f"request {request_id} is '{request['status']}': a letter is attached at filing or "
                    "at the disposition, before the request is decided"
                )
            if request["requester"] == actor and "requester" in roles:
                role = "requester"
            elif roles & {"receiver", "approver"}:
                role = "receiver" if "receiver" in roles else "approver"
            else:
                raise Refused(
                    f"{actor} may not attach the letter of request {request_id}: its requester, a "
                    "receiver or an approver does"
                )
            conn.execute(
                sa.insert(letters_table).values(
                    request_id=request_id,
                    sha256=digest,
                    media_type=media_type,
                    size=len(content),
                    filename=name,
                    attached_by=actor,
                    attached_at=iso(at),
                    content=content,
                )
            )
            self.store.append_audit(
                conn,
                actor=actor,
                action="request.letter",
                request_id=request_id,
                payload={
                    "role": role,
                    "sha256": digest,
                    "size": len(content),
                    "media_type": media_type,
                    "filename": name,
                    **self.audit_context,
                },
                at=at,
            )
        return self.get(request_id)

    def letter(self, request_id: str, letter_id: int | None = None) -> tuple[dict[str, Any], bytes]:
        """A letter of the request (the newest unless named) and its bytes, held to the SHA-256
        its audit entry carries: a letter changed in the store is refused, not shown."""
        with self.store.engine.connect() as conn:
            _load(conn, request_id)
            query = sa.select(letters_table).where(letters_table.c.request_id == request_id)
            if letter_id is not None:
                query = query.where(letters_table.c.id == letter_id)
            row = conn.execute(query.order_by(letters_table.c.id.desc()).limit(1)).mappings().first()
            if row is None:
                raise Refused(f"request {request_id} has no letter attached", "letter.none")
            on_chain = {
                json.loads(payload).get("sha256")
                for payload in conn.execute(
                    sa.select(audit_table.c.payload).where(
                        audit_table.c.request_id == request_id, audit_table.c.action == "request.letter"
                    )
                ).scalars()
            }
        content = bytes(row["content"])
        digest = hashlib.sha256(content).hexdigest()
        if digest != row["sha256"] or digest not in on_chain:
            raise Refused(
                f"the letter of request {request_id} in the store is not the one its audit entry names "
                "(it was changed outside pulih): an auditor looks (pulih audit verify)",
                "letter.tampered",
            )
        return {k: v for k, v in row.items() if k != "content"}, content

    # ---------------------------------------------------------------- reading

    def get(self, request_id: str) -> dict[str, Any]:
        with self.store.engine.connect() as conn:
            request = _load(conn, request_id)
            steps = (
                conn.execute(
                    sa.select(steps_table)
                    .where(steps_table.c.request_id == request_id)
                    .order_by(steps_table.c.id)
                )
                .mappings()
                .all()
            )
            approvals = (
                conn.execute(
                    sa.select(approvals_table)
                    .where(approvals_table.c.request_id == request_id)
                    .order_by(approvals_table.c.id)
                )
                .mappings()
                .all()
            )
            letters = (
                conn.execute(
                    sa.select(*(c for c in letters_table.columns if c.name != "content"))
                    .where(letters_table.c.request_id == request_id)
                    .order_by(letters_table.c.id)
                )
                .mappings()
                .all()
            )
        request["letters"] = [dict(letter) for letter in letters]
        for key in ("target", "scope", "plan", "assessment", "backups_found", "backups_made"):
            if request.get(key):
                request[key] = json.loads(request[key])
        request["steps"] = [dict(s) for s in steps]
        request["approvals"] = [
            {
                **{k: v for k, v in a.items() if k != "request_id"},
                "targets": json.loads(a["targets"] or "null"),
            }
            for a in approvals
        ]
        request["timing"] = self.timing(request)
        return request

    def all(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    requests_table.c.id,
                    requests_table.c.procedure,
                    requests_table.c.status,
                    requests_table.c.requester,
                    requests_table.c.skpd,
                    requests_table.c.created_at,
                ).order_by(requests_table.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def timing(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Per step: the SOP's standard time beside the time it took (since the step before)."""
        standard = self.config.standard_minutes[request["procedure"]]
        rows, previous = [], None
        for step in request["steps"]:
            at = parse_iso(step["at"])
            took: float | None = None if previous is None else round((at - previous).total_seconds() / 60, 1)
            limit = standard.get(step["step"])
            rows.append(
                {
                    "step": step["step"],
                    "actor": step["actor"],
                    "role": step["role"],
                    "at": step["at"],
                    "standard_minutes": limit,
                    "actual_minutes": took,
                    "overrun": bool(limit is not None and took is not None and took > limit),
                }
            )
            previous = at
        return rows

    # ---------------------------------------------------------------- the gate

    def _as_the_log_says(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request as its chained audit entries say, or Refused naming where its row, which
        anyone holding the store file can edit, disagrees with them (or the chain is broken)."""
        problems = self.store.verify_audit(signatures=False)  # the chain and its anchors; fast
        if problems:
            raise Refused(
                f"the audit log is not intact ({problems[0]}): no restore runs until an auditor has "
                "looked (pulih audit verify)"
            )
        chained = chained_request(self.store, request["id"])
        if chained is None:
            raise Refused(
                f"request {request['id']} has no filing on the audit log: its row was not written by pulih"
            )
        row = {
            "kind": request["kind"],
            "status": request["status"],
            "requester": request["requester"],
            "approved_by": request["approved_by"],
            "approval_expires_at": request["approval_expires_at"],
            "scope": json.loads(request["scope"]),
            "target": json.loads(request["target"]),
            "plan": json.loads(request["plan"]) if request.get("plan") else None,
            "restore_point": request["restore_point"],
        }
        for key, value in row.items():
            if key in chained and chained[key] != value:
                raise Refused(
                    f"request {request['id']}'s {key} is {json.dumps(value)} in its row and "
                    f"{json.dumps(chained[key])} on the audit log: the row was edited outside pulih; "
                    "no restore runs under it until an auditor has looked"
                )
        return chained

    @staticmethod
    def _within_approved_targets(request_id: str, chained: dict[str, Any], run_targets: list[str]) -> None:
        if chained.get("targets") is None:
            return  # an approval from before targets were recorded: scope and target decide
        approved = set(chained["targets"])
        beyond = sorted(set(run_targets) - approved)
        if beyond:
            raise Refused(
                f"the restore would change {', '.join(beyond)}, which the approval of request "
                f"{request_id} did not cover (it covers {', '.join(sorted(approved)) or 'nothing'}); "
                "the register changed since: ask the approver to approve again"
            )

    def _signed_as_the_policy_wants(
        self, request_id: str, chained: dict[str, Any], approved_target: dict[str, Any]
    ) -> None:
        """Where the policy (on the chain) wants signed approvals, the approval entry on the
        chain carries one that verifies: made by a key the approver held when they approved,
        over a statement of this request, this approver and these targets."""
        if not signature_required(self.store.policy(), approved_target):
            return
        signed = chained.get("signed")
        if not signed:
            raise Refused(
                f"the office's policy wants a signed approval for {describe_target(approved_target)}, and "
                f"request {request_id}'s approval is not signed: ask the approver to approve it again "
                "with --sign"
            )
        said = signed["statement"]
        if (said.get("request_id"), said.get("approver"), said.get("targets")) != (
            request_id,
            chained["approved_by"],
            sorted(chained.get("targets") or []),
        ):
            raise Refused(
                f"the signed statement on request {request_id}'s approval entry is not of that approval"
            )
        try:
            approvals.verify(
                approvals.canonical(said),
                signed["signature"],
                principal=chained["approved_by"],
                keys=approvals.keys_on_chain(self.store, chained["approved_by"]),
                at=parse_iso(chained["approval_at"]),
            )
        except approvals.SignatureError as exc:
            raise Refused(f"the signed approval of request {request_id} does not hold: {exc}") from None

    def _restore_holds(
        self,
        request_id: str,
        chained: dict[str, Any],
        approved_target: dict[str, Any],
        target: dict[str, Any] | None,
        run_targets: list[str] | None,
    ) -> None:
        """A restore keeps to the approved target and targets, is signed as the policy wants,
        and its plan serves the approved restore point; else Refused."""
        if target is not None and target != approved_target:
            raise Refused(
                f"target {json.dumps(target)} differs from the approved target {json.dumps(approved_target)}"
            )
        if run_targets is not None:
            self._within_approved_targets(request_id, chained, run_targets)
        self._signed_as_the_policy_wants(request_id, chained, approved_target)
        late = after_restore_point(
            chained.get("restore_point"), (chained.get("plan") or {}).get("backups") or {}
        )
        if late:
            raise Refused(f"request {request_id}'s plan does not serve what was approved: {late}")

    def gate(
        self,
        actor: str,
        request_id: str,
        *,
        run_scope: list[dict[str, str]],
        target: dict[str, Any] | None = None,
        run_targets: list[str] | None = None,
        kind: str = "restore",
        closed_windows: list[str] | None = None,
    ) -> dict[str, Any]:
        """Allow a restore run (or, `kind` 'backup', a backup request's run) only as the record
        says; raise Refused with the reason otherwise. `run_targets`: the live targets the run
        would change, resolved from the register now; each must be one the approval resolved
        when it was given. `closed_windows`: the servers an in-place run would change whose
        maintenance window is closed now, each with its window (from the register)."""
        if "operator" not in self.roles_of(actor):
            raise Refused(f"{actor} may not run {kind}s of requests: it needs the role 'operator'")
        at = self.clock()
        decision: dict[str, Any] = {
            "request_id": request_id,
            "actor": actor,
            "scope": run_scope,
            "target": target,
            "at": iso(at),
        }
        try:
            with self.store.engine.connect() as conn:
                request = _load(conn, request_id)
                self._distinct(conn, actor, request_id, "operator")
            chained = self._as_the_log_says(request)
            if chained.get("kind", "restore") != kind:
                raise Refused(
                    f"request {request_id} asks for a {chained.get('kind', 'restore')}, not a {kind}: "
                    f"nothing is {'restored' if kind == 'restore' else 'backed up'} under it"
                )
            if request["status"] == "rejected":
                raise Refused(f"request {request_id} was rejected ({request['rejected_reason']})")
            if request["status"] == "revoked":
                last = _last_step(self.store, request_id)
                raise Refused(
                    f"the approval of request {request_id} was revoked by {last['actor']} at {last['at']} "
                    f"({last['note']}); nothing more is restored until it is approved again"
                )
            if request["status"] not in ("planned", "executed", "not_restored"):
                raise Refused(
                    f"request {request_id} is '{request['status']}': a {kind} runs only once it is "
                    + (
                        "approved and planned"
                        if kind == "backup"
                        else "approved, assessed, its backups checked and planned"
                    )
                )
            if not request["approved_by"] or request["requester"] in (
                request["approved_by"],
                chained.get("acting_for"),
            ):
                raise Refused(f"request {request_id} has no approval by someone other than its requester")
            expires = parse_iso(request["approval_expires_at"])
            if at > expires:
                raise Refused(
                    f"the approval of request {request_id} expired at {request['approval_expires_at']}; "
                    "ask the approver to approve it again"
                )
            scope = {(s["asset_id"], s["item"]) for s in json.loads(request["scope"])}
            wanted = {(s["asset_id"], s["item"]) for s in run_scope}
            if not wanted:
                raise Refused("a restore run names at least one data item")
            outside = sorted(f"{a}:{i}" for a, i in wanted - scope)
            if outside:
                raise Refused(
                    f"{', '.join(outside)} is outside the approved scope of request {request_id} "
                    f"({', '.join(sorted(f'{a}:{i}' for a, i in scope))})"
                )
            approved_target = json.loads(request["target"])
            if kind == "restore":  # a backup request's run changes nothing live
                self._restore_holds(request_id, chained, approved_target, target, run_targets)
                in_place = approved_target.get("kind") != "alternate"
                if in_place and closed_windows and not chained.get("outside_window"):
                    raise Refused(
                        f"{'; '.join(closed_windows)}: outside its maintenance window now, and the "
                        f"approval of request {request_id} does not allow a restore in place outside "
                        "it; restore in the window, or ask the approver to approve again with "
                        "--outside-window",
                        "restore.window",
                    )
        except Refused as exc:
            decision["allowed"], decision["reason"] = False, str(exc)
            with self.store.transaction() as conn:
                self.store.append_audit(
                    conn,
                    actor=actor,
                    action=f"{GATE_ACTIONS[kind]}.refused",
                    request_id=request_id,
                    payload=decision,
                    at=at,
                )
            raise
        decision["allowed"] = True
        decision["target"] = approved_target
        with self.store.transaction() as conn:
            self.store.append_audit(
                conn,
                actor=actor,
                action=f"{GATE_ACTIONS[kind]}.allowed",
                request_id=request_id,
                payload=decision,
                at=at,
            )
        return decision
